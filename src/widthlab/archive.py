"""A sweep's archive: the committed copy of its runs' summaries, and the settings that make two runs the same point.

Layout: <archive>/runs/<arm>/d<width>/s<seed>/{config.yaml, metrics.json}, <archive>/results.csv, <archive>/sweep.json
(written by widthlab.sweep). A point is archived when its metrics.json is there; config.yaml is copied first.
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any

# What decides a run's result, besides the point itself (arm, d_model, seed): every model.* and data.* setting but
# the ones below, the training-length and optimisation settings of the trainer, and a custom optimizer/scheduler.
# Logging, checkpoint, monitor and device-placement settings do not change the numbers and may differ.
_TRAINER_KEYS = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
                 "precision", "val_check_interval", "check_val_every_n_epoch", "limit_train_batches",
                 "limit_val_batches", "overfit_batches")
_IGNORED = ("model.d_model", "model.compile", "data.seed", "data.cache_dir", "data.num_workers",
            "data.eval_batch_size")


def _flatten(x: Any, prefix: str) -> dict[str, Any]:
    if isinstance(x, dict) and x:
        return {k: v for key, val in x.items() for k, v in _flatten(val, f"{prefix}.{key}").items()}
    if isinstance(x, list) and x:
        return {k: v for i, val in enumerate(x) for k, v in _flatten(val, f"{prefix}.{i}").items()}
    return {prefix: None if x in ([], {}) else x}


def run_settings(config: dict) -> dict[str, Any]:
    """The settings of a resolved run config (config.yaml, or `fit --print_config`) that decide its result, as
    {dotted key: value}, lists and interventions flattened (model.interventions.0.init_args.coef)."""
    flat = {**_flatten(config.get("model") or {}, "model"), **_flatten(config.get("data") or {}, "data"),
            **{f"trainer.{k}": (config.get("trainer") or {}).get(k) for k in _TRAINER_KEYS},
            **_flatten(config.get("optimizer"), "optimizer"), **_flatten(config.get("lr_scheduler"), "lr_scheduler")}
    return {k: v for k, v in flat.items() if k not in _IGNORED}


def settings_differ(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting in which two run_settings differ, as (key, old, new), or None. A key only one side has is
    an option added (or dropped) since, read at its default, and skipped, unless the other side has a plain value at
    a parent key (interventions: null vs a list), which is a real difference."""
    for k in sorted(old.keys() | new.keys()):
        if k in old and k in new:
            if old[k] != new[k]:
                return k, old[k], new[k]
            continue
        here, there = (old, new) if k in old else (new, old)
        parts = k.split(".")
        parent = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in there), None)
        if parent is not None:
            nested = {kk[len(parent) + 1:]: v for kk, v in here.items() if kk.startswith(parent + ".")}
            return (parent, nested, there[parent]) if here is old else (parent, there[parent], nested)
    return None


def archive_dir(archive: str, arm: str, width: int, seed: int) -> str:
    return os.path.join(archive, "runs", arm, f"d{width}", f"s{seed}")


def _copy_atomic(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def copy_run(run_dir: str, dst: str) -> None:
    """Copy a finished run's config.yaml, then its metrics.json (whose presence marks the point finished)."""
    os.makedirs(dst, exist_ok=True)
    for name in ("config.yaml", "metrics.json"):
        _copy_atomic(os.path.join(run_dir, name), os.path.join(dst, name))
