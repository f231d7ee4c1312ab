"""A sweep's archive: the committed copy of its runs' summaries, and the settings that make two runs the same point.

Layout: <archive>/runs/<arm>/d<width>/s<seed>/{config.yaml, metrics.json}, <archive>/results.csv, <archive>/sweep.json
(written by widthlab.sweep). A point is archived when its metrics.json is there; config.yaml is copied first.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from typing import Any

import yaml

from widthlab import WidthlabError
from widthlab.device import LEGACY_PRECISION, default_precision, unified_precision

# What decides a run's result, besides the point itself (arm, d_model, seed): every model.* and data.* setting but
# the ones below, the training-length and optimisation settings of the trainer, and a custom optimizer/scheduler.
# Logging, checkpoint, monitor and device-placement settings do not change the numbers and may differ.
_TRAINER_KEYS = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
                 "precision", "val_check_interval", "check_val_every_n_epoch", "limit_train_batches",
                 "limit_val_batches", "overfit_batches")
_IGNORED = ("model.d_model", "model.compile", "model.fused", "data.seed", "data.cache_dir", "data.num_workers",
            "data.eval_batch_size")
# Two settings are compared as resolved, not as spelled: trainer.precision (null = what the device chose) and the
# global batch (data.batch_size × trainer.accumulate_grad_batches × devices × nodes), since a run's devices are
# placement settings otherwise. How each side resolves them is in run_settings and check_archive.
GLOBAL_BATCH = "global_batch"
_GLOBAL_BATCH_FIX = "data.batch_size, trainer.accumulate_grad_batches or trainer.devices"


def _flatten(x: Any, prefix: str) -> dict[str, Any]:
    if isinstance(x, dict) and x:
        return {k: v for key, val in x.items() for k, v in _flatten(val, f"{prefix}.{key}").items()}
    if isinstance(x, list) and x:
        return {k: v for i, val in enumerate(x) for k, v in _flatten(val, f"{prefix}.{i}").items()}
    return {prefix: None if x in ([], {}) else x}


def device_count(trainer: dict, auto: int = 1) -> int:
    """Devices × nodes of a trainer config; `auto` (or -1) counts as `auto` devices: what each sweep point gets
    (one GPU per point, or one CPU process; a SLURM launcher's gpus_per_run)."""
    d = trainer.get("devices", "auto")
    if isinstance(d, (list, tuple)):
        n = len(d)
    elif isinstance(d, str) and "," in d:
        n = len([x for x in d.split(",") if x.strip()])
    elif isinstance(d, int) or (isinstance(d, str) and d.strip().isdigit()):
        n = int(d) if int(d) >= 0 else auto
    else:
        n = auto
    return n * int(trainer.get("num_nodes") or 1)


def run_settings(config: dict, precision_default: str = LEGACY_PRECISION, auto_devices: int = 1) -> dict[str, Any]:
    """The settings of a resolved run config (config.yaml, or `fit --print_config`) that decide its result, as
    {dotted key: value}, lists and interventions flattened (model.interventions.0.init_args.coef).

    trainer.precision is the resolved one (null → precision_default: a config.yaml saved before fits recorded their
    resolved precision says null, and every such run that finished trained on a CPU, at 32-true); global_batch is
    sequences per optimizer step over all devices (auto devices → auto_devices)."""
    trainer = config.get("trainer") or {}
    flat = {**_flatten(config.get("model") or {}, "model"), **_flatten(config.get("data") or {}, "data"),
            **{f"trainer.{k}": trainer.get(k) for k in _TRAINER_KEYS},
            **_flatten(config.get("optimizer"), "optimizer"), **_flatten(config.get("lr_scheduler"), "lr_scheduler")}
    flat["trainer.precision"] = unified_precision(trainer.get("precision"), precision_default)
    batch = (config.get("data") or {}).get("batch_size")
    flat[GLOBAL_BATCH] = (batch * int(trainer.get("accumulate_grad_batches") or 1) * device_count(trainer, auto_devices)
                          if isinstance(batch, int) else None)
    return {k: v for k, v in flat.items() if k not in _IGNORED}


def recorded_settings(metrics: dict) -> dict[str, Any]:
    """What a run's metrics.json records of the two resolved settings (runs made since it does): its precision,
    and its global batch (recorded, else tokens / (steps × seq_len), which every metrics.json holds)."""
    out: dict[str, Any] = {}
    if metrics.get("precision") is not None:
        out["trainer.precision"] = unified_precision(metrics["precision"], LEGACY_PRECISION)
    if metrics.get(GLOBAL_BATCH) is not None:
        out[GLOBAL_BATCH] = metrics[GLOBAL_BATCH]
    elif metrics.get("steps") and metrics.get("seq_len") and metrics.get("tokens") is not None:
        out[GLOBAL_BATCH] = int(metrics["tokens"]) // (int(metrics["steps"]) * int(metrics["seq_len"]))
    return out


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


# Columns of a results.csv row that say where the run is, not what it measured (widthlab.sweep._rows).
_POINT_COLS = ("arm", "run_dir")
# What a metrics.json records of the settings that trained it, and the resolved-config key each one is.
_RECORDED = {"n_layer": "model.n_layer", "vocab_size": "data.vocab_size", "seq_len": "data.seq_len",
             "steps": "trainer.max_steps"}
RESTORED = "restored_from"


def _cell(v: str) -> Any:
    """A results.csv cell back as the JSON value metrics.json held (lists and dicts were JSON-encoded)."""
    if v in ("nan", "inf", "-inf"):  # how csv writes a float JSON cannot spell
        return float(v)
    try:
        return json.loads(v)
    except ValueError:
        return v


def restore_from_results(archive: str) -> int:
    """Rebuild <archive>/runs/<arm>/d<width>/s<seed>/metrics.json from <archive>/results.csv for every listed point
    whose file is missing; returns how many. Archives committed while .gitignore still hid docs/results/*/runs/
    hold only results.csv, whose rows are exactly the runs' metrics.json plus the arm and run_dir, so
    nothing is invented. Their config.yaml is lost: the file says so (restored_from), and a sweep then checks the
    settings the metrics record (recorded_differ) instead of the full config."""
    fn = os.path.join(archive, "results.csv")
    if not os.path.isfile(fn):
        return 0
    with open(fn, newline="") as f:
        rows = list(csv.DictReader(f))
    n = 0
    for r in rows:
        dst = archive_dir(archive, r["arm"], int(r["d_model"]), int(r["seed"]))
        if os.path.isfile(os.path.join(dst, "metrics.json")):
            continue
        # '' is a key this run lacked (another row had it) or held as None: either reads as None, so it is dropped
        m = {k: _cell(v) for k, v in r.items() if k not in _POINT_COLS and v not in (None, "")}
        m[RESTORED] = "results.csv"
        os.makedirs(dst, exist_ok=True)
        tmp = os.path.join(dst, f"metrics.json.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(m, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(dst, "metrics.json"))
        n += 1
    return n


def _classes(interventions: Any) -> list[str]:
    """Intervention class names, from a config's [{class_path: ...}] or a metrics.json's ['Name(args)', ...]."""
    out = []
    for iv in interventions or []:
        s = iv.get("class_path", "") if isinstance(iv, dict) else str(iv).split("(")[0]
        out.append(s.rsplit(".", 1)[-1])
    return sorted(out)


def recorded_differ(metrics: dict, flat: dict[str, Any], config: dict) -> tuple[str, Any, Any] | None:
    """For a point restored without its config.yaml: the first setting its metrics record (layers, vocabulary,
    context, steps of a finished run, precision (none recorded: a CPU run, 32-true), global batch, intervention
    classes) that differs from the new point's run_settings `flat` (of its resolved `config`), or None."""
    for col, key in _RECORDED.items():
        if col == "steps" and metrics.get("status") != "ok":
            continue  # a diverged run stopped early
        if metrics.get(col) is not None and key in flat and metrics[col] != flat[key]:
            return key, metrics[col], flat[key]
    got = {"trainer.precision": LEGACY_PRECISION, **recorded_settings(metrics)}
    for key in ("trainer.precision", GLOBAL_BATCH):
        if got.get(key) is not None and flat.get(key) is not None and got[key] != flat[key]:
            return key, got[key], flat[key]
    old, new = _classes(metrics.get("interventions")), _classes((config.get("model") or {}).get("interventions"))
    return None if old == new else ("model.interventions", old, new)


def read_metrics(run_dir: str) -> dict:
    """The run's metrics.json, or {} when there is none (not finished, or a fit without RunRecorder)."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def check_archive(archive: str, points: list, configs: dict[str, dict], cuda: bool | None = None,
                  devices_per_point: int = 1) -> int:
    """Refuse (WidthlabError) if a finished point, archived or in the sweep dir about to be archived, was trained
    with other settings than this sweep's; returns how many of the points are in the archive.

    The new points' precision, when their config leaves it null, is what a fit picks where they will train (`cuda`:
    on a GPU; default: whether this machine has one), and `auto` devices count as devices_per_point. An archived
    point's own metrics.json says what it ran at (precision, global batch); without them its config.yaml does."""
    n = 0
    for p in points:
        cfg = configs[p.arm]
        new = run_settings(cfg, default_precision((cfg.get("trainer") or {}).get("accelerator"), cuda),
                           devices_per_point)
        src = archive_dir(archive, p.arm, p.width, p.seed)
        if os.path.isfile(os.path.join(src, "metrics.json")):
            n += 1
        elif not os.path.isfile(os.path.join(p.run_dir, "metrics.json")):
            continue
        else:
            src = p.run_dir
        fn = os.path.join(src, "config.yaml")
        m = read_metrics(src)
        if not os.path.isfile(fn) and RESTORED in m:
            diff = recorded_differ(m, new, cfg)  # only what its metrics record can be checked
        elif not os.path.isfile(fn):
            raise WidthlabError(f"{fn} is missing, so {p.arm} d={p.width} s{p.seed} cannot be checked against this "
                                "sweep; restore it, or delete that run directory to train the point again")
        else:
            with open(fn) as f:
                old = {**run_settings(yaml.safe_load(f) or {}), **recorded_settings(m)}
            diff = settings_differ(old, new)
        if diff is not None:
            k, was, now = diff
            fix = (f"change {_GLOBAL_BATCH_FIX} so that it is {was!r} again" if k == GLOBAL_BATCH
                   else f"set {k} back to {was!r}")
            raise WidthlabError(f"{src} ({p.arm} d={p.width} s{p.seed}) was trained with {k}={was!r}, but this sweep "
                                f"would use {k}={now!r}; give this sweep its own name and archive, or {fix}")
    return n
