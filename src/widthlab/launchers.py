"""Sweep points as jobs of an existing engine, submitit: SLURM job arrays on a cluster, its local executor here.

widthlab does not schedule: every point stays the same `python -m train fit` as with the local launcher (same
resume-from-last.ckpt, same run directory, same results collection in widthlab.sweep), and submitit does the
queueing, the job arrays, the logs and the requeue after pre-emption or time-out. What this module adds is small:
- FitJob, the picklable job: it starts the fit as a child process (output in <run_dir>/stdout.log) and, on
  submitit's pre-emption/time-out signal, stops the fit (SIGTERM: Lightning ends after the current batch) and
  asks submitit to requeue it; the next attempt finds checkpoints/last.ckpt and resumes with --ckpt_path last.
- ClusterOptions, the engine's options as they appear in a sweep recipe (`cluster:`), mapped to sbatch's.
- run_jobs: submit the unfinished points (one SLURM array per sweep call), wait, hand each finished job back to
  the sweep to record. The truth stays on disk: a point is done when its metrics.json exists, whatever the job
  said. <sweep>/submitit/jobs.json remembers which job trains which point, so a second `sweep` call (after
  --wait false, a lost login shell, or Ctrl-C) waits for jobs still queued or running instead of submitting them
  twice, and lists failed ones with their logs.
submitit is imported only here, and only when a submitit launcher is used (pip install 'widthlab[cluster]').
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from widthlab import WidthlabError

ENGINES = ("submitit-local", "slurm")


@dataclass
class ClusterOptions:
    """How each sweep point is submitted (sweep recipe key `cluster:`). One point = one job = one node.

    Args:
        partition: SLURM partition (sbatch --partition)
        account: SLURM account to charge (sbatch --account)
        qos: SLURM quality of service (sbatch --qos)
        constraint: SLURM node features, e.g. "a100|h100" (sbatch --constraint)
        gpus_per_run: GPUs per point (sbatch --gpus-per-node); a point with more than one trains with DDP on one
            node, Lightning starting the extra processes itself (trainer.devices auto, or set it to match)
        cpus_per_run: CPU cores per point (sbatch --cpus-per-task), for data loading
        mem_gb: memory per point in GB (sbatch --mem); null: the partition's default
        time_min: time limit per job in minutes (sbatch --time; also the submitit-local limit). A point that needs
            longer is stopped near the limit and requeued, resuming from its last checkpoint
        time_from_plan: each job's limit from its point's planned hours instead (the sweep's plan:), × time_margin,
            at least time_floor_min and at most time_max_min; one SLURM array per distinct limit
        time_margin: planned hours × this (the plan's MFU is a guess; validation and start-up are not in it)
        time_floor_min: the shortest limit time_from_plan asks for (start-up, data loading, compile)
        time_max_min: the longest (the partition's limit); a point planned longer is requeued from last.ckpt
        max_requeues: how many time-outs a point may be requeued after (pre-emptions are always requeued)
        signal_delay_s: seconds before the limit at which the job is signalled to stop and requeue
        array_parallelism: at most this many points of the sweep's job array run at once (the array's %N)
        setup: shell lines run before each job, e.g. ["module load cuda/12.4", "source .venv/bin/activate"]
        additional: any other sbatch option, e.g. {exclude: "node[01-02]", mail_type: FAIL}
    """
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: float | None = None
    time_min: int = 240
    time_from_plan: bool = False
    time_margin: float = 1.5
    time_floor_min: int = 15
    time_max_min: int | None = None
    max_requeues: int = 3
    signal_delay_s: int = 120
    array_parallelism: int = 64
    setup: list[str] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)


def job_minutes(hours: float | None, o: ClusterOptions) -> int:
    """A job's time limit: time_min, or with time_from_plan ceil(planned hours × 60 × margin) within
    [time_floor_min, time_max_min]."""
    if not o.time_from_plan or hours is None:
        return o.time_min
    m = max(o.time_floor_min, math.ceil(hours * 60 * o.time_margin))
    return m if o.time_max_min is None else min(m, o.time_max_min)


def slot_env(slot: int, n_gpu: int, n_dev: int, cpus: int | None = None) -> dict[str, str]:
    """The environment of the runs in parallel slot `slot` of `n_dev`: its GPU, round-robin (with share_gpu, several
    slots share one), and, where runs outnumber the GPUs (a CPU-only machine, or shared GPUs), its share of the CPU
    cores, so parallel runs do not each spin up all of them."""
    env = {}
    if n_gpu > 1 or (n_gpu == 1 and n_dev > 1):
        env["CUDA_VISIBLE_DEVICES"] = str(slot % n_gpu)
    if n_dev > max(1, n_gpu):
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // n_dev))
    return env


def start_fit(run_dir: str, args: list[str], env: dict[str, str] | None = None,
              ignore: signal.Signals | None = None) -> subprocess.Popen | None:
    """Start a point's `python -m train fit`, output appended to <run_dir>/stdout.log. An interrupted point resumes
    from checkpoints/last.ckpt; one started but never checkpointed starts clean; a finished one returns None."""
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        return None
    args = list(args)
    if os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt")):
        args += ["--ckpt_path", "last"]  # interrupted: continue exactly where it stopped
    elif os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # started but never checkpointed: nothing worth keeping
    os.makedirs(run_dir, exist_ok=True)
    # An ignored signal stays ignored across exec: the job's pre-emption signal reaches the whole job step on
    # SLURM, and it is FitJob, not the fit, that must handle it (a Python process would die of SIGUSR2).
    pre = (lambda: signal.signal(ignore, signal.SIG_IGN)) if ignore is not None else None
    with open(os.path.join(run_dir, "stdout.log"), "a") as log:
        return subprocess.Popen([sys.executable, "-m", "train", *args], env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=pre)


def _exited(proc: subprocess.Popen) -> bool:
    """Has the child exited? Asked without reaping it: in a signal handler the interrupted main thread may hold
    Popen's wait lock, and then poll() answers None whatever the child's state."""
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass
class FitJob:
    """One sweep point as a submitit job: the local launcher's fit, plus requeue on pre-emption (checkpoint())."""
    run_dir: str
    args: list[str]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    grace_s: int = 60  # how long a signalled fit gets to stop before it is killed

    def __call__(self) -> str:
        os.chdir(self.cwd)  # the sweep's paths (recipe, run_dir) are relative to where it was started
        # Lightning reads SLURM_* as "srun started one process per device" and would requeue the job itself on
        # SIGUSR1; here submitit owns requeueing and the fit is one process that starts its own DDP workers.
        # 'interactive' is Lightning's documented way out of its SLURM detection.
        env = {**self.env, "SLURM_JOB_NAME": "interactive"} if "SLURM_JOB_ID" in os.environ else self.env
        self._proc = start_fit(self.run_dir, self.args, env, ignore=_preempt_signal())
        if self._proc is None:
            return "already finished"
        while self._proc.poll() is None:
            time.sleep(1)
        log = os.path.join(self.run_dir, "stdout.log")
        if not os.path.isfile(os.path.join(self.run_dir, "metrics.json")):  # SIGTERM (scancel) ends with exit 0
            raise RuntimeError(f"python -m train fit ended with exit status {self._proc.returncode} and no "
                               f"metrics.json; see {log}")
        return "finished"

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on pre-emption or near the time limit: stop the fit, then requeue a fresh FitJob,
        which resumes from checkpoints/last.ckpt (steps since that checkpoint are trained again)."""
        from submitit.helpers import DelayedSubmission

        proc = getattr(self, "_proc", None)
        if proc is not None and not _exited(proc):
            proc.terminate()  # Lightning's SIGTERM handling: stop after the current batch, DDP workers too
            deadline = time.time() + self.grace_s
            while not _exited(proc) and time.time() < deadline:
                time.sleep(0.2)
            if not _exited(proc):
                proc.kill()
        return DelayedSubmission(FitJob(self.run_dir, self.args, self.cwd, self.env, self.grace_s))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}  # a running child does not pickle


def _preempt_signal() -> signal.Signals:
    # submitit's own rule (JobEnvironment.USR_SIG): SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise WidthlabError("the submitit launchers need submitit; pip install 'widthlab[cluster]' (or "
                            "pip install submitit), or use --launcher local") from None
    return submitit


def check_engine(engine: str) -> None:
    """Before any model is built: submitit is installed, and sbatch is here for --launcher slurm."""
    _submitit()
    if engine == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise WidthlabError("--launcher slurm needs sbatch and srun, which are not on this machine's PATH; run "
                            "the sweep on the cluster's login node, or try it here with --launcher submitit-local")


def make_executor(engine: str, folder: str, o: ClusterOptions, name: str):
    """A submitit executor writing its job files and logs (<job id>_0_log.out) to `folder`."""
    submitit = _submitit()
    check_engine(engine)
    if engine == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=o.max_requeues)
        sbatch = {"partition": o.partition, "account": o.account, "qos": o.qos, "constraint": o.constraint,
                  "mem": f"{o.mem_gb:g}GB" if o.mem_gb else None}
        ex.update_parameters(job_name=name, nodes=1, ntasks_per_node=1, gpus_per_node=o.gpus_per_run,
                             cpus_per_task=o.cpus_per_run, time=o.time_min, signal_delay_s=o.signal_delay_s,
                             array_parallelism=o.array_parallelism, setup=list(o.setup), stderr_to_stdout=True,
                             additional_parameters=dict(o.additional),
                             **{k: v for k, v in sbatch.items() if v is not None})
    else:  # the same jobs as processes on this machine: for trying a cluster sweep without a cluster
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=o.max_requeues)
        ex.update_parameters(timeout_min=o.time_min, signal_delay_s=o.signal_delay_s, stderr_to_stdout=True)
    return ex


def _key(p) -> str:
    return f"{p.arm}/d{p.width}/s{p.seed}"


# SLURM states of a job that is not over (sacct). PREEMPTED is left out: it is final where pre-emption cancels, and
# where it requeues, the job soon reads REQUEUED/PENDING, which a later `sweep` call sees (and does not resubmit).
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
           "RESIZING", "READY"}


def _running(job, engine: str) -> bool:
    if engine == "slurm":
        # SLURM's word, not the result file: an attempt that failed (scancel of a step, a pre-emption by SIGTERM)
        # leaves one behind while SLURM requeues the job. UNKNOWN: sacct does not know the job (yet, or any more).
        state = job.state.split()[0] if job.state else "UNKNOWN"
        return state in _ACTIVE or (state == "UNKNOWN" and not job.paths.result_pickle.exists())
    if getattr(job, "_process", None) is None:
        # A local job from an earlier `sweep` call: submitit only knows the processes it started itself, so ask
        # the OS whether its controller (job id = pid) still runs on this job folder.
        try:
            with open(f"/proc/{int(job.job_id)}/cmdline", "rb") as f:
                return str(job.paths.folder).encode() in f.read() and not job.paths.result_pickle.exists()
        except (OSError, ValueError):
            return False
    return not job.done()


def _why(job) -> str:
    """The job's own error, in one line (a FitJob failure, a job killed before it could report, a time-out...)."""
    from submitit.core.utils import UncompletedJobError

    try:
        job.result()
        return "the job reported success"
    except UncompletedJobError:  # no result file: the job's process died (its log's last line is submitit's)
        return f"the job ended without reporting: killed, out of memory or its node lost (state {job.state})"
    except Exception as e:  # noqa: BLE001 -- whatever the engine raises, it is a failed point to report
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return (lines[-1] if lines else type(e).__name__)[:300]


def run_jobs(todo: list, *, root: str, engine: str, options: ClusterOptions, wait: bool, parallel: int,
             env_for: Callable[[int], dict[str, str]], finish: Callable[..., None], name: str) -> int:
    """Submit every point of `todo` not already queued or running (as recorded in <root>/submitit/jobs.json), then,
    with `wait`, call finish(point, t0, why, logs) as each job ends. submitit-local runs at most `parallel` jobs
    at once (slot i gets env_for(i): its GPU or its share of the cores); SLURM gets one array and throttles it
    itself (array_parallelism). Returns how many points are still queued or running when this call returns."""
    from widthlab.callbacks.run_info import write_json_atomic

    submitit = _submitit()
    folder = os.path.join(root, "submitit")
    ex = make_executor(engine, folder, options, f"wl-{name}")
    book_path = os.path.join(folder, "jobs.json")
    book: dict[str, dict] = {}
    if os.path.isfile(book_path):
        with open(book_path) as f:
            book = json.load(f)
    cls = submitit.SlurmJob if engine == "slurm" else submitit.LocalJob
    live: dict[str, tuple[Any, Any, float, int | None]] = {}  # key -> (point, job, t0, local slot)
    fresh = []
    for p in todo:
        rec = book.get(_key(p))
        job = cls(folder, rec["job_id"]) if rec and rec["engine"] == engine else None
        if job is not None and _running(job, engine):
            live[_key(p)] = (p, job, time.time(), None)
        else:
            fresh.append(p)
    if live:
        ids = ", ".join(job.job_id for _, job, *_ in live.values())
        print(f"{len(live)} point(s) already queued or running (jobs {ids}): not submitted again", flush=True)
    grace = max(10, options.signal_delay_s // 2)
    cwd = os.getcwd()

    def submit(points: list, slot: int | None = None) -> None:
        env = env_for(slot) if slot is not None else {}
        minutes = job_minutes(getattr(points[0], "hours", None), options)  # one limit per call (per array)
        ex.update_parameters(**{"time" if engine == "slurm" else "timeout_min": minutes})
        if engine == "slurm":
            with ex.batch():  # one array: one sbatch call, one line in squeue
                jobs = [ex.submit(FitJob(p.run_dir, p.args, cwd, env, grace)) for p in points]
            print(f"submitted a SLURM array of {len(jobs)} job(s), {options.array_parallelism} at most at once, "
                  f"{minutes} min each (squeue --me); job logs in {folder}", flush=True)
        else:
            jobs = [ex.submit(FitJob(p.run_dir, p.args, cwd, env, grace)) for p in points]
        for p, job in zip(points, jobs):
            live[_key(p)] = (p, job, time.time(), slot)
            book[_key(p)] = {"job_id": job.job_id, "engine": engine, "state": "submitted",
                             "log": str(job.paths.stdout), "fit_log": os.path.join(p.run_dir, "stdout.log")}
        write_json_atomic(book_path, book)

    cap = len(fresh) if engine == "slurm" or not wait else max(1, parallel)
    if engine == "slurm" and fresh:
        # A SLURM array has one time limit: one array per distinct limit (per width, when it comes from the plan).
        groups: dict[int, list] = {}
        for p in fresh:
            groups.setdefault(job_minutes(getattr(p, "hours", None), options), []).append(p)
        for group in groups.values():
            submit(group)
        fresh = []
    try:
        while fresh or (wait and live):
            busy = {s for *_, s in live.values() if s is not None}
            while fresh and len(live) < cap:
                submit([fresh.pop(0)], min(set(range(cap)) - busy))
                busy = {s for *_, s in live.values() if s is not None}
            if not wait:
                break
            for key, (p, job, t0, _) in list(live.items()):
                if _running(job, engine):
                    continue
                del live[key]
                ok = os.path.isfile(os.path.join(p.run_dir, "metrics.json"))
                why = None if ok else _why(job)
                book[key].update(state="done" if ok else "failed", **({"error": why} if why else {}))
                write_json_atomic(book_path, book)
                finish(p, t0, why, f"{p.run_dir}/stdout.log and {book[key]['log']}")
            time.sleep(1 if engine == "submitit-local" else 20)
    except KeyboardInterrupt:
        raise WidthlabError(f"stopped waiting; {len(live)} job(s) keep running (jobs.json in {folder}): run the same "
                            "sweep command again to collect them") from None
    if not wait and live:
        print(f"{len(live)} job(s) queued or running; logs in {folder}. Run the same sweep command again to wait "
              "for them and collect the results (finished points are never re-run)", flush=True)
    return len(live)
