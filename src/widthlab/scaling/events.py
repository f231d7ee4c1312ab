"""Read scalars back out of a run's TensorBoard event files, with TensorBoard's own reader.

A run dir may hold several event files (a resumed run appends a new one), possibly in subdirectories
(`version_0/`). We merge them per tag and keep, for each step, the value written last, so a resume that
re-logs a step does not leave duplicates. `tb_compare/` (our own figure logs) is skipped.
"""
from __future__ import annotations

from pathlib import Path

Scalars = dict[str, list[tuple[int, float]]]

# results.csv column <- TensorBoard tag, for filling a metric the summary lacks
COLUMN_TAGS = {"val_loss": "val/loss", "val_bpb": "val/bpb", "val_word_ppl": "val/word_ppl",
               "train_loss": "train/loss"}


def event_dirs(run_dir: str | Path) -> list[Path]:
    """Directories under run_dir (itself included) that hold event files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    dirs = {p.parent for p in run_dir.rglob("events.out.tfevents.*") if "tb_compare" not in p.parts}
    return sorted(dirs)


def read_scalars(run_dir: str | Path) -> Scalars:
    """{tag: [(step, value), …] sorted by step} from every event file under run_dir; {} if there are none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for d in event_dirs(run_dir):
        # scalars: 0 = keep every point (no reservoir sampling); the rest we never read, so keep 1 of each
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "histograms": 1, "images": 1,
                                                      "tensors": 1, "compressedHistograms": 1, "audio": 1})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            by_step = merged.setdefault(tag, {})
            for ev in acc.Scalars(tag):
                if ev.step not in by_step or ev.wall_time >= by_step[ev.step][0]:
                    by_step[ev.step] = (ev.wall_time, float(ev.value))
    return {tag: [(s, v) for s, (_, v) in sorted(d.items())] for tag, d in merged.items()}


def last_value(scalars: Scalars, tag: str, mean_of_last: int = 1) -> float | None:
    """Value of `tag` at its last step (or the mean of the last `mean_of_last` points); None if absent."""
    pts = scalars.get(tag)
    if not pts:
        return None
    tail = [v for _, v in pts[-mean_of_last:]]
    return sum(tail) / len(tail)


def summary_from_scalars(scalars: Scalars) -> dict:
    """The results.csv columns that the event files can supply: losses (val_loss = the last validation,
    val_loss_best = the lowest, val_history = every one), and `geometry/<matrix>/<stat>` tags as
    `geom_<matrix>_<stat>`. train_loss is the mean of the last 10 points of the running (dropout-on) loss."""
    out: dict = {}
    val = scalars.get("val/loss")
    if val:
        out["val_loss_best"] = min(v for _, v in val)
        out["val_history"] = [(s, v) for s, v in val]
    for col, tag in COLUMN_TAGS.items():
        v = last_value(scalars, tag, mean_of_last=10 if col == "train_loss" else 1)
        if v is not None:
            out[col] = v
    for tag in scalars:
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == "geometry":
            out[f"geom_{parts[1]}_{parts[2]}"] = last_value(scalars, tag)
    return out
