"""The GPU path taken on the CPU: every branch a CUDA fit takes, forced by a knob, through a real Lightning fit.

No GPU had ever run this code, and its first GPU step would have crashed (fused AdamW + bf16-mixed + gradient
clipping), in a branch no test took. Here the same branches run on the CPU: fused AdamW and bf16 autocast run there.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from helpers import scalars, tiny_args

from widthlab import WidthlabError
from widthlab.archive import archive_dir, check_archive
from widthlab.device import default_precision, unified_precision, use_fused
from widthlab.lightning_cli import run_lightning_cli
from widthlab.module import LitGPT, forward_loss

TESTS = os.path.dirname(os.path.abspath(__file__))
CLIP = 0.01  # far below a tiny model's first gradient norms, so every step is clipped


class ClipProbe(L.Callback):
    """Records, after each optimizer step, the norm of the gradients the update used (after clipping: Lightning
    zeroes them only before the next backward), and what the fit ran with."""

    def __init__(self):
        self.norms: list[float] = []
        self.fused = self.plugin = self.dtype = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.fused = trainer.optimizers[0].defaults["fused"]
        self.plugin = type(trainer.precision_plugin).__name__
        with trainer.precision_plugin.forward_context():
            self.dtype = pl_module(batch[0][:1])[0].dtype  # what the forward computes in under this plugin

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def _fit(root, cache_dir, steps, extra):
    probe = ['--trainer.callbacks+={"class_path": "test_device_paths.ClipProbe"}']
    cli = run_lightning_cli(tiny_args(root, cache_dir, steps, ["--trainer.limit_val_batches", "0", *probe, *extra]))
    return cli, next(cb for cb in cli.trainer.callbacks if isinstance(cb, ClipProbe))


GPU_PATH = ["--model.fused", "true", "--model.tf32", "true", "--trainer.precision", "bf16-mixed",
            "--trainer.gradient_clip_val", str(CLIP)]


@pytest.fixture(autouse=True)
def _fp32_matmuls_back():
    yield
    torch.set_float32_matmul_precision("highest")  # model.tf32 true sets a process-wide switch


def test_the_device_choices_by_hand():
    assert default_precision("auto", cuda=True) == "bf16-mixed" and default_precision("gpu", cuda=True) == "bf16-mixed"
    assert default_precision("cpu", cuda=True) == "32-true"  # a GPU machine told to train on its CPU
    assert default_precision("auto", cuda=False) == "32-true"
    assert [unified_precision(p, "32-true") for p in (None, 32, "32", "bf16", "16", "bf16-mixed")] == [
        "32-true", "32-true", "32-true", "bf16-mixed", "16-mixed", "bf16-mixed"]
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_fused(None, cuda, has_grad_scaler=False) and not use_fused(None, cuda, has_grad_scaler=True)
    assert not use_fused(None, cpu, False) and use_fused(True, cpu, False) and not use_fused(False, cuda, False)


def test_fused_adamw_bf16_mixed_and_clipping_train_through_lightning(tmp_path, cache_dir):
    cli, probe = _fit(tmp_path / "run", cache_dir, 3, GPU_PATH)
    assert (probe.fused, probe.plugin, probe.dtype) == (True, "MixedPrecision", torch.bfloat16)
    assert cli.trainer.global_step == 3
    # clipped: every update used gradients of norm CLIP (they start far above it)
    assert probe.norms == [pytest.approx(CLIP, rel=1e-4)] * 3
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "ok" and m["steps"] == 3
    # what ran, resolved: precision, devices, and the global batch (4 sequences × 1 × 1 device, of 32 tokens)
    assert (m["precision"], m["devices"], m["global_batch"], m["global_batch_tokens"]) == ("bf16-mixed", 1, 4, 128)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert (env["precision"], env["fused_adamw"], env["compile"], env["tf32"]) == ("bf16-mixed", True, False, True)


def test_without_widthlabs_clip_lightning_refuses_this_combination(tmp_path, cache_dir, monkeypatch):
    """The crash a GPU user would have hit: the same fit through Lightning's own configure_gradient_clipping."""
    monkeypatch.setattr(LitGPT, "configure_gradient_clipping", L.LightningModule.configure_gradient_clipping)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        _fit(tmp_path / "run", cache_dir, 2, GPU_PATH)


def test_fused_fp32_clips_like_lightning(tmp_path, cache_dir):
    """Fused AdamW without mixed precision takes Lightning's own clip (no plugin refusal in fp32)."""
    _, probe = _fit(tmp_path / "run", cache_dir, 2, ["--model.fused", "true", "--trainer.gradient_clip_val", str(CLIP)])
    assert (probe.fused, probe.plugin, probe.dtype) == (True, "Precision", torch.float32)
    assert probe.norms == [pytest.approx(CLIP, rel=1e-4)] * 2
    # the recipe says precision: null; config.yaml records what the fit resolved it to on this CPU
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["trainer"]["precision"] == "32-true"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "32-true"


