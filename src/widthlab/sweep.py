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
would use (see `run_settings`), or the sweep refuses to start. An archive committed as results.csv alone has its
rows restored as the runs' metrics.json (widthlab.archive.restore_from_results) and continues the same way.

`--launcher slurm` hands each point to SLURM through submitit instead (one job per point, one job array per call,
requeued after pre-emption; `submitit-local` runs the same jobs on this machine): widthlab.launchers. The points,
their commands, the resume and the results collection are the same as here.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import glob
import io
import itertools
import json
import os
import queue
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from widthlab import WidthlabError, cli
from widthlab.tb_views import write_sweep_layout
from widthlab.archive import archive_dir, check_archive, copy_run, read_metrics, restore_from_results
from widthlab.callbacks.run_info import write_json_atomic
from widthlab.launchers import ClusterOptions, check_engine, run_jobs, start_fit


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


def arm_overrides(ov: dict | None) -> dict[str, Any]:
    """An arm's dotted recipe overrides: its entry in the sweep's arms, less its own `seeds`."""
    return {k: v for k, v in (ov or {}).items() if k != "seeds"}


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
    # An arm is a directory name (runs/<sweep>/<arm>/...) and a TensorBoard run-name filter; <sweep>/submitit/
    # holds the job logs of the submitit launchers.
    bad = [a for a in arms if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(a)) or a == "submitit"]
    if bad:
        raise WidthlabError(f"arm names {bad} are not safe directory names; use letters, digits, '_', '-' or '.' "
                            "(starting with a letter or digit; 'submitit' is taken by the job logs)")
    # An arm may list its own seeds (`seeds: [0, 1, 2]` beside its overrides): more seeds where an effect is small.
    arm_seeds = {arm: (ov or {}).get("seeds", seeds) for arm, ov in arms.items()}
    arms = {arm: arm_overrides(ov) for arm, ov in arms.items()}
    for arm, ss in arm_seeds.items():
        if not isinstance(ss, list) or not ss or len(set(ss)) != len(ss) or not all(isinstance(s, int) for s in ss):
            raise WidthlabError(f"arm {arm}: seeds must be a non-empty list of integers without repeats (got {ss})")
    for arm, ov in arms.items():
        head_dim = {**overrides, **(ov or {})}.get("model.head_dim", base.get("model", {}).get("head_dim", 32))
        bad = [w for w in widths if w % head_dim]
        if bad:
            raise WidthlabError(f"widths {bad} are not multiples of head_dim={head_dim} (arm {arm}); "
                                f"use multiples of {head_dim} or set model.head_dim")
    points = []
    for arm, ov in arms.items():
        for w in sorted(widths):
            for s in arm_seeds[arm]:
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

    model = copy.deepcopy(config.get("model") or {})  # instantiating turns the dicts in place into objects
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
            for arm, width, seed, run_dir in found if (m := read_metrics(run_dir))]


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


def _recorded_command(root: str, archive: str | None) -> str | None:
    """The command an earlier call recorded in sweep.json: a call from Python (no command line) keeps it."""
    for d in [root] + ([archive] if archive is not None else []):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(d, "sweep.json")) as f:
                if cmd := json.load(f).get("command"):
                    return cmd
    return None


def _run_one(p: Point, env: dict[str, str]) -> int:
    """The point's fit in a subprocess (resumed from last.ckpt if interrupted); its exit status."""
    proc = start_fit(p.run_dir, p.args, env)
    return 0 if proc is None else proc.wait()


