"""`sweep --launcher submitit-local|slurm`: each point a submitit job running the same fit. No cluster here, so the
jobs run through submitit's local executor (a killed job, a resubmission, a pre-emption with requeue), and the
SLURM path is checked up to sbatch with a stand-in sbatch that records the script it is given."""
import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import lightning as L
import pytest
import yaml

import widthlab.launchers as launchers
from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.sweep import sweep

TESTS = os.path.dirname(os.path.abspath(__file__))
DOC = "docs/multi_device.md"


class KillJobAt(L.Callback):
    """A node dying under one point: at `step`, SIGKILL the job (the fit's parent) and the fit, nothing cleaned up."""

    def __init__(self, step: int, point: str):
        self.step, self.point = step, point

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and trainer.default_root_dir.endswith(self.point):
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


class PreemptAt(L.Callback):
    """SLURM pre-empting the job once: at `step`, the pre-emption signal to the job and to the fit (as SLURM
    signals every process of the job step); `marker` makes it happen once."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getppid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR2)  # ignored by the fit: the job handles it


class HoldUntil(L.Callback):
    """Keeps a job running until `marker` exists, so a second `sweep` call finds it in flight."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_train_start(self, trainer, pl_module):
        t = time.time()
        while not os.path.exists(self.marker) and time.time() - t < 120:
            time.sleep(0.2)


def tiny(cache, steps=6) -> dict:
    return {"trainer.max_steps": steps, "trainer.val_check_interval": 3, "trainer.log_every_n_steps": 1,
            "trainer.enable_model_summary": "false", "model.n_layer": 1, "model.warmup_steps": 2,
            "data.vocab_size": 512, "data.seq_len": 32, "data.batch_size": 4, "data.max_eval_tokens": 500,
            "data.cache_dir": str(cache), "overlap.every_n_steps": 3, "perf.every_n_steps": 3}


def rows(path) -> list[tuple]:
    with open(path) as f:
        return sorted((r["arm"], int(r["d_model"]), int(r["seed"]), int(r["steps"])) for r in csv.DictReader(f))