def _keys(path) -> set[str]:
    return set(torch.load(path, weights_only=True)["state_dict"])


def test_the_whole_gpu_path_compiled_and_its_checkpoint_loads_without_compile_and_the_reverse(tmp_path, cache_dir):
    """Everything a CUDA fit takes, on the CPU: torch.compile (inductor) of model + fp32 loss under bf16 autocast,
    fused AdamW, clipping; 2 steps of a tiny model. Its checkpoint holds the model's keys once."""
    root = tmp_path / "compiled"
    cli = run_lightning_cli(tiny_args(root, cache_dir, 2, ["--trainer.limit_val_batches", "0", "--model.compile", "true",
                                                           *GPU_PATH]))
    assert cli.trainer.optimizers[0].defaults["fused"] and cli.trainer.precision == "bf16-mixed"
    m = json.loads((root / "metrics.json").read_text())
    assert m["status"] == "ok" and math.isfinite(m["train_loss_eval"])
    ck = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    hp = {k: v for k, v in ck["hyper_parameters"].items() if k != "_instantiator"}
    eager = LitGPT(**{**hp, "compile": False})
    assert set(ck["state_dict"]) == set(eager.state_dict()) and all(k.startswith("model.") for k in ck["state_dict"])
    eager.load_state_dict(ck["state_dict"], strict=True)
    # and the reverse: an eager run's checkpoint into a compiled module (strict)
    compiled = LitGPT(**{**hp, "compile": True})
    compiled.load_state_dict(eager.state_dict(), strict=True)
    # through Lightning: the compiled run resumed without compile (Lightning's load is strict)
    run_lightning_cli(tiny_args(root, cache_dir, 3, ["--trainer.limit_val_batches", "0", "--model.compile", "false",
                                                     *GPU_PATH, "--ckpt_path", "last"]))
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert _keys(root / "checkpoints" / "last.ckpt") == set(ck["state_dict"])


def _archived(archive, trainer: dict, metrics: dict, batch: int = 4):
    """One archived point (baseline d=32 s0) with this trainer config and these recorded metrics."""
    d = archive_dir(str(archive), "baseline", 32, 0)
    os.makedirs(d)
    cfg = {"model": {"d_model": 32, "lr": 0.003}, "data": {"batch_size": batch, "seq_len": 32},
           "trainer": {"max_steps": 6, "accumulate_grad_batches": 1, **trainer}}
    with open(os.path.join(d, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"status": "ok", "steps": 6, "seq_len": 32, "tokens": 6 * 32 * batch, **metrics}, f)
    return cfg


def _check(archive, cfg, **kw):
    point = SimpleNamespace(arm="baseline", width=32, seed=0, run_dir=str(archive / "elsewhere"))
    return check_archive(str(archive), [point], {"baseline": cfg}, **kw)


def test_archives_refuse_a_precision_mismatch(tmp_path):
    # A point archived before fits recorded their precision: config.yaml says null, metrics.json nothing. Every
    # such run that finished trained on a CPU (the GPU path crashed at its first step), so it is 32-true.
    legacy = _archived(tmp_path / "a", {"precision": None, "devices": "auto"}, {})
    assert _check(tmp_path / "a", legacy, cuda=False) == 1  # a CPU sweep: the same point
    with pytest.raises(WidthlabError, match=r"trainer\.precision='32-true', but this sweep would use "
                                            r"trainer\.precision='bf16-mixed'; give this sweep its own name"):
        _check(tmp_path / "a", legacy, cuda=True)  # the same recipe on a GPU resolves null to bf16-mixed
    # ... unless the recipe pins the precision the archive was made at (spelled any of Lightning's ways)
    assert _check(tmp_path / "a", {**legacy, "trainer": {**legacy["trainer"], "precision": 32}}, cuda=True) == 1
    # A GPU point records its precision; a CPU sweep of the same recipe is refused.
    gpu = _archived(tmp_path / "b", {"precision": "bf16-mixed"}, {"precision": "bf16-mixed", "global_batch": 4})
    with pytest.raises(WidthlabError, match=r"precision='bf16-mixed', but this sweep would use trainer\.precision"
                                            r"='32-true'"):
        _check(tmp_path / "b", {**gpu, "trainer": {**gpu["trainer"], "precision": None}}, cuda=False)
    assert _check(tmp_path / "b", gpu, cuda=False) == 1  # pinned bf16-mixed: the same on any machine