def sweep(*, recipe: str, widths: list[int], seeds: list[int] = [0], arms: dict[str, dict] | None = None,
          overrides: dict | None = None, name: str = "sweep", out_dir: str = "runs",
          dry_run: bool = False, devices: int | None = None, coord_check: bool = False,
          only: list[str] | None = None, archive: str | None = None, compare: dict | None = None,
          launcher: Literal["local", "submitit-local", "slurm"] = "local", cluster: ClusterOptions | None = None,
          wait: bool = True) -> str:
    """Run a fit recipe at every width × arm × seed; resumable, and with `archive` resumable on another machine.

    Args:
        recipe: the fit recipe (a LightningCLI YAML) every point starts from
        widths: d_model values (multiples of model.head_dim)
        seeds: seeds; each sets seed_everything and data.seed
        arms: arm name → dotted recipe overrides, e.g. {"bigram": {"model.interventions": [...]}}; default one "baseline".
            An arm's own `seeds: [...]` among them replaces `seeds` for that arm
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
        launcher: local: subprocesses on this machine (`devices` at once); slurm: one SLURM job per point through
            submitit (pip install 'widthlab[cluster]'), requeued after pre-emption; submitit-local: the same jobs
            as processes here, to try a cluster sweep without a cluster. Job logs: <sweep>/submitit/
        cluster: the jobs' resources for slurm/submitit-local (partition, account, gpus_per_run, time_min, ...;
            see widthlab.launchers.ClusterOptions)
        wait: wait for the jobs and collect them; false: submit and return (slurm/submitit-local), and a later
            call of the same sweep waits for the jobs still queued or running, without submitting them again

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
    if launcher == "local" and (cluster is not None or not wait):
        raise WidthlabError("cluster: options and --wait false are for --launcher slurm or submitit-local; set "
                            "launcher: slurm in the sweep recipe, or drop them (--cluster null) to run here")
    if dry_run:
        for p in run_points:
            print("python -m train " + " ".join(p.args))
        if launcher != "local":
            o = cluster or ClusterOptions()
            print(f"{launcher}: one job per point, {o.gpus_per_run} GPU(s), {o.time_min} min each"
                  + (f", partition {o.partition}" if o.partition else ""))
        return os.path.join(root, "results.csv")
    if launcher != "local":
        check_engine(launcher)
    configs = validate(run_points)
    if archive is not None and (n := restore_from_results(archive)):
        print(f"{archive}: {n} point(s) listed in results.csv without their run dir, restored from their rows "
              "(no config.yaml: checked on the settings their metrics record)", flush=True)
    n_archived = check_archive(archive, run_points, configs) if archive is not None else 0
    os.makedirs(root, exist_ok=True)
    spec = {"name": name, "recipe": recipe, "widths": widths, "seeds": seeds, "arms": arms or {"baseline": {}},
            "overrides": overrides or {}, "compare": compare, "devices": devices, "launcher": launcher,
            "command": cli.INVOKED or _recorded_command(root, archive)}
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
                            out=os.path.join(root, arm, "coord_check"), overrides={**(overrides or {}), **arm_overrides(ov)})
    todo = [p for p in run_points if not finished(p)]
    print(f"sweep {name}: {len(run_points)} runs, {len(run_points) - len(todo)} already finished"
          + (f" ({n_archived} in the archive {archive})" if archive is not None else ""), flush=True)
    import torch

    n_gpu = torch.cuda.device_count()
    n_dev = devices or max(1, n_gpu)
    failed: list[str] = []
    done = itertools.count(1)

    def env_for(slot: int) -> dict[str, str]:
        """The environment of the runs in parallel slot `slot`: its GPU, or its share of the CPU cores (parallel
        CPU runs share the cores instead of each spinning up all of them)."""
        if n_gpu > 1:
            return {"CUDA_VISIBLE_DEVICES": str(slot % n_gpu)}
        if n_gpu == 0 and n_dev > 1:
            return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n_dev))}
        return {}

    def finish(p: Point, t0: float, why: str | None, logs: str) -> None:
        """A point's run has ended, one way or another: record it, and say how it went."""
        record([p])
        m = read_metrics(p.run_dir)
        status = "done"
        if not m:  # whatever the exit status said, a run without metrics.json did not finish
            failed.append(p.run_dir)
            status = f"FAILED ({why or 'no metrics.json'}, see {logs})"
        elif m.get("status") == "diverged":  # a result, recorded as such: go on
            status = f"diverged at step {m.get('diverged_step')}"
        print(f"[{next(done)}/{len(todo)}] {p.arm} d={p.width} seed={p.seed}: {status} in {time.time() - t0:.0f}s",
              flush=True)

    pending = 0
    if launcher == "local":
        slots: queue.Queue[int] = queue.Queue()
        for s in range(n_dev):
            slots.put(s)

        def work(p: Point) -> None:
            slot, t0 = slots.get(), time.time()  # a free slot, so two runs never share a GPU
            try:
                rc = _run_one(p, env_for(slot))
            finally:
                slots.put(slot)
            finish(p, t0, f"exit {rc}", f"{p.run_dir}/stdout.log")

        with ThreadPoolExecutor(max_workers=n_dev) as ex:
            list(ex.map(work, todo))
    else:
        pending = run_jobs(todo, root=root, engine=launcher, options=cluster or ClusterOptions(), wait=wait,
                           parallel=n_dev, env_for=env_for, finish=finish, name=name)
    path = record([])
    # One chart per metric with every run of the sweep in it (TensorBoard's CUSTOM SCALARS tab).
    write_sweep_layout(root, list(dict.fromkeys(p.arm for p in points)))
    if failed:
        raise WidthlabError(f"{len(failed)} run(s) failed, e.g. {failed[0]}; read its stdout.log, fix, and re-run "
                            "the same sweep command to resume")
    print(f"results{' so far' if pending else ''}: {path}"
          + (f" (archived in {archive}: commit it)" if archive is not None else "")
          + f"\nnext: python -m train compare {root}")
    return path
