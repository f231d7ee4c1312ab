"""RunRecorder: every run directory archives what produced it (env.json) and what it achieved (metrics.json).

metrics.json is one flat results.csv row. Besides sizes, tokens, FLOPs, throughput and the final geometry it holds:
  val_loss            the LAST validation loss; val_bpb, val_word_ppl from the same validation
  val_loss_best       the lowest validation loss of the run, seen at global step `best_step`
  val_history         [[step, val_loss], ...] for every validation (not the sanity check); kept in checkpoints,
                      so a resumed run reports the whole history
  train_loss_eval     mean token CE of the final weights in eval mode (no dropout) on a fixed train subset: the
                      first windows of TRAIN_EVAL_SEED, as many tokens as one validation sees; the same windows for
                      every run, so it is the honest partner of val_loss for a generalisation gap
  train_loss_running  mean CE of the last 50 training micro-batches (dropout on, weights changing: the old
                      `train_loss`)
  status, diverged_step  "ok" and null, or "diverged" and the global step whose loss or gradients were not finite
                      (see widthlab.module: that update was skipped, so every checkpoint holds pre-divergence weights)
  precision, devices  the precision the fit resolved (bf16-mixed on a GPU when the recipe says null, 32-true on a
                      CPU) and the number of devices that trained it (all nodes)
  global_batch        sequences per optimizer step: batch_size × accumulate_grad_batches × devices, and
                      global_batch_tokens = global_batch × seq_len; archives refuse points that differ in these
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F

import widthlab
from widthlab.data.cache import load_split
from widthlab.device import tf32_enabled
from widthlab.data.sampling import TrainWindows

# The train subset of train_loss_eval is drawn with its own seed, not the run's, so every run of a sweep (any width,
# seed or arm) is measured on the same windows.
TRAIN_EVAL_SEED = 20250505


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
            "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": L.__version__,
            "platform": platform.platform(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "argv": sys.argv}


def training_setup(trainer, pl_module) -> dict:
    """How the fit ran, as resolved (not as the recipe spelled it): precision, devices, the global batch, and the
    fast paths taken (fused AdamW, compile, TF32)."""
    dm = getattr(trainer, "datamodule", None)
    batch = getattr(dm, "batch_size", None)
    glob = batch * trainer.accumulate_grad_batches * trainer.world_size if batch else None
    opt = trainer.optimizers[0] if trainer.optimizers else None
    return {"precision": str(trainer.precision), "devices": trainer.world_size, "batch_size": batch,
            "accumulate_grad_batches": trainer.accumulate_grad_batches, "global_batch": glob,
            "global_batch_tokens": glob * pl_module.cfg.seq_len if glob else None,
            "fused_adamw": bool(opt.defaults.get("fused")) if opt is not None else None,
            "compile": bool(pl_module.hparams.get("compile")), "tf32": tf32_enabled()}


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def train_loss_eval(trainer, pl_module) -> float | None:
    """Mean token CE of pl_module's current weights, eval mode, on the fixed train subset (None without a
    TokenDataModule). Every rank computes it (a sharded model needs all of them for a forward)."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not all(hasattr(dm, a) for a in ("path", "seq_len", "split_stats", "hparams")):
        return None
    cap = dm.hparams.get("max_eval_tokens")
    n_tokens = min(dm.split_stats("valid")["tokens"], cap or math.inf)
    n_seq = max(1, math.ceil(n_tokens / dm.seq_len))
    # Sample ids 0..n_seq-1 of TRAIN_EVAL_SEED through the training sampler (windows spread over the whole split),
    # drawn a batch at a time: batch i holds ids i·bs … i·bs+bs-1, whatever bs is.
    bs = dm.hparams.get("eval_batch_size", 64)
    ds = TrainWindows(load_split(dm.path, "train"), dm.seq_len, bs, TRAIN_EVAL_SEED)
    was_training, total, count = pl_module.training, 0.0, 0
    pl_module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for i in range(math.ceil(n_seq / bs)):
                x, y = (t[:n_seq - i * bs].to(pl_module.device) for t in ds[i])
                logits, _ = pl_module(x)
                total = total + F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
                count += y.numel()
    finally:
        pl_module.train(was_training)
    return _finite_or_none(float(total) / count)


