"""FitSummary: a fit ends with what it achieved and where to look, not with a progress bar.

Printed on rank 0 at fit end from metrics.json (written just before by RunRecorder), so the numbers are the ones
results.csv and the HPARAMS table show.
"""
from __future__ import annotations

import os
import shlex
import time

import lightning as L

from widthlab import tb_views
from widthlab.archive import read_metrics


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _si(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _duration(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def summary_lines(m: dict, run_dir: str, steps: int, tokens_per_sec: float | None, wall_s: float) -> list[str]:
    """The end-of-fit summary (pure): status, losses, speed, where the run is and how to look at it."""
    tokens = m.get("tokens")
    head = f"{steps} steps" + (f", {_si(tokens)} tokens" if tokens else "")
    if m.get("status") == "diverged":
        head = f"DIVERGED at step {m.get('diverged_step', '?')} (the loss stopped being finite); {head}"
    best, at = m.get("val_loss_best"), m.get("best_step")
    best_txt = "" if best is None else f" · best {best:.4f}" + ("" if at is None else f" (step {at})")
    tps = m.get("tokens_per_sec") or tokens_per_sec
    view = tb_views.sweep_root(run_dir) or run_dir
    return [
        f"fit finished: {head} in {_duration(wall_s)}" + (f" ({_si(tps)} tokens/s)" if tps else ""),
        f"  val loss  {_num(m.get('val_loss'), '.4f')} last{best_txt} nats/token",
        f"  word ppl  {_num(m.get('val_word_ppl'), '.1f')} · bpb {_num(m.get('val_bpb'), '.3f')}",
        f"  run       {run_dir}",
        f"  view      tensorboard --logdir {shlex.quote(view)}",
    ]


class FitSummary(L.Callback):
    """Prints summary_lines at fit end (rank 0); add it after RunRecorder."""

    def __init__(self):
        self._t0, self._step0 = time.time(), 0

    def on_fit_start(self, trainer, pl_module):
        self._t0, self._step0 = time.time(), trainer.global_step

    def on_fit_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or not log_dir:
            return
        wall = time.time() - self._t0
        m = read_metrics(log_dir)
        done = (trainer.global_step - self._step0) * getattr(pl_module, "tokens_per_step", 0)
        tps = done / wall if done and wall > 0 else None  # fallback: this fit's tokens over its wall time
        rel = os.path.relpath(log_dir)
        lines = summary_lines(m, os.path.abspath(log_dir) if rel.startswith("..") else rel,
                              m.get("steps", trainer.global_step), tps, m.get("wall_s") or wall)
        print("\n" + "\n".join(lines), flush=True)