def test_archives_refuse_a_global_batch_mismatch(tmp_path):
    # Trained on 2 devices × batch 4: a global batch of 8 sequences, recorded in its metrics.json.
    two = _archived(tmp_path / "a", {"devices": 2}, {"precision": "32-true", "devices": 2, "global_batch": 8})
    assert _check(tmp_path / "a", two, cuda=False) == 1
    one = {**two, "trainer": {**two["trainer"], "devices": "auto"}}  # auto: one device per sweep point
    with pytest.raises(WidthlabError, match=r"global_batch=8, but this sweep would use global_batch=4; .* or change "
                                            r"data\.batch_size, trainer\.accumulate_grad_batches or trainer\.devices"):
        _check(tmp_path / "a", one, cuda=False)
    # the same global batch another way (batch 8 on one device) differs in data.batch_size, which is refused too
    with pytest.raises(WidthlabError, match=r"data\.batch_size=4, but this sweep would use data\.batch_size=8"):
        _check(tmp_path / "a", {**one, "data": {**one["data"], "batch_size": 8}}, cuda=False)
    assert _check(tmp_path / "a", one, cuda=False, devices_per_point=2) == 1  # a launcher giving 2 GPUs per point
    # A legacy point (no global_batch recorded) has it from its tokens: 6 steps × 32 tokens × 4 = batch 4.
    legacy = _archived(tmp_path / "b", {"devices": "auto"}, {})
    assert _check(tmp_path / "b", legacy, cuda=False) == 1
    with pytest.raises(WidthlabError, match=r"global_batch=4, but this sweep would use global_batch=8"):
        _check(tmp_path / "b", {**legacy, "trainer": {**legacy["trainer"], "accumulate_grad_batches": 2}}, cuda=False)


def _guard(cli):
    return cli.trainer.lightning_module._guard


def test_no_host_read_per_step_the_divergence_flag_is_read_on_the_logging_cadence(tmp_path, cache_dir):
    """With a fused AdamW the finiteness flag stays on the device: read at steps 4 and 8 (log_every_n_steps 4),
    6 and 12 (validations), and never in between; the progress bar gets the loss as a host copy on that cadence."""
    args = tiny_args(tmp_path / "run", cache_dir, 12, ["--model.fused", "true", "--trainer.log_every_n_steps", "4",
                                                        "--trainer.val_check_interval", "6",
                                                        "--trainer.enable_progress_bar", "true"])
    cli = run_lightning_cli(args)
    assert cli.trainer.lightning_module._device_skip
    assert _guard(cli).reads == 5  # steps 4, 6, 8, 12 and the fit's end: not 12
    bar = cli.trainer.progress_bar_metrics["loss"]
    tb = dict(scalars(tmp_path / "run")["train/loss"])
    assert isinstance(bar, float) and bar == pytest.approx(tb[11], rel=1e-6)  # step 12's loss (logged at x = 11)
    assert "loss" not in scalars(tmp_path / "run")  # the bar's copy is not a logged metric


def test_a_late_read_still_skips_from_the_bad_step_and_keeps_nothing_after_it(tmp_path, cache_dir, capsys):
    """NaN logits at step 7, the flag read only before the step checkpoint due at step 8 (log_every_n_steps 50,
    validations at 3, 6, 9): update 7 was skipped inside the fused kernel and so was 8, so the weights are still
    step 7's; step 8's checkpoint and step 9's validation never happen; the run reports step 7 exactly as the
    every-step host check does (test_diverge)."""
    root = tmp_path / "run"
    probe = ['--trainer.callbacks+={"class_path": "test_diverge.NaNLogitsAt", "init_args": {"step": 7}}']
    cli = run_lightning_cli(tiny_args(root, cache_dir, 12, ["--model.fused", "true", "--trainer.log_every_n_steps",
                                                            "50", "--trainer.val_check_interval", "3",
                                                            "--step_checkpoint.every_n_steps", "8", *probe]))
    assert cli.trainer.global_step == 8 and _guard(cli).reads == 3  # read at 3, 6 and 8, where it stopped
    err = capsys.readouterr().err
    assert "diverged: non-finite loss at step 7;" in err
    m = json.loads((root / "metrics.json").read_text())
    assert (m["status"], m["diverged_step"], m["steps"]) == ("diverged", 7, 7)
    assert [s for s, _ in m["val_history"]] == [3, 6]
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    assert json.loads((root / "nan_probe.json").read_text()) == {"unchanged_since_bad_step": True}
    # the optimizer's own step count stopped too: the fused kernel undid step 7's and step 8's
    opt = cli.trainer.optimizers[0]
    assert all(float(st["step"]) == 7 for st in opt.state.values())
    assert m["train_loss_running"] is not None and math.isfinite(m["train_loss_running"])


