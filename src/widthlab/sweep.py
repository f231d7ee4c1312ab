"""`python -m train sweep`: one fit recipe at many widths × arms × seeds, resumable.

Each point is an ordinary `python -m train fit` in its own process and directory,
`runs/<sweep>/<arm>/d<width>/s<seed>/`; an arm is a named set of dotted recipe overrides (interventions included).
`results.csv` is rebuilt from the runs' metrics.json after every run, so a killed sweep never loses or doubles a row:
re-running it skips finished runs and resumes interrupted ones from their last checkpoint. A run that diverged
is finished too (its metrics.json says status: diverged); it is listed, not retried.

An archive (`archive: docs/results/<sweep>`) makes a sweep outlive the machine: each finished run's metrics.json
and config.yaml are copied to `<archive>/runs/<arm>/d<width>/s<seed>/` and `<archive>/results.csv` is rebuilt, so
committing the archive commits the results. On a fresh clone (no runs/), every archived point counts as finished
and the sweep runs only what is missing. An archived point must have been trained with the settings this sweep
would use (see `run_settings`), or the sweep refuses to start.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import yaml

from widthlab import WidthlabError
from widthlab.tb_views import write_sweep_layout
from widthlab.archive import archive_dir, copy_run, run_settings, settings_differ
from widthlab.callbacks.run_info import write_json_atomic


@dataclass
class Point:
    arm: str
    width: int
    seed: int
    run_dir: str
    args: list[str]


def _flag(key: str, value: Any) -> list[str]:
    # Lists and dicts (interventions) travel as JSON, which jsonargparse reads as YAML.
    return [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]


def plan(recipe: str, widths: list[int], seeds: list[int], arms: dict[str, dict[str, Any]],
         overrides: dict[str, Any], root: str) -> list[Point]:
    if not widths:
        raise WidthlabError("the sweep has no widths; give widths: [32, 64, ...]")
    if len(set(widths)) != len(widths):
        raise WidthlabError(f"duplicate widths in {widths}; list each width once")
    if not seeds or len(set(seeds)) != len(seeds):
        raise WidthlabError(f"seeds must be a non-empty list without repeats (got {seeds})")
    if not os.path.isfile(recipe):
        raise WidthlabError(f"recipe {recipe} does not exist; point recipe: at a fit recipe in recipes/")
    with open(recipe) as f:
        base = yaml.safe_load(f) or {}
    arms = arms or {"baseline": {}}
    for arm, ov in arms.items():
        head_dim = {**overrides, **(ov or {})}.get("model.head_dim", base.get("model", {}).get("head_dim", 32))
        bad = [w for w in widths if w % head_dim]
        if bad:
            raise WidthlabError(f"widths {bad} are not multiples of head_dim={head_dim} (arm {arm}); "
                                f"use multiples of {head_dim} or set model.head_dim")
    points = []
    for arm, ov in arms.items():
        for w in sorted(widths):
            for s in seeds:
                run_dir = os.path.join(root, arm, f"d{w}", f"s{s}")
                args = ["fit", "--config", recipe, "--trainer.default_root_dir", run_dir,
                        "--model.d_model", str(w), "--seed_everything", str(s), "--data.seed", str(s),
                        "--trainer.enable_progress_bar", "false", "--arm", arm]
                for k, v in {**overrides, **(ov or {})}.items():
                    args += _flag(k, v)
                points.append(Point(arm, w, s, run_dir, args))
    return points


def validate(points: list[Point]) -> dict[str, dict]:
    """Before any training: parse each arm's first point with --print_config (an unknown key or a bad value fails),
    then build its model at every width, so an intervention's own checks (a nonsensical value, a head swap on a tied
    model, a matrix that does not exist) fail here too, not minutes into the sweep.
    Returns {arm: the resolved config of its first point} (what config.yaml of its runs will hold)."""
    from widthlab.cli import _widthlab_cause
    from widthlab.lightning_cli import run_lightning_cli

    widths: dict[str, list[int]] = {}
    configs: dict[str, dict] = {}
    for p in points:
        widths.setdefault(p.arm, []).append(p.width)
    for p in points:
        if p.arm not in widths:
            continue
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                run_lightning_cli(p.args + ["--print_config"])
        except SystemExit as e:
            if e.code:
                msg = [l for l in err.getvalue().splitlines() if "error" in l.lower()] or ["invalid override"]
                raise WidthlabError(f"arm '{p.arm}': {msg[-1].strip()}") from None
        except Exception as e:
            cause = _widthlab_cause(e)
            if cause is None:
                raise
            raise WidthlabError(f"arm '{p.arm}': {cause}") from None
        configs[p.arm] = yaml.safe_load(out.getvalue()) or {}
        _build_models(p.arm, configs[p.arm], widths.pop(p.arm))
    return configs


def _build_models(arm: str, config: dict, widths: list[int]) -> None:
    """Instantiate LitGPT (and so the GPT with the arm's interventions) at each width, without data or trainer."""
    from jsonargparse import ArgumentParser

    from widthlab.cli import _widthlab_cause
    from widthlab.module import LitGPT

    model = dict(config.get("model") or {})
    vocab = int((config.get("data") or {}).get("vocab_size", model.get("vocab_size", 4096)))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(LitGPT, "model")
    for w in widths:
        try:
            cfg = parser.parse_object({"model": {**model, "d_model": w, "vocab_size": vocab,
                                                 "real_vocab_size": vocab, "compile": False}})
            parser.instantiate_classes(cfg)
        except Exception as e:
            cause = _widthlab_cause(e)
            raise WidthlabError(f"arm '{arm}' at d_model={w}: {cause or str(e).splitlines()[0]}") from None


def _finished_runs(base: str) -> list[tuple[str, int, int, str]]:
    """(arm, width, seed, run_dir) of every <base>/<arm>/d<width>/s<seed>/metrics.json."""
    out = []
    for fn in sorted(glob.glob(os.path.join(base, "*", "d*", "s*", "metrics.json"))):
        d = os.path.dirname(fn)
        arm, w, s = os.path.relpath(d, base).split(os.sep)
        if w[1:].isdigit() and s[1:].lstrip("-").isdigit():
            out.append((arm, int(w[1:]), int(s[1:]), d))
    return out


def _rows(found: list[tuple[str, int, int, str]], base: str) -> list[dict]:
    return [{"arm": arm, "seed": seed, "run_dir": os.path.relpath(run_dir, base), **m, "d_model": width}
            for arm, width, seed, run_dir in found if (m := _metrics(run_dir))]


def collect(root: str, points: list[Point], archive: str | None = None) -> list[dict]:
    """Every finished run of the sweep: this invocation's points first, then any other <arm>/d<width>/s<seed>/ run
    already in the sweep directory, so narrowing --widths, --seeds or --only never drops a row, then every archived
    run that the sweep directory lacks (run_dir relative to root, pointing into the archive)."""
    found = [(p.arm, p.width, p.seed, p.run_dir) for p in points]
    planned = {os.path.normpath(d) for *_, d in found}
    found += [f for f in _finished_runs(root) if os.path.normpath(f[3]) not in planned]
    if archive is not None:
        have = {f[:3] for f in found if os.path.isfile(os.path.join(f[3], "metrics.json"))}
        found += [f for f in _finished_runs(os.path.join(archive, "runs")) if f[:3] not in have]
    return _rows(found, root)


def check_archive(archive: str, points: list[Point], configs: dict[str, dict]) -> int:
    """Refuse (WidthlabError) if a finished point, archived or in the sweep dir about to be archived, was trained
    with other settings than this sweep's; returns how many of the points are in the archive."""
    n = 0
    for p in points:
        src = archive_dir(archive, p.arm, p.width, p.seed)
        if os.path.isfile(os.path.join(src, "metrics.json")):
            n += 1
        elif not os.path.isfile(os.path.join(p.run_dir, "metrics.json")):
            continue
        else:
            src = p.run_dir
        fn = os.path.join(src, "config.yaml")
        if not os.path.isfile(fn):
            raise WidthlabError(f"{fn} is missing, so {p.arm} d={p.width} s{p.seed} cannot be checked against this "
                                "sweep; restore it, or delete that run directory to train the point again")
        with open(fn) as f:
            diff = settings_differ(run_settings(yaml.safe_load(f) or {}), run_settings(configs[p.arm]))
        if diff is not None:
            k, old, new = diff
            raise WidthlabError(f"{src} ({p.arm} d={p.width} s{p.seed}) was trained with {k}={old!r}, but this sweep "
                                f"would use {k}={new!r}; give this sweep its own name and archive, or set {k} back "
                                f"to {old!r}")
    return n


def write_archive_results(archive: str) -> str:
    """<archive>/results.csv: every archived run, run_dir relative to the archive."""
    return write_results(archive, _rows(_finished_runs(os.path.join(archive, "runs")), archive))


def write_results(root: str, rows: list[dict]) -> str:
    path = os.path.join(root, "results.csv")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    os.replace(tmp, path)
    return path


def _run_one(p: Point, device: int | None, threads: int | None = None) -> int:
    last = os.path.join(p.run_dir, "checkpoints", "last.ckpt")
    args = list(p.args)
    if os.path.exists(last):
        args += ["--ckpt_path", "last"]  # interrupted: continue exactly where it stopped
    elif os.path.isdir(p.run_dir):
        shutil.rmtree(p.run_dir)  # started but never checkpointed: nothing worth keeping
    os.makedirs(p.run_dir, exist_ok=True)
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    if threads is not None:  # parallel CPU runs share the cores instead of each spinning up all of them
        env["OMP_NUM_THREADS"] = str(threads)
    with open(os.path.join(p.run_dir, "stdout.log"), "a") as log:
        return subprocess.run([sys.executable, "-m", "train", *args], env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def sweep(*, recipe: str, widths: list[int], seeds: list[int] = [0], arms: dict[str, dict] | None = None,
          overrides: dict | None = None, name: str = "sweep", out_dir: str = "runs",
          dry_run: bool = False, devices: int | None = None, coord_check: bool = False,
          only: list[str] | None = None, archive: str | None = None, compare: dict | None = None) -> str:
    """Run a fit recipe at every width × arm × seed; resumable, and with `archive` resumable on another machine.

    Args:
        recipe: the fit recipe (a LightningCLI YAML) every point starts from
        widths: d_model values (multiples of model.head_dim)
        seeds: seeds; each sets seed_everything and data.seed
        arms: arm name → dotted recipe overrides, e.g. {"bigram": {"model.interventions": [...]}}; default one "baseline"
        overrides: dotted overrides applied to every arm (e.g. trainer.max_steps)
        name: sweep name; runs go to <out_dir>/<name>/<arm>/d<width>/s<seed>/
        out_dir: parent directory of the sweep
        dry_run: print the commands and exit
        devices: parallel runs: one per GPU (default: the number of visible GPUs), or on a CPU-only machine that
            many runs side by side with cores/devices threads each (default 1; 2 on a 2-core CPU gave 1.4× the
            tokens/s of one 2-thread run for d ≤ 128 models, docs/LOG.md)
        coord_check: first run a μP coordinate check per arm (a few steps per width) into <sweep>/<arm>/coord_check
        only: run just these arms now (results.csv still lists every finished run of the sweep)
        archive: a directory to commit (e.g. docs/results/<name>): every finished run's metrics.json and config.yaml
            go to <archive>/runs/<arm>/d<width>/s<seed>/, and <archive>/results.csv lists them all. Archived points
            count as finished (also when runs/ is gone) and appear in the sweep's results.csv. A point archived
            with other settings than this sweep's is refused before anything runs: the settings compared are the
            resolved config.yaml's model.* and data.* (but d_model, seed, cache_dir, num_workers, eval_batch_size,
            compile), the trainer's length/optimisation keys and any optimizer/lr_scheduler. Comparing the resolved
            config, not the command line, catches an edited recipe file too; an option that one side lacks (added
            to widthlab since) is read at its default and not compared.
        compare: defaults for `python -m train compare` on this sweep (e.g. {loss: val_loss_best, min_width: 16}),
            written with the sweep's parameters to <sweep>/sweep.json (and <archive>/sweep.json)

    Returns:
        the path of results.csv
    """
    root = os.path.join(out_dir, name)
    points = plan(recipe, widths, seeds, arms or {}, overrides or {}, root)
    if only is not None:
        unknown = sorted(set(only) - {p.arm for p in points})
        if unknown:
            raise WidthlabError(f"--only names unknown arms {unknown}; the sweep's arms are "
                                f"{list(dict.fromkeys(p.arm for p in points))}")
    run_points = [p for p in points if only is None or p.arm in only]
    if dry_run:
        for p in run_points:
            print("python -m train " + " ".join(p.args))
        return os.path.join(root, "results.csv")
    configs = validate(run_points)
    n_archived = check_archive(archive, run_points, configs) if archive is not None else 0
    os.makedirs(root, exist_ok=True)
    spec = {"name": name, "recipe": recipe, "widths": widths, "seeds": seeds, "arms": arms or {"baseline": {}},
            "overrides": overrides or {}, "compare": compare}
    for d in [root] + ([archive] if archive is not None else []):
        os.makedirs(d, exist_ok=True)
        write_json_atomic(os.path.join(d, "sweep.json"), spec)
    # Results need no training from here on. `lock`: several runs (one per GPU) may finish at the same time.
    lock = threading.Lock()

    def finished(p: Point) -> bool:
        return os.path.isfile(os.path.join(p.run_dir, "metrics.json")) or (archive is not None and os.path.isfile(
            os.path.join(archive_dir(archive, p.arm, p.width, p.seed), "metrics.json")))

    def record(new: list[Point]) -> str:
        with lock:
            if archive is not None:
                for p in new:
                    if os.path.isfile(os.path.join(p.run_dir, "metrics.json")):
                        copy_run(p.run_dir, archive_dir(archive, p.arm, p.width, p.seed))
                write_archive_results(archive)
            return write_results(root, collect(root, points, archive))

    # Runs finished here before the archive existed (or on this machine only) go into it now.
    record([p for p in run_points if archive is not None and os.path.isfile(os.path.join(p.run_dir, "metrics.json"))
            and not os.path.isfile(os.path.join(archive_dir(archive, p.arm, p.width, p.seed), "metrics.json"))])
    if coord_check:  # plain dicts (not instantiated objects) travel to the recipe parser, as for the runs
        from widthlab.coord_check import coord_check as run_coord_check
        for arm, ov in (arms or {"baseline": {}}).items():
            if only is not None and arm not in only:
                continue
            run_coord_check(recipe=recipe, widths=widths, steps=5, seed=seeds[0],
                            out=os.path.join(root, arm, "coord_check"), overrides={**(overrides or {}), **(ov or {})})
    todo = [p for p in run_points if not finished(p)]
    print(f"sweep {name}: {len(run_points)} runs, {len(run_points) - len(todo)} already finished"
          + (f" ({n_archived} in the archive {archive})" if archive is not None else ""), flush=True)
    import torch

    n_dev = devices or max(1, torch.cuda.device_count())
    failed: list[str] = []

    def work(i_p):
        i, p = i_p
        t = time.time()
        cpu_threads = max(1, (os.cpu_count() or 1) // n_dev) if not torch.cuda.is_available() and n_dev > 1 else None
        rc = _run_one(p, i % n_dev if torch.cuda.device_count() > 1 else None, cpu_threads)
        record([p])
        status = "done" if rc == 0 else f"FAILED (exit {rc}, see {p.run_dir}/stdout.log)"
        if rc:
            failed.append(p.run_dir)
        elif (m := _metrics(p.run_dir)).get("status") == "diverged":  # a result, recorded as such: go on
            status = f"diverged at step {m.get('diverged_step')}"
        print(f"[{i + 1}/{len(todo)}] {p.arm} d={p.width} seed={p.seed}: {status} in {time.time() - t:.0f}s",
              flush=True)

    with ThreadPoolExecutor(max_workers=n_dev) as ex:
        list(ex.map(work, enumerate(todo)))
    path = record([])
    # One chart per metric with every run of the sweep in it (TensorBoard's CUSTOM SCALARS tab).
    write_sweep_layout(root, list(dict.fromkeys(p.arm for p in points)))
    if failed:
        raise WidthlabError(f"{len(failed)} run(s) failed, e.g. {failed[0]}; read its stdout.log, fix, and re-run "
                            "the same sweep command to resume")
    print(f"results: {path}" + (f" (archived in {archive}: commit it)" if archive is not None else "")
          + f"\nnext: python -m train compare {root}")
    return path


def _metrics(run_dir: str) -> dict:
    fn = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(fn):
        return {}
    with open(fn) as f:
        return json.load(f)