@pytest.fixture
def env(monkeypatch):
    # The fits are grandchildren (controller → job → fit): they need this directory on their path for the
    # callbacks above, and one torch thread each on a busy 2-core box.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_killed_job_is_recorded_and_a_resubmission_completes_it_once(env, tmp_path, cache_dir, capsys, monkeypatch):
    """2 widths as submitit-local jobs; the d64/s0 job is killed mid-run → recorded as failed with its
    logs, the others finish; the same sweep with --wait false resubmits only that point, and a third call finds
    it running (not submitted again), waits, and results.csv lists each point once."""
    kw = dict(recipe="recipes/smoke.yaml", widths=[32, 64], seeds=[0], name="cl", out_dir=str(tmp_path),
              launcher="submitit-local", devices=1)
    root = tmp_path / "cl"
    kill = [{"class_path": "test_launcher.KillJobAt", "init_args": {"step": 4, "point": "d64/s0"}}]
    with pytest.raises(WidthlabError, match=r"1 run\(s\) failed, e\.g\. .*d64/s0"):
        sweep(overrides={**tiny(cache_dir), "trainer.callbacks": kill}, **kw)
    out = capsys.readouterr().out
    assert re.search(r"baseline d=64 seed=0: FAILED \(the job ended without reporting: killed.*, see "
                     r".*d64/s0/stdout\.log and .*submitit/\d+_0_log\.out\)", out), out
    assert out.count(": done in") == 1
    book = json.loads((root / "submitit" / "jobs.json").read_text())
    assert sorted(book) == ["baseline/d32/s0", "baseline/d64/s0"]
    assert book["baseline/d64/s0"]["state"] == "failed" and book["baseline/d64/s0"]["error"]
    assert all(os.path.isfile(r["log"]) for r in book.values())
    assert rows(root / "results.csv") == [("baseline", 32, 0, 6)]
    killed = root / "baseline" / "d64" / "s0"
    assert (killed / "checkpoints" / "last.ckpt").exists() and not (killed / "metrics.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("baseline/d*/s*/metrics.json")}

    # Resubmit without waiting: only the killed point is submitted; it holds until the next call has seen it.
    go = tmp_path / "go"
    hold = [{"class_path": "test_launcher.HoldUntil", "init_args": {"marker": str(go)}}]
    sweep(overrides={**tiny(cache_dir), "trainer.callbacks": hold}, wait=False, **kw)
    out = capsys.readouterr().out
    assert "2 runs, 1 already finished" in out and "1 job(s) queued or running" in out
    job_id = json.loads((root / "submitit" / "jobs.json").read_text())["baseline/d64/s0"]["job_id"]
    assert job_id != book["baseline/d64/s0"]["job_id"]

    real = launchers._running

    def seen_then_release(job, engine):  # the job is found running before it is allowed to finish
        alive = real(job, engine)
        go.touch()
        return alive

    monkeypatch.setattr(launchers, "_running", seen_then_release)
    path = sweep(overrides={**tiny(cache_dir), "trainer.callbacks": hold}, **kw)
    out = capsys.readouterr().out
    assert f"1 point(s) already queued or running (jobs {job_id}): not submitted again" in out, out
    assert "[1/1] baseline d=64 seed=0: done" in out
    assert rows(path) == [("baseline", w, 0, 6) for w in (32, 64)]  # each point once, complete
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished points were not run again
    log = (killed / "stdout.log").read_text()
    assert "Restored all states from the checkpoint" in log  # resumed from the killed job's last.ckpt
    assert json.loads((root / "submitit" / "jobs.json").read_text())["baseline/d64/s0"]["state"] == "done"


def test_preempted_job_is_requeued_and_resumes(env, tmp_path, cache_dir, capsys):
    """The pre-emption signal mid-run: the job stops its fit, submitit requeues it, the fit resumes from
    last.ckpt (step 3) and finishes; no failure, one row."""
    marker = tmp_path / "preempted"
    pre = [{"class_path": "test_launcher.PreemptAt", "init_args": {"step": 4, "marker": str(marker)}}]
    path = sweep(recipe="recipes/smoke.yaml", widths=[32], name="pre", out_dir=str(tmp_path),
                 overrides={**tiny(cache_dir), "trainer.callbacks": pre}, launcher="submitit-local")
    assert marker.exists() and rows(path) == [("baseline", 32, 0, 6)]
    run = tmp_path / "pre" / "baseline" / "d32" / "s0"
    log = (run / "stdout.log").read_text()
    assert log.count("Received SIGTERM") >= 1 and "Restored all states from the checkpoint" in log, log
    (job,) = json.loads((tmp_path / "pre" / "submitit" / "jobs.json").read_text()).values()
    job_log = open(job["log"]).read()
    assert "Calling checkpoint method" in job_log and "Requeued job" in job_log, job_log


def _doc_recipe() -> dict:
    with open(DOC) as f:
        (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", f.read(), flags=re.S) if "launcher: slurm" in b]
    return yaml.safe_load(block)


def test_docs_slurm_recipe_submits_one_array_with_its_options(env, tmp_path, cache_dir, monkeypatch, capsys):
    """The recipe in docs/multi_device.md, run on a tiny fit recipe with a stand-in sbatch/srun: one sbatch call
    for the whole array, with the recipe's partition, account, GPUs, time and throttle; jobs.json maps each point
    to its array task; --wait false returns at once."""
    doc = _doc_recipe()
    assert doc["launcher"] == "slurm" and {"partition", "account", "gpus_per_run", "time_min"} <= set(doc["cluster"])
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_), os.environ["PATH"]]))
    sweep_yaml = tmp_path / "sweep.yaml"
    # the doc's fit recipe and its budget are GPU-sized: a tiny fixed-length fit stands in, one time limit for all
    sweep_yaml.write_text(yaml.safe_dump({**doc, "recipe": "recipes/smoke.yaml", "widths": [32, 64], "seeds": [0],
                                          "arms": None, "overrides": tiny(cache_dir), "out_dir": str(tmp_path),
                                          "archive": None, "budget": None, "plan": None,
                                          "cluster": {**doc["cluster"], "time_from_plan": False}}))
    main(["sweep", "--config", str(sweep_yaml), "--wait", "false"])
    script = (tmp_path / "script.sh").read_text()
    o = doc["cluster"]
    for line in [f"--partition={o['partition']}", f"--account={o['account']}", f"--gpus-per-node={o['gpus_per_run']}",
                 f"--time={o['time_min']}", f"--array=0-1%{min(2, o['array_parallelism'])}", "--signal=USR2@",
                 "--ntasks-per-node=1"]:
        assert f"#SBATCH {line}" in script, (line, script)
    assert all(s in script for s in o.get("setup", []))
    book = json.loads((tmp_path / doc["name"] / "submitit" / "jobs.json").read_text())
    assert {k: v["job_id"] for k, v in book.items()} == {"baseline/d32/s0": "4242_0", "baseline/d64/s0": "4242_1"}
    assert "submitted a SLURM array of 2 job(s)" in capsys.readouterr().out
    # sweep.json says which command made the sweep (compare's report quotes it)
    spec = json.loads((tmp_path / doc["name"] / "sweep.json").read_text())
    assert spec["command"] == f"python -m train sweep --config {sweep_yaml} --wait false"
    assert spec["launcher"] == "slurm"


