"""`python -m train sweep`: one fit recipe at many widths × arms × seeds, resumable.

Each point is an ordinary `python -m train fit` in its own process and directory,
`runs/<sweep>/<arm>/d<width>/s<seed>/`; an arm is a named set of dotted recipe overrides (interventions included).
`results.csv` is rebuilt from the runs' metrics.json after every run, so a killed sweep never loses or doubles a row:
re-running it skips finished runs and resumes interrupted ones from their last checkpoint.
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import yaml

from widthlab import WidthlabError


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
                        "--trainer.enable_progress_bar", "false"]
                for k, v in {**overrides, **(ov or {})}.items():
                    args += _flag(k, v)
                points.append(Point(arm, w, s, run_dir, args))
    return points


def validate(points: list[Point]) -> None:
    """Before any training: parse each arm's first point with --print_config (an unknown key or a bad value fails),
    then build its model at every width, so an intervention's own checks (a nonsensical value, a head swap on a tied
    model, a matrix that does not exist) fail here too, not minutes into the sweep."""
    from widthlab.cli import _widthlab_cause
    from widthlab.lightning_cli import run_lightning_cli

    widths: dict[str, list[int]] = {}
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
        _build_models(p.arm, yaml.safe_load(out.getvalue()) or {}, widths.pop(p.arm))


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


def collect(root: str, points: list[Point]) -> list[dict]:
    """Every finished run of the sweep directory: this invocation's points first, then any other
    <arm>/d<width>/s<seed>/ run already there, so narrowing --widths, --seeds or --only never drops a row."""
    found = [(p.arm, p.width, p.seed, p.run_dir) for p in points]
    planned = {os.path.normpath(d) for *_, d in found}
    for fn in sorted(glob.glob(os.path.join(root, "*", "d*", "s*", "metrics.json"))):
        d = os.path.dirname(fn)
        arm, w, s = os.path.relpath(d, root).split(os.sep)
        if os.path.normpath(d) not in planned and w[1:].isdigit() and s[1:].lstrip("-").isdigit():
            found.append((arm, int(w[1:]), int(s[1:]), d))
    rows = []
    for arm, width, seed, run_dir in found:
        fn = os.path.join(run_dir, "metrics.json")
        if os.path.isfile(fn):
            with open(fn) as f:
                m = json.load(f)
            rows.append({"arm": arm, "seed": seed, "run_dir": os.path.relpath(run_dir, root), **m, "d_model": width})
    return rows


def write_results(root: str, rows: list[dict]) -> str:
    path = os.path.join(root, "results.csv")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    os.replace(tmp, path)
    return path


def _run_one(p: Point, device: int | None) -> int:
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
    with open(os.path.join(p.run_dir, "stdout.log"), "a") as log:
        return subprocess.run([sys.executable, "-m", "train", *args], env=env, stdout=log,
                              stderr=subprocess.STDOUT).returncode


def sweep(*, recipe: str, widths: list[int], seeds: list[int] = [0], arms: dict[str, dict] | None = None,
          overrides: dict | None = None, name: str = "sweep", out_dir: str = "runs",
          dry_run: bool = False, devices: int | None = None, coord_check: bool = False,
          only: list[str] | None = None) -> str:
    """Run a fit recipe at every width × arm × seed; resumable.

    Args:
        recipe: the fit recipe (a LightningCLI YAML) every point starts from
        widths: d_model values (multiples of model.head_dim)
        seeds: seeds; each sets seed_everything and data.seed
        arms: arm name → dotted recipe overrides, e.g. {"bigram": {"model.interventions": [...]}}; default one "baseline"
        overrides: dotted overrides applied to every arm (e.g. trainer.max_steps)
        name: sweep name; runs go to <out_dir>/<name>/<arm>/d<width>/s<seed>/
        out_dir: parent directory of the sweep
        dry_run: print the commands and exit
        devices: parallel runs, one per GPU (default: the number of visible GPUs, or 1 on CPU)
        coord_check: first run a μP coordinate check per arm (a few steps per width) into <sweep>/<arm>/coord_check
        only: run just these arms now (results.csv still lists every finished run of the sweep)

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
    validate(run_points)
    os.makedirs(root, exist_ok=True)
    if coord_check:  # plain dicts (not instantiated objects) travel to the recipe parser, as for the runs
        from widthlab.coord_check import coord_check as run_coord_check
        for arm, ov in (arms or {"baseline": {}}).items():
            if only is not None and arm not in only:
                continue
            run_coord_check(recipe=recipe, widths=widths, steps=5, seed=seeds[0],
                            out=os.path.join(root, arm, "coord_check"), overrides={**(overrides or {}), **(ov or {})})
    todo = [p for p in run_points if not os.path.isfile(os.path.join(p.run_dir, "metrics.json"))]
    print(f"sweep {name}: {len(run_points)} runs, {len(run_points) - len(todo)} already finished", flush=True)
    import torch

    n_dev = devices or max(1, torch.cuda.device_count())
    failed: list[str] = []

    def work(i_p):
        i, p = i_p
        t = time.time()
        rc = _run_one(p, i % n_dev if torch.cuda.device_count() > 1 else None)
        rows = collect(root, points)
        write_results(root, rows)
        status = "done" if rc == 0 else f"FAILED (exit {rc}, see {p.run_dir}/stdout.log)"
        if rc:
            failed.append(p.run_dir)
        print(f"[{i + 1}/{len(todo)}] {p.arm} d={p.width} seed={p.seed}: {status} in {time.time() - t:.0f}s",
              flush=True)

    with ThreadPoolExecutor(max_workers=n_dev) as ex:
        list(ex.map(work, enumerate(todo)))
    path = write_results(root, collect(root, points))
    if failed:
        raise WidthlabError(f"{len(failed)} run(s) failed, e.g. {failed[0]}; read its stdout.log, fix, and re-run "
                            "the same sweep command to resume")
    print(f"results: {path}\nnext: python -m train compare {root}")
    return path
