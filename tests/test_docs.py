"""The worked example in docs/packing.md runs as written: its class trains through `python -m train fit`, its
sweep file validates with the sweep's own checks, and its bad value is the promised one-line error."""
import json
import re
import sys

import pytest
import torch
import yaml
from helpers import tiny_args

from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT
from widthlab.sweep import plan, validate

DOC = "docs/packing.md"
IDEA = '[{"class_path": "my_ideas.LogPriorBias", "init_args": {"floor": 1.0e-6}}]'


def blocks(lang: str) -> list[str]:
    with open(DOC) as f:
        return re.findall(rf"```{lang}\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture
def my_ideas(tmp_path, monkeypatch):
    (tmp_path / "my_ideas.py").write_text(blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    sys.modules.pop("my_ideas", None)
    import my_ideas
    yield my_ideas
    sys.modules.pop("my_ideas", None)


def test_worked_example_is_short():
    code, recipe = blocks("python")[0], blocks("yaml")[0]
    assert len(code.strip().splitlines()) + len(recipe.strip().splitlines()) < 50


def test_worked_example_sets_the_log_prior_and_fails_on_bad_input(my_ideas):
    torch.manual_seed(0)
    iv = my_ideas.LogPriorBias(floor=1e-6)
    model = GPT(ModelConfig(vocab_size=16, d_model=32, n_layer=1, head_dim=16, seq_len=8), [iv])
    counts = torch.arange(1, 17).float()
    iv.set_unigram(counts)
    assert torch.allclose(model.head.bias, torch.log(counts / counts.sum() + 1e-6))
    assert model.head.weight is model.head.inner.weight  # the geometry monitor still sees U
    with pytest.raises(WidthlabError, match="floor must be > 0"):
        my_ideas.LogPriorBias(floor=0.0)


def test_worked_example_trains_through_the_cli(my_ideas, tmp_path, cache_dir):
    root = tmp_path / "run"
    main(tiny_args(root, cache_dir, 6, ["--model.interventions", IDEA]))
    m = json.load(open(root / "metrics.json"))
    assert m["tokens"] == 6 * 4 * 32 and m["val_loss"] < 6.2  # uniform over 512 tokens is 6.24 nats
    sd = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    bias = sd["model.head.bias"]
    assert bias.shape == (512,)
    # the module called set_unigram before training: the bias sits near log p (mean ≈ −6.2 for 512 types), not at 0
    assert bias.mean() < -4 and bias.std() > 0.5, (bias.mean(), bias.std())


def test_worked_example_sweep_file_validates(my_ideas, tmp_path):
    doc = yaml.safe_load(blocks("yaml")[0])
    points = plan(doc["recipe"], doc["widths"], doc["seeds"], doc["arms"], {}, str(tmp_path / doc["name"]))
    assert {p.arm for p in points} == {"baseline", "logprior"} and len(points) == 2 * 4 * 2
    validate(points)  # parses each arm and builds its model at every width, as `sweep` does before any run
