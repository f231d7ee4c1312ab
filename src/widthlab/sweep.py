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
import csv
import glob
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
from widthlab.launchers import ClusterOptions, check_engine, job_minutes, run_jobs, slot_env, start_fit
from widthlab.plan import Budget, PlanOptions, describe_rule, plan_rows, resolve, with_overrides
from widthlab.plan_table import table
from widthlab.selection_rule import confirm_arms
from widthlab.tuning import ARM_NAME, expand_grids, expand_only


@dataclass
class Point:
    arm: str
    width: int
    seed: int
    run_dir: str
    args: list[str]
    hours: float | None = None  # planned training hours (widthlab.plan), when the sweep has a plan:


def _flag(key: str, value: Any) -> list[str]:
    # Lists and dicts (interventions) travel as JSON, which jsonargparse reads as YAML.
    return [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]


def arm_overrides(ov: dict | None) -> dict[str, Any]:
    """An arm's dotted recipe overrides: its entry in the sweep's arms, less its own `seeds` and `grid`."""
    return {k: v for k, v in (ov or {}).items() if k not in ("seeds", "grid")}


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
    bad = [a for a in arms if not re.fullmatch(ARM_NAME, str(a)) or a == "submitit"]
    if bad:
        raise WidthlabError(f"arm names {bad} are not safe directory names; use letters, digits, '_', '-' or '.' "
                            "(starting with a letter or digit; 'submitit' is taken by the job logs)")
    arms = expand_grids(arms, overrides)  # an arm's grid: → one sub-arm per value, <arm>@<knob>=<value> (tuning.py)
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


_make_points = plan  # sweep()'s own `plan` argument (the cost options) hides this name inside it


def validate(points: list[Point]) -> dict[str, dict]:
    """Parse each arm and build its model at every width before any training (widthlab.plan.resolve); returns
    {arm: the resolved config of its first point} (what config.yaml of its runs will hold)."""
    return resolve(points)[0]


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