class PauseAt(L.Callback):
    """Holds the fit after optimizer step `step` (writing `marker`) until a SIGTERM arrives, so the test's signal
    lands at a known step of a real fit."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            open(self.marker, "w").close()
            deadline = time.time() + 120
            while not trainer.received_sigterm and time.time() < deadline:
                time.sleep(0.05)


def test_sigterm_saves_last_ckpt_and_the_resumed_run_is_bit_identical(tmp_path, cache_dir):
    ev = ["--trainer.val_check_interval", "6"]
    run_lightning_cli(tiny_args(tmp_path / "a", cache_dir, 12, ev))  # uninterrupted
    marker = tmp_path / "at_step_5"
    pause = [f'--trainer.callbacks+={{"class_path": "test_device_paths.PauseAt", '
             f'"init_args": {{"step": 5, "marker": "{marker}"}}}}']
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "train", *tiny_args(tmp_path / "b", cache_dir, 12, ev + pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "stopped by SIGTERM at step 5: " in err and "resume with --ckpt_path last" in err, err[-3000:]
    # step 5 was never a validation (6, 12) nor a step checkpoint (every 1000): the save is the SIGTERM's own
    assert torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
    assert not (tmp_path / "b/metrics.json").exists()  # not finished: a sweep resumes it
    run_lightning_cli(tiny_args(tmp_path / "b", cache_dir, 12, ev + ["--ckpt_path", "last"]))
    la, lb = dict(scalars(tmp_path / "a")["train/loss"]), dict(scalars(tmp_path / "b")["train/loss"])
    assert set(la) == set(lb) == set(range(12)) and all(la[s] == lb[s] for s in range(12)), (la, lb)
    sa = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    for k in ("val_history", "val_loss", "train_loss_eval", "train_loss_running", "steps", "tokens"):
        assert ma[k] == mb[k], k


def test_a_step_checkpoint_every_n_steps(tmp_path, cache_dir):
    """step_checkpoint.every_n_steps 4 with validation only at the end: last.ckpt at step 4, then 8."""
    root = tmp_path / "run"
    crash = ['--trainer.callbacks+={"class_path": "helpers.CrashAt", "init_args": {"step": 10}}']
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_lightning_cli(tiny_args(root, cache_dir, 12, ["--step_checkpoint.every_n_steps", "4", *crash]))
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert not (root / "checkpoints" / "best.ckpt").exists()  # no validation ran: only the step checkpoints


def test_the_compiled_loss_equals_the_eager_one():
    """forward_loss under torch.compile (the fp32 cross-entropy inside the graph) against eager: same loss and
    gradients to float32 rounding, in fp32 and under bf16 autocast (where both keep the CE in fp32)."""
    torch.manual_seed(0)
    lm = LitGPT(d_model=32, n_layer=1, vocab_size=96, seq_len=16, dropout=0.0)
    x, y = torch.randint(0, 96, (2, 16)), torch.randint(0, 96, (2, 16))
    compiled = torch.compile(forward_loss)
    for autocast in (False, True):
        out = {}
        for name, fn in (("eager", forward_loss), ("compiled", compiled)):
            lm.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                _, _, ce = fn(lm.model, x, y)
            ce.backward()
            out[name] = ce.detach(), {k: p.grad.clone() for k, p in lm.named_parameters()}
        (le, ge), (lc, gc) = out["eager"], out["compiled"]
        assert le.dtype == lc.dtype == torch.float32
        tol = 2e-2 if autocast else 1e-5  # bf16 matmuls may round differently once fused
        assert abs(float(lc) - float(le)) <= tol * float(le), (autocast, float(lc), float(le))
        for k in ge:
            assert torch.allclose(gc[k], ge[k], rtol=tol * 10, atol=tol * 1e-2), (autocast, k)


def test_step_and_validation_checkpoints_share_one_last_ckpt(tmp_path, cache_dir):
    """Validation every 4 steps and a step checkpoint every 3: both write checkpoints/last.ckpt (Lightning's version
    counter would otherwise add last-v1.ckpt beside it), and a resume continues from the newest."""
    root = tmp_path / "run"
    extra = ["--step_checkpoint.every_n_steps", "3", "--trainer.val_check_interval", "4"]
    crash = ['--trainer.callbacks+={"class_path": "helpers.CrashAt", "init_args": {"step": 7}}']
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_lightning_cli(tiny_args(root, cache_dir, 12, [*extra, *crash]))
    assert sorted(os.listdir(root / "checkpoints")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    run_lightning_cli(tiny_args(root, cache_dir, 12, [*extra, "--ckpt_path", "last"]))
    assert sorted(os.listdir(root / "checkpoints")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