class RunRecorder(L.Callback):
    """Writes env.json at fit start and metrics.json (a flat summary: one results.csv row) at fit end; on a
    diverged run, also the one line that says so."""

    def __init__(self):
        self._t0 = 0.0
        self._start_step = 0
        self._losses: list[float] = []
        self._recent: list = []  # [(global step after the batch, its CE as a device tensor)]
        self._module = None
        self._val: dict[str, float] = {}  # the last validation's val/* metrics
        self._history: list[list] = []    # [[global_step, val_loss], ...]

    def on_fit_start(self, trainer, pl_module):
        self._t0, self._start_step, self._module = time.time(), trainer.global_step, pl_module
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if trainer.is_global_zero and log_dir:
            os.makedirs(log_dir, exist_ok=True)
            write_json_atomic(os.path.join(log_dir, "env.json"), {**environment(), **training_setup(trainer, pl_module)})

    # Kept in checkpoints, so a run resumed after its last checkpoint still reports its last validation.
    def state_dict(self) -> dict:
        self._flush()
        return {"losses": self._losses, "val": self._val, "val_history": self._history}

    def load_state_dict(self, state: dict) -> None:
        self._losses, self._val = list(state.get("losses", [])), dict(state.get("val", {}))
        self._history = [list(e) for e in state.get("val_history", [])]

    def on_validation_end(self, trainer, pl_module):
        # Runs before ModelCheckpoint's save (Lightning orders checkpoint callbacks last), so the checkpoint
        # written at this validation already holds it in its history.
        if trainer.sanity_checking:
            return
        self._val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if "val/loss" in self._val:
            step = trainer.global_step
            self._history = [e for e in self._history if e[0] != step] + [[step, self._val["val/loss"]]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # train_loss = mean CE of the last 50 micro-batches, comparable with val at the end of training. Kept as
        # device tensors (no host sync per step) and converted in state_dict/on_fit_end. (An earlier version
        # sampled every 10th batch of the whole run, which mixed early losses into short runs' train_loss.)
        if outputs is not None:
            self._recent = (self._recent + [(trainer.global_step, outputs["ce"].detach())])[-50:]

    def _flush(self) -> None:
        # A diverged step's NaN is left out: the running mean is of the steps that trained. With the divergence
        # flag read late (widthlab.divergence), batches after the bad step (its own ends at diverged_step + 1) ran
        # without updating anything: left out too.
        bad = getattr(self._module, "diverged_step", None)
        if self._recent:
            kept = [float(ce) for step, ce in self._recent if bad is None or step <= bad + 1]
            self._losses = (self._losses + [x for x in kept if math.isfinite(x)])[-50:]
            self._recent = []

    def _best(self) -> tuple[float | None, int | None]:
        good = [(v, s) for s, v in self._history if math.isfinite(v)]
        return min(good) if good else (None, None)

    def on_fit_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # collective under DDP (see on_fit_start)
        self._flush()
        eval_loss = train_loss_eval(trainer, pl_module)  # every rank: see train_loss_eval
        if not trainer.is_global_zero or not log_dir:
            return
        dm = trainer.datamodule
        # val/* only from real validations (recorded in on_validation_end), never the sanity check's
        m = {**self._val, **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}}
        diverged = getattr(pl_module, "diverged_step", None)
        steps = trainer.global_step if diverged is None else diverged  # the skipped update did not train
        tokens = steps * pl_module.tokens_per_step
        best, best_step = self._best()
        row = {
            "d_model": pl_module.cfg.d_model, "n_layer": pl_module.cfg.n_layer, "seq_len": pl_module.cfg.seq_len,
            "vocab_size": pl_module.cfg.real_vocab_size, "data_source": getattr(dm, "source", None),
            "seed": getattr(dm, "seed", None), "steps": steps, "tokens": tokens,
            "epochs": tokens / dm.split_stats("train")["tokens"] if hasattr(dm, "split_stats") else None,
            "params": pl_module.model.num_params(), "params_nonembed": pl_module.model.num_params(True),
            "flops_per_token": pl_module.flops_per_token, "flops": pl_module.flops_per_token * tokens,
            "tokens_per_param": tokens / pl_module.model.num_params(),
            **{k: v for k, v in training_setup(trainer, pl_module).items()
               if k in ("precision", "devices", "batch_size", "accumulate_grad_batches", "global_batch",
                        "global_batch_tokens")},
            "status": "ok" if diverged is None else "diverged", "diverged_step": diverged,
            "train_loss_running": sum(self._losses) / len(self._losses) if self._losses else None,
            "train_loss_eval": eval_loss,
            "val_loss": m.get("val/loss"), "val_bpb": m.get("val/bpb"), "val_word_ppl": m.get("val/word_ppl"),
            "val_loss_best": best, "best_step": best_step, "val_history": self._history,
            "tokens_per_sec": m.get("perf/tokens_per_sec"), "mfu": m.get("perf/mfu"),
            "wall_s": time.time() - self._t0, "interventions": [repr(iv) for iv in pl_module.interventions],
        }
        for cb in trainer.callbacks:  # final geometry from the overlap monitor, if one is attached
            for tag, v in getattr(cb, "latest", {}).items():
                if tag.startswith("geometry/"):
                    row["geom_" + tag[len("geometry/"):].replace("/", "_")] = v
        write_json_atomic(os.path.join(log_dir, "metrics.json"), row)
        if diverged is not None:
            print(f"diverged: non-finite {getattr(pl_module, 'diverged_what', 'loss')} at step {diverged}; the update "
                  "was skipped and checkpoints/last.ckpt holds the last good weights; metrics.json marked diverged",
                  file=sys.stderr, flush=True)
