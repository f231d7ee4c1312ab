"""PerfMonitor: tokens/s and MFU at logging cadence only, so the training step never waits on the host.

Definitions (the contract the tests check by hand):
  tokens/step      = seq_len × batch × accumulation × world size   (every micro-batch of every rank)
  tokens/s         = Δoptimizer steps × tokens/step / Δwall seconds (global, all devices)
  tokens/s/device  = tokens/s / world size
  MFU              = flops_per_token × tokens/s/device / peak FLOP/s of one device
flops_per_token is the model's training FLOPs per token (3 × forward, head and attention included, see
GPT.flops_per_token). Two anchors shipped MFU bugs here: counting only one micro-batch per step under gradient
accumulation, and dividing global throughput by one device's peak under DDP; both are covered by tests.

Timing: windows run between optimizer steps (`trainer.global_step` changes), start after the first optimizer step
of a fit (compile and warm-up excluded), and exclude validation (and the checkpoint written after it), which is not
training throughput. The only host syncs are `torch.cuda.synchronize()` at the window edges.

Peak FLOP/s: bf16/fp16 dense tensor-core peaks from our table below (first match wins), else Lightning's
`get_available_flops`. Ours goes first because Lightning 2.6's table misses the plain "NVIDIA H200" name (returns
None), lists H200 and H100 NVL at their 2:4-sparsity figures (2×), and maps "L40S"/"L40" to the L4.
"""
from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

# Dense (no sparsity) BF16 = FP16 tensor-core peak FLOP/s per device; matched as lower-case substrings of
# torch.cuda.get_device_name(), most specific first. Sources: NVIDIA datasheets, where the headline figure carries
# "with sparsity" and the dense one is half of it.
#   H100 SXM 989.4 T, PCIe 756 T, NVL 835 T (1671* / 2): nvidia.com/en-us/data-center/h100 (device names
#     "NVIDIA H100 80GB HBM3" = SXM, "NVIDIA H100 PCIe", "NVIDIA H100 NVL")
#   H200 SXM 989 T (1979* / 2), H200 NVL 835 T (1671* / 2): nvidia.com/en-us/data-center/h200; GH200 = H100 SXM die
#   A100 312 T (SXM and PCIe): A100 datasheet
#   L40S 362 T (733* / 2), L40 181 T (362* / 2), L4 121 T (242* / 2): L40S / L40 / L4 datasheets
#   A10 and A10G 125 T (250* / 2): A10 datasheet. NVIDIA publishes no A10G sheet (AWS's variant); its measured
#     tensor throughput is reported lower, so A10G MFU is a lower bound.
#   B200 2.25 P (4.5* / 2): HGX B200 datasheet, per GPU
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    ("h100 nvl", 835e12), ("h100 pcie", 756e12), ("h100", 989.4e12),
    ("h200 nvl", 835e12), ("h200", 989e12),   # also "gh200"
    ("b200", 2.25e15),
    ("a100", 312e12),
    ("l40s", 362e12), ("l40", 181e12), ("l4", 121e12),
    ("a10g", 125e12), ("a10", 125e12),
)


def throughput(tokens: int, seconds: float, world_size: int, flops_per_token: float,
               peak_flops_per_device: float | None) -> dict[str, float]:
    """Pure arithmetic. tokens: all ranks' tokens in the window (Δsteps × tokens/step); seconds: its wall time.
    Returns total and per-device tokens/s, and MFU when the peak is known (never on CPU)."""
    tps = tokens / seconds
    out = {"perf/tokens_per_sec": tps, "perf/tokens_per_sec_per_device": tps / world_size}
    if peak_flops_per_device:
        out["perf/mfu"] = flops_per_token * tps / world_size / peak_flops_per_device
    return out


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense 16-bit peak from PEAK_BF16_DENSE for a device name, or None (other dtypes, unknown devices)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16_DENSE if key in name), None)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one device at the training compute dtype; None on CPU or when nobody knows it."""
    if device.type == "cuda":
        peak = table_peak(torch.cuda.get_device_name(device), dtype)
        if peak is not None:
            return peak
    if device.type == "cpu":
        return None
    return get_available_flops(device, dtype)


def precision_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a Lightning precision string ("bf16-mixed", "16-mixed", "32-true", ...)."""
    p = str(precision)
    return torch.bfloat16 if "bf16" in p else torch.float16 if "16" in p else torch.float32


class PerfMonitor(L.Callback):
    """Logs perf/tokens_per_sec, perf/tokens_per_sec_per_device and (on a GPU with a known peak) perf/mfu at every
    `every_n_steps`-th optimizer step, through the Trainer's loggers at x = global_step."""

    def __init__(self, every_n_steps: int = 50):
        self.every = every_n_steps
        self.peak: float | None = None
        self.last: dict[str, float] = {}
        self.windows: list[tuple[int, int, float]] = []  # (end step, tokens, seconds), for tests and benchmarks
        self._t0: float | None = None
        self._step0 = 0
        self._seen = -1
        self._paused_at: float | None = None

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the window edge: queued kernels belong to this window
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.peak = peak_flops(pl_module.device, precision_dtype(trainer.precision))
        self._t0, self._step0, self._seen, self._paused_at = None, trainer.global_step, trainer.global_step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._paused_at is not None and self._t0 is not None:  # back from validation: shift the window start
            self._t0 += time.perf_counter() - self._paused_at
        self._paused_at = None

    def on_validation_start(self, trainer, pl_module):
        if self._t0 is not None and not trainer.sanity_checking:
            self._paused_at = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._seen:  # a micro-batch inside gradient accumulation: no optimizer step yet
            return
        self._seen = step
        if self._t0 is None:  # the first optimizer step of this fit ends: compile and warm-up stay outside
            self._t0, self._step0 = self._now(pl_module), step
            return
        if step % self.every:
            return
        now = self._now(pl_module)
        tokens, seconds = (step - self._step0) * pl_module.tokens_per_step, now - self._t0
        self.last = throughput(tokens, seconds, trainer.world_size, pl_module.flops_per_token, self.peak)
        self.windows.append((step, tokens, seconds))
        for lg in trainer.loggers:  # loggers write on rank 0 only; floats, so no device sync here
            lg.log_metrics(self.last, step=step)
        # callback_metrics is what checkpoints and the run recorder's metrics.json read
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in self.last.items()})
        self._t0, self._step0 = now, step
