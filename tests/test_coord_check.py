"""μP coordinate check on tiny models: μP keeps activations flat in width, SP lets them grow."""
import json

import pytest
import torch

from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.coord_check import coord_check

WIDTHS = [32, 64, 128, 256]
STEPS = 6


def tiny(cache, lr=1e-2):
    # dropout 0: the check should see the parametrisation, not dropout noise
    return {"model.n_layer": 1, "model.lr": lr, "model.dropout": 0.0, "data.vocab_size": 512,
            "data.seq_len": 32, "data.batch_size": 8, "data.max_eval_tokens": 2000, "data.cache_dir": str(cache)}


@pytest.fixture(scope="module")
def checks(tmp_path_factory, cache_dir):
    # One thread: on a busy 2-core box two torch threads per process oversubscribe and run ~30x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("coord")
        mup = coord_check(recipe="recipes/smoke.yaml", widths=WIDTHS, steps=STEPS, mup_base_d_model=32,
                          out=str(root / "mup"), overrides=tiny(cache_dir))
        # SP through the CLI entry, so the subcommand's wiring is exercised too
        main(["coord-check", "--recipe", "recipes/smoke.yaml", "--widths", json.dumps(WIDTHS), "--steps", str(STEPS),
              "--out", str(root / "sp"), "--overrides", json.dumps(tiny(cache_dir))])
        sp = json.load(open(root / "sp" / "coord_check.json"))
    finally:
        torch.set_num_threads(n)
    return mup, sp


def late(result, layer):
    """Mean slope over steps 2.. : after Adam's first updates, where SP and μP part ways (step 1 is noisy)."""
    s = result["slopes"][layer][2:]
    return sum(s) / len(s)


def test_writes_json_and_png(checks):
    mup, sp = checks
    for r in (mup, sp):
        on_disk = json.load(open(r["json"]))
        assert on_disk["widths"] == WIDTHS and on_disk["layers"] == ["embed", "blocks.0.attn", "blocks.0.mlp",
                                                                     "blocks.0", "logits"]
        assert all(len(on_disk["l1"][n][str(w)]) == STEPS for n in on_disk["layers"] for w in WIDTHS)
        assert open(r["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert mup["mup_base_d_model"] == 32 and sp["mup_base_d_model"] is None


def test_init_scales_match_theory(checks):
    mup, sp = checks
    # Embedding rows are N(0, init_std²) in both: width-independent coordinates.
    assert abs(mup["slopes"]["embed"][0]) < 0.05 and abs(sp["slopes"]["embed"][0]) < 0.05
    # Logits at init are a sum of m O(0.02) terms: ∝ √m in SP, and ∝ √m / width_mult = m^-1/2 under μP.
    assert sp["slopes"]["logits"][0] == pytest.approx(0.5, abs=0.05)
    assert mup["slopes"]["logits"][0] == pytest.approx(-0.5, abs=0.05)
    # μP's hidden init (std / √width_mult) keeps the residual stream flat; SP's fixed std lets it grow.
    assert abs(mup["slopes"]["blocks.0"][0]) < 0.05 and sp["slopes"]["blocks.0"][0] > 0.4


def test_mup_stays_flat_while_sp_grows(checks):
    mup, sp = checks
    # Measured (seed 0, lr 1e-2): μP logits ≈ -0.02, block ≈ -0.10; SP logits ≈ +0.58, block ≈ +1.5.
    for layer in ("logits", "blocks.0", "blocks.0.mlp"):
        assert abs(late(mup, layer)) < abs(late(sp, layer)) - 0.3, (layer, late(mup, layer), late(sp, layer))
    assert abs(late(mup, "logits")) < 0.15
    assert abs(late(mup, "blocks.0")) < 0.3
    assert late(sp, "blocks.0") > 0.8 and late(sp, "logits") > 0.3
    # After training, every width's coordinates are finite and positive: no width blew up.
    assert all(v > 0 for r in (mup, sp) for n in r["layers"] for w in WIDTHS for v in r["l1"][n][str(w)])


def test_bad_input(tmp_path, cache_dir):
    with pytest.raises(WidthlabError, match="at least two"):
        coord_check(recipe="recipes/smoke.yaml", widths=[64], out=str(tmp_path))
    with pytest.raises(WidthlabError, match="distinct"):
        coord_check(recipe="recipes/smoke.yaml", widths=[64, 64], out=str(tmp_path))
    with pytest.raises(WidthlabError, match="does not exist"):
        coord_check(recipe="recipes/nope.yaml", widths=[32, 64], out=str(tmp_path))
    with pytest.raises(WidthlabError, match="d_model=32"):
        coord_check(recipe="recipes/smoke.yaml", widths=[32, 64], out=str(tmp_path),
                    overrides={**tiny(cache_dir), "model.no_such_key": 1})
