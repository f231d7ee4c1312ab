"""Shared test helpers: tiny recipes and an event-file reader."""
from __future__ import annotations

import glob

import lightning as L
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


class CrashAt(L.Callback):
    """Simulates a killed run: raises after `step` optimizer steps (checkpoints written so far survive)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


def tiny_args(root, cache, steps=12, extra=()):
    return ["fit", "--config", "recipes/smoke.yaml",
            "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.d_model", "32", "--model.n_layer", "1", "--model.warmup_steps", "3",
            "--data.vocab_size", "512", "--data.seq_len", "32", "--data.batch_size", "4",
            "--data.max_eval_tokens", "2000", "--data.cache_dir", str(cache), *extra]


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} over every event file in logdir, read with TensorBoard's own reader."""
    out: dict[str, list[tuple[int, float]]] = {}
    for fn in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
        acc = EventAccumulator(fn, size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


# What building a token cache prints on stderr before any error (progress bars, its summary, a note on holdouts):
# information, not part of an error's one line.
DATA_PROGRESS = ("BPE sample", "tokenising", "token cache built", "note: ", "waiting for another process")


def without_progress(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line.strip() and not line.startswith(DATA_PROGRESS)]
