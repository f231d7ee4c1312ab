"""The GPU path taken on the CPU: every branch a CUDA fit takes, forced by a knob, through a real Lightning fit.

No GPU had ever run this code, and its first GPU step would have crashed (fused AdamW + bf16-mixed + gradient
clipping), in a branch no test took. Here the same branches run on the CPU: fused AdamW and bf16 autocast run there.
"""
import json

import lightning as L
import pytest
import torch
from helpers import tiny_args

from widthlab.lightning_cli import run_lightning_cli
from widthlab.module import LitGPT

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


GPU_PATH = ["--model.fused", "true", "--trainer.precision", "bf16-mixed", "--trainer.gradient_clip_val", str(CLIP)]


def test_fused_adamw_bf16_mixed_and_clipping_train_through_lightning(tmp_path, cache_dir):
    cli, probe = _fit(tmp_path / "run", cache_dir, 3, GPU_PATH)
    assert (probe.fused, probe.plugin, probe.dtype) == (True, "MixedPrecision", torch.bfloat16)
    assert cli.trainer.global_step == 3
    # clipped: every update used gradients of norm CLIP (they start far above it)
    assert probe.norms == [pytest.approx(CLIP, rel=1e-4)] * 3
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "ok" and m["steps"] == 3


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


def _keys(path) -> set[str]:
    return set(torch.load(path, weights_only=True)["state_dict"])


def test_a_compiled_checkpoint_loads_without_compile_and_the_reverse(tmp_path, cache_dir):
    """torch.compile on the CPU (inductor), 2 steps of a tiny model: the checkpoint holds the model's keys once."""
    root = tmp_path / "compiled"
    run_lightning_cli(tiny_args(root, cache_dir, 2, ["--trainer.limit_val_batches", "0", "--model.compile", "true"]))
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
                                                     "--ckpt_path", "last"]))
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert _keys(root / "checkpoints" / "last.ckpt") == set(ck["state_dict"])
