"""What the training device decides, each choice a pure function with a knob that a CPU test can force.

No GPU had ever run widthlab when its first GPU step was read to crash in a branch no test took (fused AdamW +
bf16-mixed + gradient clipping: Lightning refuses to clip for an optimizer that unscales internally). So the GPU
choices live here, as functions of their inputs rather than of `torch.cuda.is_available()` deep inside a hook, and
the tests take them on the CPU wherever torch can: fused AdamW, bf16 autocast, torch.compile and the TF32 switches
all run (or are harmlessly set) on a CPU.
"""
from __future__ import annotations

import torch

# Lightning's historical precision spellings, as the one it reports (trainer.precision) for the same plugin.
_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true", "half": "16-true"}
# What a run whose config says `precision: null` trained at, before the GPU path could finish a step: every such run
# ran on a CPU (a CUDA fit crashed at its first optimizer step), i.e. at Lightning's CPU default.
LEGACY_PRECISION = "32-true"


def trains_on_cuda(accelerator: str | None = "auto", cuda: bool | None = None) -> bool:
    """Will a fit with this `trainer.accelerator` train on a CUDA GPU? auto/gpu/cuda where one is there (`cuda`;
    default: whether this machine sees one)."""
    there = torch.cuda.is_available() if cuda is None else cuda
    return str(accelerator or "auto").lower() in ("auto", "gpu", "cuda") and there


def default_precision(accelerator: str | None = "auto", cuda: bool | None = None) -> str:
    """The precision of a fit whose recipe leaves it null: bf16-mixed on a CUDA GPU (tensor cores, no loss scaling
    needed), 32-true elsewhere (bf16 autocast on a CPU is slower than fp32)."""
    return "bf16-mixed" if trains_on_cuda(accelerator, cuda) else "32-true"


def unified_precision(precision: str | int | None, default: str) -> str:
    """A precision setting as Lightning names the plugin it builds (32 → 32-true, bf16 → bf16-mixed); None → default."""
    if precision is None:
        return default
    return _ALIASES.get(str(precision), str(precision))


def use_fused(fused: bool | None, device: torch.device, has_grad_scaler: bool) -> bool:
    """Fused AdamW (one kernel for every parameter's update): forced by `fused`, else on CUDA. Never under a
    GradScaler (16-mixed): a fused step unscales fp16 gradients inside itself, so they could not be clipped before
    it, and the scaler's own skip would hide widthlab's divergence check. bf16 and fp32 have no scaler."""
    if fused is None:
        return device.type == "cuda" and not has_grad_scaler
    return fused


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core matmuls for the fp32 work outside autocast (the fp32 cross-entropy's inputs, geometry,
    evaluation under 32-true): 'high' = TF32 on Ampere and later. On a CPU these switches change nothing."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def tf32_enabled() -> bool:
    return torch.get_float32_matmul_precision() != "highest"
