"""PerfMonitor: tokens/s and MFU at logging cadence only, so the training step never waits on the host.

MFU = achieved FLOPs / peak, with achieved = flops_per_token (training, head and attention included) × tokens/s
per device, and the peak from Lightning's device table (`get_available_flops`; None on CPU, so no MFU there).
Tokens count every micro-batch of every rank: tokens/step = seq_len × batch × accumulation × world size.
"""
from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops


def throughput(tokens: int, seconds: float, world_size: int, flops_per_token: float,
               peak_flops_per_device: float | None) -> dict[str, float]:
    """Pure arithmetic: total and per-device tokens/s, and MFU when the peak is known."""
    tps = tokens / seconds
    out = {"perf/tokens_per_sec": tps, "perf/tokens_per_sec_per_device": tps / world_size}
    if peak_flops_per_device:
        out["perf/mfu"] = flops_per_token * tps / world_size / peak_flops_per_device
    return out


def _precision_dtype(trainer: L.Trainer) -> torch.dtype:
    p = str(trainer.precision)
    return torch.bfloat16 if "bf16" in p else torch.float16 if "16" in p else torch.float32


class PerfMonitor(L.Callback):
    def __init__(self, every_n_steps: int = 50):
        self.every = every_n_steps
        self._t0: float | None = None
        self._step0 = 0
        self.peak: float | None = None
        self.last: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module):
        self.peak = get_available_flops(pl_module.device, _precision_dtype(trainer))
        self._t0, self._step0 = None, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self._t0 is None:  # start the clock after the first step: compile and warm-up are excluded
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self._t0, self._step0 = time.perf_counter(), step
            return
        if step - self._step0 < self.every or step % self.every:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        tokens = (step - self._step0) * pl_module.tokens_per_step
        self.last = throughput(tokens, now - self._t0, trainer.world_size, pl_module.flops_per_token, self.peak)
        pl_module.log_dict(self.last, rank_zero_only=True)
        self._t0, self._step0 = now, step
