"""Lightning's cost: the same GPT, batch and optimizer trained by `L.Trainer.fit` (LitGPT) and by a bare PyTorch loop.

`python benchmarks/overhead.py [--steps 30 --repeats 3]`. Both sides: AdamW with LitGPT's parameter groups and
schedule, gradient clipping 1.0, the stateless TrainWindows sampler over the same in-memory tokens, one process, no
logger, no checkpointing, no progress bar (those are features, timed elsewhere). Per-step wall times are taken at
optimizer-step boundaries after `warmup` steps; the figure is the median step time, so one stall of the shared CPU
does not move it. Ratio = Lightning tokens/s ÷ bare tokens/s (goal ≥ 0.95).
"""
from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch

from widthlab.data.sampling import StepSampler, TrainWindows
from widthlab.module import LitGPT


def make_module(d: int, n_layer: int, vocab: int, T: int, compile: bool = False) -> LitGPT:
    torch.manual_seed(0)
    return LitGPT(d_model=d, n_layer=n_layer, vocab_size=vocab, seq_len=T, warmup_steps=5, compile=compile)


def _windows(vocab: int, T: int, B: int) -> TrainWindows:
    tokens = np.random.default_rng(0).integers(0, vocab, 200_000).astype(np.uint16)
    return TrainWindows(tokens, T, B, seed=0)


class StepTimes(L.Callback):
    """Wall time of each optimizer step, read at its end (CPU: no device sync needed)."""

    def __init__(self):
        self.t: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.t.append(time.perf_counter())


def lightning_step_times(d: int, n_layer: int, vocab: int, T: int, B: int, steps: int,
                         compile: bool = False) -> list[float]:
    module, rec = make_module(d, n_layer, vocab, T, compile), StepTimes()
    ds = _windows(vocab, T, B)
    loader = torch.utils.data.DataLoader(ds, sampler=StepSampler(steps, lambda: 0), batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        limit_val_batches=0, callbacks=[rec])
    # LitGPT.tokens_per_step reads trainer.datamodule; nothing here uses it
    trainer.fit(module, train_dataloaders=loader)
    return np.diff(rec.t).tolist()


def bare_step_times(d: int, n_layer: int, vocab: int, T: int, B: int, steps: int,
                    compile: bool = False) -> list[float]:
    module = make_module(d, n_layer, vocab, T, compile)
    # the module's own optimizer groups and schedule, without a Trainer (configure_optimizers reads max_steps only)
    module._trainer = SimpleNamespace(max_steps=steps, estimated_stepping_batches=steps)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    ds = _windows(vocab, T, B)
    loss_fn = module._loss_fn  # LitGPT's own training forward (model + fp32 loss; compiled when asked)
    t = [time.perf_counter()]
    for step in range(steps):
        x, y = ds[step]
        loss = loss_fn(module.model, x, y)[2]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        t.append(time.perf_counter())
    return np.diff(t)[1:].tolist()  # aligned with Lightning's (its first mark is the end of step 0)


def median_tps(times: list[float], warmup: int, tokens_per_step: int) -> float:
    return tokens_per_step / statistics.median(times[warmup:])


def bench_overhead(d: int = 64, n_layer: int = 2, vocab: int = 4096, T: int = 128, B: int = 16, steps: int = 30,
                   repeats: int = 3, warmup: int = 3) -> dict:
    """Alternates bare and Lightning runs (so slow phases of a shared CPU hit both) and takes medians."""
    bare, lit = [], []
    for _ in range(repeats):
        bare.append(median_tps(bare_step_times(d, n_layer, vocab, T, B, steps), warmup, B * T))
        lit.append(median_tps(lightning_step_times(d, n_layer, vocab, T, B, steps), warmup, B * T))
    b, li = statistics.median(bare), statistics.median(lit)
    return {"bare_tps": b, "lightning_tps": li, "ratio": li / b, "bare_all": bare, "lightning_all": lit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = bench_overhead(steps=a.steps, repeats=a.repeats)
    print(f"bare loop {r['bare_tps']:,.0f} tok/s, Lightning fit {r['lightning_tps']:,.0f} tok/s, "
          f"ratio {r['ratio']:.3f} (goal ≥ 0.95)")


if __name__ == "__main__":
    main()