def _recorded(root: str, archive: str | None, key: str) -> Any:
    """What an earlier call recorded in sweep.json under `key`: a call from Python (no command line) keeps the
    command, and a call with fewer widths keeps the other widths' budgets."""
    for d in [root] + ([archive] if archive is not None else []):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(d, "sweep.json")) as f:
                if got := json.load(f).get(key):
                    return got
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
          wait: bool = True, budget: Budget | None = None, plan: PlanOptions | None = None,
          share_gpu: bool = False, select: dict | None = None) -> str:
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
        dry_run: print the plan (a table: params, FLOPs/token, tokens, tokens/param, FLOPs and hours per point, sums
            per arm and in total) and exit; offline, no data read
        devices: parallel runs: one per GPU (default: the number of visible GPUs), or on a CPU-only machine that
            many runs side by side with cores/devices threads each (default 1; 2 on a 2-core CPU gave 1.4× the
            tokens/s of one 2-thread run for d ≤ 128 models, docs/LOG.md). More than the GPUs is refused unless
            share_gpu
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
        budget: training tokens that follow the width (widthlab.plan.Budget), e.g. {tokens_per_param: 20, params:
            non_embedding, warmup_frac: 0.05}: sets each point's trainer.max_steps (and warm-up, validation cadence)
            from its own model's parameters; the rule and each point's settings go to sweep.json, where compare
            reads them
        plan: how the plan's hours are estimated (widthlab.plan.PlanOptions), e.g. {device: h100, mfu: 0.35}
        share_gpu: allow devices > visible GPUs: runs share GPUs round-robin (CUDA_VISIBLE_DEVICES per run)
        select: a confirmation sweep (widthlab.selection_rule): {from: <tuning archive>, rule: mean_loss, widths: [8, 24]}
            adds each idea's value chosen from the tuning runs of its grid: as an arm, run on these (fresh) seeds;
            these seeds and widths are recorded with the selection, and a later call with others is refused

    Returns:
        the path of results.csv
    """
    root = os.path.join(out_dir, name)
    chosen = confirm_arms(select, arms, seeds, recipe, overrides, _recorded(root, archive, "select"), widths) \
        if select else None
    if chosen:  # a confirmation sweep: its own arms and each idea's value selected from the tuning runs
        arms = chosen.arms
        print("\n".join(chosen.notes), flush=True)
    points = _make_points(recipe, widths, seeds, arms or {}, overrides or {}, root)
    if only is not None:
        only = expand_only(only, [p.arm for p in points])  # an idea's name stands for its grid's sub-arms
        unknown = sorted(set(only) - {p.arm for p in points})
        if unknown:
            raise WidthlabError(f"--only names unknown arms {unknown}; the sweep's arms are "
                                f"{list(dict.fromkeys(p.arm for p in points))}")
    run_points = [p for p in points if only is None or p.arm in only]

    def finished(p: Point) -> bool:
        return os.path.isfile(os.path.join(p.run_dir, "metrics.json")) or (archive is not None and os.path.isfile(
            os.path.join(archive_dir(archive, p.arm, p.width, p.seed), "metrics.json")))

    if launcher == "local" and (cluster is not None or not wait):
        raise WidthlabError("cluster: options and --wait false are for --launcher slurm or submitit-local; set "
                            "launcher: slurm in the sweep recipe, or drop them (--cluster null) to run here")
    if budget is not None:
        budget.check(widths)
        given = {**(overrides or {}), **{k: v for ov in (arms or {}).values() for k, v in arm_overrides(ov).items()}}
        if clash := [k for k in budget.keys() if k in given]:
            raise WidthlabError(f"budget: sets {clash[0]} for each width; drop it from the sweep's overrides/arms")
    if plan is not None:
        plan.check(widths)
    opts = cluster or ClusterOptions()
    import torch

    n_gpu = torch.cuda.device_count()
    n_dev = devices or max(1, n_gpu)
    if launcher != "slurm" and n_gpu and n_dev > n_gpu and not share_gpu:
        raise WidthlabError(f"devices: {n_dev} runs at once, but this machine has {n_gpu} GPU(s); set devices: "
                            f"{n_gpu}, or share_gpu: true to put several (small) runs on each GPU")
    configs, costs = resolve(run_points)
    rows = plan_rows(run_points, configs, costs, budget, plan, launcher, opts.gpus_per_run)
    if launcher != "local" and opts.time_from_plan and any(r.hours is None for r in rows):
        raise WidthlabError("cluster.time_from_plan needs the plan's hours: give plan: {device: h100, mfu: 0.35} "
                            "(or plan.tokens_per_sec) and a trainer.max_steps or budget:")
    for p, r in zip(run_points, rows):
        p.args += [a for k, v in r.overrides.items() for a in _flag(k, v)]
        p.hours, r.done = r.hours, finished(p)
        r.limit_min = job_minutes(r.hours, opts) if launcher != "local" and opts.time_from_plan else None
    if dry_run:
        print(f"plan of sweep {name}: {len(rows)} runs of {recipe}"
              + (f"; budget: {describe_rule(budget.rule())}" if budget is not None else "")
              + f"\n{(plan.describe() if plan else None) or 'hours: give plan: {device: h100, mfu: 0.35}'}")
        print(table(rows, budget.params.replace("_embedding", "-emb") if budget is not None else "total"))
        if run_points:
            print(f"first of {len(run_points)} fit commands: python -m train " + " ".join(run_points[0].args))
        if launcher != "local":
            print(f"{launcher}: one job per point, {opts.gpus_per_run} GPU(s), "
                  + ("time limits from the plan (limit column)" if opts.time_from_plan else f"{opts.time_min} min each")
                  + (f", partition {opts.partition}" if opts.partition else ""))
        return os.path.join(root, "results.csv")
    if launcher != "local":
        check_engine(launcher)
    if archive is not None and (n := restore_from_results(archive)):
        print(f"{archive}: {n} point(s) listed in results.csv without their run dir, restored from their rows "
              "(no config.yaml: checked on the settings their metrics record)", flush=True)
    # Each point against its own settings: a budget gives every width its own length.
    n_archived = sum(check_archive(archive, [p], {p.arm: with_overrides(configs[p.arm], r.overrides)})
                     for p, r in zip(run_points, rows)) if archive is not None else 0
    os.makedirs(root, exist_ok=True)
    spec = {"name": name, "recipe": recipe, "widths": widths, "seeds": seeds, "arms": arms or {"baseline": {}},
            "overrides": overrides or {}, "compare": compare, "devices": devices, "launcher": launcher,
            "command": cli.INVOKED or _recorded(root, archive, "command")}
    if chosen:  # what was selected, so a fresh clone confirms the same values
        spec["select"] = chosen.record
    if budget is not None:  # the rule, and each point's settings by it (merged over calls: --only, fewer widths)
        old = _recorded(root, archive, "budget") or {}
        got = {f"{r.arm}/d{r.width}": {**r.overrides, "tokens": r.tokens, "tokens_per_param": r.tokens / r.per_param}
               for r in rows}
        keep = old.get("points", {}) if old.get("rule") == budget.rule() else {}
        spec["budget"] = {"rule": budget.rule(), "points": {**keep, **got}}
    for d in [root] + ([archive] if archive is not None else []):
        os.makedirs(d, exist_ok=True)
        write_json_atomic(os.path.join(d, "sweep.json"), spec)
    # Results need no training from here on. `lock`: several runs (one per GPU) may finish at the same time.
    lock = threading.Lock()

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
    failed: list[str] = []
    done = itertools.count(1)

    def env_for(slot: int) -> dict[str, str]:  # its GPU (shared with share_gpu), or its share of the cores
        return slot_env(slot, n_gpu, n_dev)

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
            slot, t0 = slots.get(), time.time()  # a free slot: runs share a GPU only with share_gpu
            try:
                rc = _run_one(p, env_for(slot))
            finally:
                slots.put(slot)
            finish(p, t0, f"exit {rc}", f"{p.run_dir}/stdout.log")

        with ThreadPoolExecutor(max_workers=n_dev) as ex:
            list(ex.map(work, todo))
    else:
        pending = run_jobs(todo, root=root, engine=launcher, options=opts, wait=wait,
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
