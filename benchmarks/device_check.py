"""The GPU path, checked in one go: `python benchmarks/run.py --device-check [--out DIR]` (or this file directly).

Every row is a real Lightning fit through the path a GPU run takes (LitGPT, compile, fused AdamW, bf16-mixed,
gradient clipping 1.0, PerfMonitor), on synthetic tokens so nothing is downloaded or tokenised:

  gpt2     12 × 768, seq 1024, vocab 50304, batch 16 (the GPU row of benchmarks/run.py; goal ≥ 45 % MFU on an H100)
  d<m>     a width sweep's shapes: 8 layers, head_dim 64, seq 1024, vocab 32768, batch 16, widths --widths
  variants at the middle width: fused=false (foreach AdamW: the host reads the divergence flag every step), and the
           cross-entropy outside the compiled graph (compiled model, eager fp32 loss)

Per row: tokens/s and MFU (PerfMonitor's own numbers: windows between optimizer steps, compile and warm-up excluded),
and the host syncs per step between logging steps, counted by torch.cuda.set_sync_debug_mode (expected 0). Before the
rows, two device facts the code relies on: a NaN survives torch._foreach_norm(·, inf), and a fused AdamW with
found_inf = 1 leaves its parameters alone. `--tiny` runs the same code with tiny shapes and no compile (the CPU
fallback, run by tests/test_perf.py); on a CPU there is no MFU and no sync count.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from widthlab.callbacks.perf import PerfMonitor
from widthlab.module import LitGPT, _call


class SyntheticTokens(L.LightningDataModule):
    """Random token windows (the data does not change the cost of a step)."""

    def __init__(self, vocab: int, seq_len: int, batch_size: int, steps: int):
        super().__init__()
        self.vocab, self.seq_len, self.batch_size, self.steps = vocab, seq_len, batch_size, steps

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, self.vocab, (8, self.batch_size, self.seq_len + 1), generator=g)
        batches = [(data[i % 8, :, :-1], data[i % 8, :, 1:]) for i in range(self.steps)]
        # a loader of whole batches, pinned so the host-to-device copy does not block (as TokenDataModule on CUDA)
        return torch.utils.data.DataLoader(batches, batch_size=None, pin_memory=torch.cuda.is_available())


class SyncCounter(L.Callback):
    """CUDA syncs (torch.cuda.set_sync_debug_mode warnings) per optimizer step, from step `start` on; CUDA only."""

    def __init__(self, start: int):
        self.start, self.per_step, self._ctx, self._log = start, {}, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda" and trainer.global_step == self.start and self._ctx is None:
            self._ctx = warnings.catch_warnings(record=True)
            self._log = self._ctx.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._log is not None:  # syncs of this step so far; the rest of its hooks count towards the next
            self.per_step[trainer.global_step] = sum("synchroniz" in str(w.message) for w in self._log)
            self._log.clear()

    def on_train_end(self, trainer, pl_module):
        if self._ctx is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def device_facts(device: torch.device) -> dict:
    """The two kernel behaviours widthlab.divergence relies on, checked on this device."""
    nan = torch.tensor([1.0, float("nan")], device=device)
    norm_nan = bool(torch.isnan(torch.stack(torch._foreach_norm([nan], float("inf")))).all())
    p = torch.nn.Parameter(torch.ones(4, device=device))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.full((4,), float("nan"), device=device)
    opt.found_inf, opt.grad_scale = torch.ones((), device=device), None
    opt.step()
    return {"foreach_norm_inf_keeps_nan": norm_nan, "fused_adamw_skips_on_found_inf": bool((p == 1).all())}


def fit_row(name: str, d: int, n_layer: int, head_dim: int, seq: int, vocab: int, batch: int, steps: int,
            every: int, compile: bool, fused: bool = True, ce_outside: bool = False) -> dict:
    """One short Lightning fit on the GPU path (bf16-mixed and fused AdamW forced, so a CPU takes it too); its
    throughput as PerfMonitor measured it."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # each row pays (and excludes) its own compile
    lm = LitGPT(d_model=d, n_layer=n_layer, head_dim=head_dim, vocab_size=vocab, seq_len=seq, warmup_steps=10,
                compile=compile, fused=fused)
    if ce_outside:  # the layout before the loss moved into the graph: compiled model, eager fp32 cross-entropy
        fwd = torch.compile(_call) if compile else _call

        def outside(model, x, y, outputs=False):
            logits, hidden = fwd(model, x)
            return logits, hidden, F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

        lm._loss_fn = outside
    perf, syncs = PerfMonitor(every_n_steps=every), SyncCounter(start=every + 1)
    trainer = L.Trainer(accelerator="auto", devices=1, precision="bf16-mixed", max_steps=steps,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=every,
                        callbacks=[perf, syncs])
    t0 = time.perf_counter()
    trainer.fit(lm, datamodule=SyntheticTokens(vocab, seq, batch, steps))
    # windows after the first (which holds the steps right after compile): median tokens/s
    tps = sorted(tok / sec for _, tok, sec in perf.windows[1:] or perf.windows)
    med = tps[len(tps) // 2]
    peak = perf.peak
    # Steps off the logging cadence: a cadence step's reads (logging, PerfMonitor's window edge, the divergence
    # flag) land in its own count or, from hooks after SyncCounter's, in the next step's.
    off = [n for s, n in syncs.per_step.items() if s % every not in (0, 1)]
    return {"row": name, "d_model": d, "n_layer": n_layer, "seq_len": seq, "vocab": vocab, "batch": batch,
            "params": lm.model.num_params(), "flops_per_token": lm.flops_per_token, "compile": compile,
            "fused": bool(trainer.optimizers[0].defaults.get("fused")), "precision": str(trainer.precision),
            "ce_in_graph": not ce_outside, "tokens_per_sec": med,
            "mfu": lm.flops_per_token * med / peak if peak else None, "wall_s": time.perf_counter() - t0,
            "syncs_per_step_off_cadence": (sum(off) / len(off)) if off else None, "syncs_per_step": syncs.per_step,
            "device_reads": lm._guard.reads, "steps": trainer.global_step}


def run(widths: list[int], steps: int, every: int, tiny: bool, compile: bool | None = None,
        gpt2: bool = True) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    compile = (dev.type == "cuda" and not tiny) if compile is None else compile
    # shapes: (n_layer, head_dim, seq, vocab, batch); tiny = the same code at CPU-test size
    shape = (1, 8, 32, 256, 4) if tiny else (8, 64, 1024, 32768, 16)
    rows = []
    if gpt2:
        d, gshape = (32, shape) if tiny else (768, (12, 64, 1024, 50304, 16))
        rows.append(fit_row("gpt2 12×768" if not tiny else "gpt2 (tiny)", d, *gshape, steps, every, compile))
    for d in widths:
        rows.append(fit_row(f"d{d}", d, *shape, steps, every, compile))
    mid = widths[len(widths) // 2]
    rows.append(fit_row(f"d{mid} fused=false", mid, *shape, steps, every, compile, fused=False))
    if compile:
        rows.append(fit_row(f"d{mid} CE outside compile", mid, *shape, steps, every, compile, ce_outside=True))
    return {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "lightning": L.__version__, "facts": device_facts(dev), "rows": rows}


def table(out: dict) -> str:
    lines = [f"device: {out['device']} (torch {out['torch']}, lightning {out['lightning']}); facts: {out['facts']}",
             f"{'row':<26}{'params':>10}{'tok/s':>12}{'MFU':>8}{'syncs/step':>12}{'wall s':>8}"]
    for r in out["rows"]:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "–"
        sy = f"{r['syncs_per_step_off_cadence']:.2f}" if r["syncs_per_step_off_cadence"] is not None else "–"
        lines.append(f"{r['row']:<26}{r['params'] / 1e6:>9.1f}M{r['tokens_per_sec']:>12,.0f}{mfu:>8}{sy:>12}"
                     f"{r['wall_s']:>8.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="default 256 512 1024 (tiny: 16 32)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default 60; tiny 12)")
    ap.add_argument("--every", type=int, default=None, help="PerfMonitor window / logging cadence (default 10; tiny 4)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, no compile: the CPU fallback")
    ap.add_argument("--compile", action="store_true", help="compile even with --tiny (default: on CUDA unless tiny)")
    ap.add_argument("--no-gpt2", action="store_true", help="skip the 12×768 row")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="write device_check.json here (default: $OUT)")
    a = ap.parse_args(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):  # per-row "GPU available" banners and tips
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(no `val_dataloader`|LeafSpec|does not have many workers)")
    widths = a.widths or ([16, 32] if a.tiny else [256, 512, 1024])
    out = run(widths, a.steps or (12 if a.tiny else 60), a.every or (4 if a.tiny else 10), a.tiny,
              compile=True if a.compile else None, gpt2=not a.no_gpt2)
    print(table(out), flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "device_check.json"), "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
