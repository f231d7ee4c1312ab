"""RunRecorder: every run directory archives what produced it (env.json) and what it achieved (metrics.json)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import lightning as L
import torch

import widthlab


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(widthlab.__file__))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    return {"widthlab": widthlab.__version__, "git_commit": _git_commit(), "python": sys.version.split()[0],
            "torch": torch.__version__, "lightning": L.__version__, "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "argv": sys.argv}


class RunRecorder(L.Callback):
    """Writes env.json at fit start and metrics.json (a flat summary: one results.csv row) at fit end."""

    def __init__(self):
        self._t0 = 0.0
        self._start_step = 0
        self._losses: list[float] = []
        self._recent: list = []
        self._val: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        self._t0, self._start_step = time.time(), trainer.global_step
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if trainer.is_global_zero and log_dir:
            os.makedirs(log_dir, exist_ok=True)
            write_json_atomic(os.path.join(log_dir, "env.json"), environment())

    # Kept in checkpoints, so a run resumed after its last checkpoint still reports its last validation.
    def state_dict(self) -> dict:
        self._flush()
        return {"losses": self._losses, "val": self._val}

    def load_state_dict(self, state: dict) -> None:
        self._losses, self._val = list(state.get("losses", [])), dict(state.get("val", {}))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # train_loss = mean CE of the last 50 micro-batches, comparable with val at the end of training. Kept as
        # device tensors (no host sync per step) and converted in state_dict/on_fit_end. (An earlier version
        # sampled every 10th batch of the whole run, which mixed early losses into short runs' train_loss.)
        if outputs is not None:
            self._recent = (self._recent + [outputs["ce"].detach()])[-50:]

    def _flush(self) -> None:
        if self._recent:
            self._losses = (self._losses + [float(t) for t in self._recent])[-50:]
            self._recent = []

    def on_fit_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # collective under DDP (see on_fit_start)
        self._flush()
        if not trainer.is_global_zero or not log_dir:
            return
        dm = trainer.datamodule
        m = {**self._val, **{k: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith(("val/", "perf/"))}}
        tokens = trainer.global_step * pl_module.tokens_per_step
        row = {
            "d_model": pl_module.cfg.d_model, "n_layer": pl_module.cfg.n_layer, "seq_len": pl_module.cfg.seq_len,
            "vocab_size": pl_module.cfg.real_vocab_size, "data_source": getattr(dm, "source", None),
            "seed": getattr(dm, "seed", None), "steps": trainer.global_step, "tokens": tokens,
            "epochs": tokens / dm.split_stats("train")["tokens"] if hasattr(dm, "split_stats") else None,
            "params": pl_module.model.num_params(), "params_nonembed": pl_module.model.num_params(True),
            "flops_per_token": pl_module.flops_per_token, "flops": pl_module.flops_per_token * tokens,
            "tokens_per_param": tokens / pl_module.model.num_params(),
            "train_loss": sum(self._losses) / len(self._losses) if self._losses else None,
            "val_loss": m.get("val/loss"), "val_bpb": m.get("val/bpb"), "val_word_ppl": m.get("val/word_ppl"),
            "tokens_per_sec": m.get("perf/tokens_per_sec"), "mfu": m.get("perf/mfu"),
            "wall_s": time.time() - self._t0, "interventions": [repr(iv) for iv in pl_module.interventions],
        }
        for cb in trainer.callbacks:  # final geometry from the overlap monitor, if one is attached
            for tag, v in getattr(cb, "latest", {}).items():
                if tag.startswith("geometry/"):
                    row["geom_" + tag[len("geometry/"):].replace("/", "_")] = v
        write_json_atomic(os.path.join(log_dir, "metrics.json"), row)