def test_bad_launcher_inputs_fail_before_any_run(env, tmp_path, monkeypatch):
    kw = dict(recipe="recipes/smoke.yaml", widths=[32], name="bad", out_dir=str(tmp_path))
    with pytest.raises(WidthlabError, match="cluster: options and --wait false are for --launcher slurm"):
        sweep(cluster=launchers.ClusterOptions(partition="gpu"), **kw)
    with pytest.raises(WidthlabError, match="cluster: options and --wait false"):
        sweep(wait=False, **kw)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(WidthlabError, match="--launcher slurm needs sbatch and srun"):
        sweep(launcher="slurm", **kw)
    assert not (tmp_path / "bad").exists()


def test_local_sweep_does_not_import_submitit():
    code = "import sys, widthlab.sweep, widthlab.cli; assert 'submitit' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _stand_in_sbatch(tmp_path, monkeypatch):
    """sbatch that keeps every script it is given (script-1.sh, script-2.sh, ...) and answers job ids 100, 101, ..."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(f'#!/bin/sh\nn=$(ls {tmp_path}/script-*.sh 2>/dev/null | wc -l)\nn=$((n + 1))\n'
                                 f'cp "$1" {tmp_path}/script-$n.sh\necho "Submitted batch job $((99 + n))"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_), os.environ["PATH"]]))


def test_time_limits_follow_the_plan(env, tmp_path, cache_dir, monkeypatch, capsys):
    """cluster.time_from_plan: each point's --time is ceil(planned hours × 60 × margin), within the floor and the
    cap; one SLURM array per distinct limit. Planned hours here = tokens / the measured tokens/s per width."""
    import math

    from widthlab.plan import PlanOptions
    _stand_in_sbatch(tmp_path, monkeypatch)
    tokens = 6 * 4 * 32  # tiny(): 6 steps × batch 4 × seq 32
    tps = {32: tokens / (2 * 3600), 64: tokens / (5 * 3600), 96: tokens / (0.05 * 3600)}  # 2 h, 5 h, 3 min
    opts = launchers.ClusterOptions(partition="gpu", time_from_plan=True, time_margin=1.5, time_floor_min=20,
                                    time_max_min=400)
    kw = dict(recipe="recipes/smoke.yaml", widths=[32, 64, 96], seeds=[0], name="tl", out_dir=str(tmp_path),
              overrides=tiny(cache_dir), launcher="slurm", cluster=opts, plan=PlanOptions(tokens_per_sec=tps))
    want = {32: math.ceil(2 * 60 * 1.5), 64: 400, 96: 20}  # 180; 450 capped at 400; 4.5 raised to the floor
    assert want == {w: launchers.job_minutes(tokens / tps[w] / 3600, opts) for w in tps}
    sweep(dry_run=True, **kw)
    table = capsys.readouterr().out
    for w, m in want.items():
        assert re.search(rf"^baseline\s+{w}\s+0 .* {m} min\s*$", table, flags=re.M), (w, table)
    sweep(wait=False, **kw)
    scripts = sorted(tmp_path.glob("script-*.sh"))
    limits = sorted(int(re.search(r"#SBATCH --time=(\d+)", s.read_text()).group(1)) for s in scripts)
    assert limits == sorted(want.values())  # three limits: three arrays of one job each
    book = json.loads((tmp_path / "tl" / "submitit" / "jobs.json").read_text())
    assert len({v["job_id"] for v in book.values()}) == 3
    by_job = {v["job_id"].split("_")[0]: k for k, v in book.items()}
    for s in scripts:  # each array's script trains the point whose limit it carries
        job = str(99 + int(s.stem.split("-")[1]))
        w = int(by_job[job].split("/d")[1].split("/")[0])
        assert f"#SBATCH --time={want[w]}\n" in s.read_text()
    # without hours in the plan, limits cannot come from it
    with pytest.raises(WidthlabError, match="cluster.time_from_plan needs the plan's hours"):
        sweep(**{**kw, "plan": None, "name": "tl2"}, dry_run=True)
