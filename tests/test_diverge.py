"""A diverged run is a recorded result: one line naming the step, the bad update skipped, the last good checkpoint
kept, metrics.json marked diverged, exit status 0, and a sweep that lists it and goes on."""
import csv
import json
import os
import re
import subprocess
import sys

import lightning as L
import torch
from helpers import tiny_args

from widthlab.cli import main
from widthlab.sweep import sweep

TESTS = os.path.dirname(os.path.abspath(__file__))
LINE = re.compile(r"^diverged: non-finite (loss|gradients) at step (\d+); .*metrics\.json marked diverged$")


class NaNLogitsAt(L.Callback):
    """Makes the logits NaN for the batch at global step `step` (weights untouched, so the loss and then the
    gradients are non-finite), and writes to <run>/nan_probe.json whether the weights changed from then on."""

    def __init__(self, step: int):
        self.step, self._hook, self._before = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self._before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self._hook = pl_module.model.register_forward_hook(lambda m, i, out: (out[0] * float("nan"), out[1]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_fit_end(self, trainer, pl_module):
        after = pl_module.state_dict()
        same = self._before is not None and all(torch.equal(v, after[k]) for k, v in self._before.items())
        with open(os.path.join(trainer.log_dir, "nan_probe.json"), "w") as f:
            json.dump({"unchanged_since_bad_step": same}, f)


def _finite(ckpt_path) -> tuple[int, bool]:
    c = torch.load(ckpt_path, weights_only=True)
    return c["global_step"], all(torch.isfinite(v).all() for v in c["state_dict"].values() if v.is_floating_point())


def test_injected_nan_skips_the_step_keeps_the_last_good_checkpoint(tmp_path, cache_dir, capsys):
    root = tmp_path / "run"
    probe = ['--trainer.callbacks+={"class_path": "test_diverge.NaNLogitsAt", "init_args": {"step": 7}}']
    main(tiny_args(root, cache_dir, 12, ["--trainer.val_check_interval", "3", *probe]))  # returns: no exit 1, no raise
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "diverged" in l]
    assert len(lines) == 1 and LINE.match(lines[0]), err
    assert LINE.match(lines[0]).groups() == ("loss", "7")
    m = json.loads((root / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged_step"] == 7
    assert m["steps"] == 7 and m["tokens"] == 7 * 4 * 32  # the skipped update did not train
    # Validations at steps 3 and 6 only: none after the divergence, so last.ckpt is the step-6 one.
    assert [s for s, _ in m["val_history"]] == [3, 6]
    assert m["val_loss"] == m["val_history"][-1][1]
    step, finite = _finite(root / "checkpoints" / "last.ckpt")
    assert step == 6 and finite
    # The bad update was skipped: the weights at the end are those from before the NaN batch, and finite.
    assert json.loads((root / "nan_probe.json").read_text()) == {"unchanged_since_bad_step": True}
    assert m["train_loss_eval"] is not None and m["train_loss_running"] is not None
    assert all(v == v for k, v in m.items() if k.startswith("geom_"))  # no NaN geometry: the weights stayed good


def test_absurd_lr_exits_0_with_one_line_and_finite_checkpoint(tmp_path, cache_dir):
    # The reported bug: lr 50 ended in a linalg.eigh traceback inside the overlap monitor and no metrics.json.
    root = tmp_path / "lr50"
    args = tiny_args(root, cache_dir, 40, ["--trainer.val_check_interval", "1", "--model.lr", "50",
                                           "--overlap.every_n_steps", "1"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    lines = [l for l in p.stderr.splitlines() if l.startswith("diverged")]
    assert len(lines) == 1 and LINE.match(lines[0]), p.stderr[-2000:]
    n = int(LINE.match(lines[0]).group(2))
    m = json.loads((root / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged_step"] == n and 0 < n < 40
    step, finite = _finite(root / "checkpoints" / "last.ckpt")
    assert finite and step <= n  # from before the divergence (Lightning refreshes last.ckpt when best.ckpt improves)


def test_sweep_records_a_diverged_run_and_goes_on(tmp_path, cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ov = {"trainer.max_steps": 4, "trainer.val_check_interval": 2, "trainer.enable_model_summary": "false",
          "model.n_layer": 1, "model.warmup_steps": 2, "data.vocab_size": 512, "data.seq_len": 32,
          "data.batch_size": 4, "data.max_eval_tokens": 500, "data.cache_dir": str(cache_dir)}
    nan = {"trainer.callbacks": [{"class_path": "test_diverge.NaNLogitsAt", "init_args": {"step": 3}}]}
    path = sweep(recipe="recipes/smoke.yaml", widths=[32], arms={"nan": nan}, name="dv", out_dir=str(tmp_path),
                 overrides=ov)  # no WidthlabError: a diverged run is not a failed one
    assert "nan d=32 seed=0: diverged at step 3" in capsys.readouterr().out
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "diverged" and row["diverged_step"] == "3"
    # It is finished: the same command does not run it again.
    sweep(recipe="recipes/smoke.yaml", widths=[32], arms={"nan": nan}, name="dv", out_dir=str(tmp_path), overrides=ov)
    assert "1 runs, 1 already finished" in capsys.readouterr().out
