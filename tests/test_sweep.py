"""`sweep` end to end with real (tiny) fit subprocesses: one results.csv row per run, resume after a kill, bad input
rejected before any run directory exists, `compare` on the result, and an archive that outlives the sweep dir."""
import csv
import json
import math
import os
import shutil

import pytest
import yaml

from widthlab import WidthlabError
from widthlab.archive import run_settings, settings_differ
from widthlab.scaling.report import compare
from widthlab.sweep import plan, sweep

TESTS = os.path.dirname(os.path.abspath(__file__))
ZLOSS = [{"class_path": "widthlab.interventions.logits.ZLoss", "init_args": {"coef": 1e-3}}]
# Simulates a sweep killed mid-run: the zloss points die after step 4, i.e. after their step-3 checkpoint.
CRASH = [{"class_path": "helpers.CrashAt", "init_args": {"step": 4}}]


def tiny(cache) -> dict:
    return {"trainer.max_steps": 6, "trainer.val_check_interval": 3, "trainer.log_every_n_steps": 1,
            "trainer.enable_model_summary": "false", "model.n_layer": 1, "model.warmup_steps": 2,
            "data.vocab_size": 512, "data.seq_len": 32, "data.batch_size": 4, "data.max_eval_tokens": 2000,
            "data.cache_dir": str(cache), "overlap.every_n_steps": 3, "perf.every_n_steps": 3}


def rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        # The fits are subprocesses: they need helpers.CrashAt on their path, and one torch thread each
        # (two threads on a busy 2-core box oversubscribe and crawl).
        mp.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def swept(env, tmp_path_factory, cache_dir):
    """A 2-width × 2-arm sweep whose zloss arm is killed mid-run, then re-run to completion."""
    out = tmp_path_factory.mktemp("sweeps")
    kw = dict(recipe="recipes/smoke.yaml", seeds=[0], name="tiny", out_dir=str(out), overrides=tiny(cache_dir))
    with pytest.raises(WidthlabError, match="2 run"):
        sweep(widths=[32, 64], arms={"baseline": {}, "zloss": {"model.interventions": ZLOSS,
                                                              "trainer.callbacks": CRASH}}, **kw)
    root = out / "tiny"
    first = rows(root / "results.csv")
    done = {w: os.stat(root / "baseline" / f"d{w}" / "s0" / "metrics.json").st_mtime_ns for w in (32, 64)}
    killed = [(root / "zloss" / f"d{w}" / "s0") for w in (32, 64)]
    state = [(d / "checkpoints" / "last.ckpt").exists() and not (d / "metrics.json").exists() for d in killed]
    arms = {"baseline": {}, "zloss": {"model.interventions": ZLOSS}}
    path = sweep(widths=[32, 64], arms=arms, **kw)
    return {"root": root, "kw": kw, "arms": arms, "first": first, "done": done, "killed": killed, "state": state,
            "path": path}


def test_killed_sweep_resumes_and_keeps_one_row_per_run(swept):
    root = swept["root"]
    # After the kill: the finished baseline runs have rows, the killed ones a checkpoint but no metrics.json.
    assert sorted((r["arm"], r["d_model"]) for r in swept["first"]) == [("baseline", "32"), ("baseline", "64")]
    assert swept["state"] == [True, True]
    # After the re-run: exactly one row per run, all trained to max_steps.
    final = rows(swept["path"])
    assert swept["path"] == str(root / "results.csv")
    assert sorted((r["arm"], int(r["d_model"]), r["seed"]) for r in final) == [
        ("baseline", 32, "0"), ("baseline", 64, "0"), ("zloss", 32, "0"), ("zloss", 64, "0")]
    assert all(int(r["steps"]) == 6 and int(r["tokens"]) == 6 * 4 * 32 for r in final)
    assert all(float(r["val_loss"]) > 0 for r in final)
    assert all(("ZLoss" in r["interventions"]) == (r["arm"] == "zloss") for r in final)
    # Finished runs were skipped (metrics.json untouched), killed ones resumed from their checkpoint.
    for w, mtime in swept["done"].items():
        assert os.stat(root / "baseline" / f"d{w}" / "s0" / "metrics.json").st_mtime_ns == mtime
    for d in swept["killed"]:
        log = (d / "stdout.log").read_text()
        assert "simulated crash at step 4" in log and "Restored all states from the checkpoint" in log
    # A third run of the same command changes nothing.
    sweep(widths=[32, 64], arms=swept["arms"], **swept["kw"])
    assert rows(swept["path"]) == final


@pytest.mark.parametrize("widths, arms, match", [
    ([], {}, "no widths"),
    ([32, 64, 32], {}, "duplicate widths"),
    ([32, 48], {}, r"widths \[48\] are not multiples of head_dim=32"),
    ([32], {"a/b": {}, "ok": {}}, r"arm names \['a/b'\] are not safe directory names"),
    ([32], {"..": {}}, r"arm names \['\.\.'\] are not safe"),
    ([32], {"few": {"seeds": []}}, "arm few: seeds must be a non-empty list"),
    ([32], {"twice": {"seeds": [1, 1]}}, "arm twice: seeds must be .* without repeats"),
    ([32, 64], {"baseline": {}, "typo": {"model.no_such_knob": 1}}, "arm 'typo'"),
    ([32, 64], {"bad_iv": {"model.interventions": [{"class_path": "widthlab.interventions.NoSuchIdea"}]}},
     "arm 'bad_iv'"),
    # caught by building each arm's model before any run: an intervention's own checks
    ([32, 64], {"neg": {"model.interventions": [{"class_path": "widthlab.interventions.BigramHashEmbedding",
                                                  "init_args": {"table_size": -5}}]}}, "arm 'neg'.*table_size"),
    ([32, 64], {"tied": {"model.tie_embeddings": True, "model.interventions": [
        {"class_path": "widthlab.interventions.WideHead", "init_args": {"width": 64}}]}}, "arm 'tied'.*tie_embeddings"),
])
def test_bad_input_fails_before_any_run_dir(tmp_path, cache_dir, widths, arms, match):
    with pytest.raises(WidthlabError, match=match):
        sweep(recipe="recipes/smoke.yaml", widths=widths, arms=arms, name="bad", out_dir=str(tmp_path),
              overrides=tiny(cache_dir))
    assert not (tmp_path / "bad").exists()


def test_an_arm_may_have_its_own_seeds(tmp_path):
    # A third seed for one arm only: that arm's points gain it, the others keep the sweep's seeds, and `seeds`
    # never reaches the fit's command line as an override.
    arms = {"baseline": {}, "more": {"seeds": [0, 1, 2], "model.dropout": 0.0}}
    points = plan("recipes/smoke.yaml", [32, 64], [0, 1], arms, {}, str(tmp_path))
    got = {(p.arm, p.width, p.seed) for p in points}
    assert got == {("baseline", w, s) for w in (32, 64) for s in (0, 1)} | {("more", w, s) for w in (32, 64)
                                                                             for s in (0, 1, 2)}
    assert all("--seeds" not in p.args and "seeds" not in p.args for p in points)
    assert all(p.args[p.args.index("--model.dropout") + 1] == "0.0" for p in points if p.arm == "more")
    assert arms["more"]["seeds"] == [0, 1, 2]  # the caller's dict (sweep.json records it) is left as given


def test_compare_on_a_three_width_sweep(swept, tmp_path):
    # Widening the same sweep runs only the new width; compare needs >= 3 baseline widths to fit L(m).
    # First --only baseline: results.csv still lists the other arm's finished runs, but not its new width.
    with pytest.raises(WidthlabError, match=r"unknown arms \['nope'\]"):
        sweep(widths=[32, 64, 96], arms=swept["arms"], only=["nope"], **swept["kw"])
    path = sweep(widths=[32, 64, 96], arms=swept["arms"], only=["baseline"], **swept["kw"])
    assert sorted((r["arm"], int(r["d_model"])) for r in rows(path)) == [
        ("baseline", 32), ("baseline", 64), ("baseline", 96), ("zloss", 32), ("zloss", 64)]
    path = sweep(widths=[32, 64, 96], arms=swept["arms"], **swept["kw"])
    final = rows(path)
    assert sorted((r["arm"], int(r["d_model"])) for r in final) == [
        (a, w) for a in ("baseline", "zloss") for w in (32, 64, 96)]
    # A narrower invocation (one width, one arm) keeps listing every finished run of the sweep directory.
    key = lambda r: (r["arm"], int(r["d_model"]))  # noqa: E731
    narrow = rows(sweep(widths=[32], arms=swept["arms"], only=["zloss"], **swept["kw"]))
    assert sorted(narrow, key=key) == sorted(final, key=key)
    res = compare(str(swept["root"]), include_limited=True, n_boot=50, out=str(tmp_path / "report"))
    for f in res["files"]:
        assert (tmp_path / "report" / f).stat().st_size > 0, f
    assert "report.md" in res["files"] and any(f.endswith(".png") for f in res["files"])
    assert "zloss" in (tmp_path / "report" / "report.md").read_text()


def _points(rs) -> list[tuple]:
    return sorted((r["arm"], int(r["d_model"]), int(r["seed"])) for r in rs)


def test_archive_outlives_the_sweep_dir(env, tmp_path, cache_dir, capsys):
    """2 widths × 2 seeds into an archive; runs/ deleted (a fresh clone) → nothing re-trained, every point listed
    once; a third seed → only its two points run; a sweep with other settings is refused before anything runs."""
    out, archive = tmp_path / "runs", tmp_path / "repo" / "docs" / "results" / "ar"
    ov = {**tiny(cache_dir), "trainer.max_steps": 2, "trainer.val_check_interval": 2, "data.max_eval_tokens": 500}
    kw = dict(recipe="recipes/smoke.yaml", widths=[32, 64], name="ar", out_dir=str(out), overrides=ov,
              archive=str(archive), compare={"loss": "val_loss_best", "min_width": 32})
    root = out / "ar"
    sweep(seeds=[0, 1], **kw)
    four = [("baseline", w, s) for w in (32, 64) for s in (0, 1)]
    first = rows(root / "results.csv")
    assert _points(first) == _points(rows(archive / "results.csv")) == four
    for _, w, s in four:
        assert sorted(os.listdir(archive / "runs" / "baseline" / f"d{w}" / f"s{s}")) == ["config.yaml", "metrics.json"]
    assert {r["run_dir"] for r in rows(archive / "results.csv")} == {f"runs/baseline/d{w}/s{s}" for _, w, s in four}
    spec = json.loads((root / "sweep.json").read_text())
    assert spec == json.loads((archive / "sweep.json").read_text())
    assert spec == {"name": "ar", "recipe": "recipes/smoke.yaml", "widths": [32, 64], "seeds": [0, 1],
                    "arms": {"baseline": {}}, "overrides": ov, "compare": {"loss": "val_loss_best", "min_width": 32},
                    "devices": None, "launcher": "local", "command": None}  # called from Python: no command line
    capsys.readouterr()

    # a command recorded by the command line survives a later call from Python (which has none to record)
    (archive / "sweep.json").write_text(json.dumps({**spec, "command": "python -m train sweep --config ar.yaml"}))
    shutil.rmtree(root)  # a fresh machine: only the committed archive is left
    sweep(seeds=[0, 1], **kw)
    assert json.loads((archive / "sweep.json").read_text())["command"] == "python -m train sweep --config ar.yaml"
    assert "4 runs, 4 already finished (4 in the archive" in capsys.readouterr().out
    assert not (root / "baseline").exists()  # nothing re-trained
    again = rows(root / "results.csv")
    assert _points(again) == four
    assert sorted(r["val_loss"] for r in again) == sorted(r["val_loss"] for r in first)

    sweep(seeds=[0, 1, 2], **kw)
    log = capsys.readouterr().out
    assert "6 runs, 4 already finished" in log and "[2/2]" in log and "[3/" not in log
    assert sorted(os.listdir(root / "baseline" / "d32")) == ["s2"]  # only the new seed trained
    six = sorted(four + [("baseline", 32, 2), ("baseline", 64, 2)])
    # `compare runs/ar` and `compare <archive>` both see every run, once, each run_dir resolvable from its csv
    for base in (root, archive):
        rs = rows(base / "results.csv")
        assert _points(rs) == six
        assert all((base / r["run_dir"] / "metrics.json").is_file() for r in rs)
        assert all(r["status"] == "ok" for r in rs)

    # An archive committed as results.csv alone (its runs/ once git-ignored): the rows are restored as the runs'
    # metrics.json, nothing is re-trained, and the settings the metrics record are still checked.
    saved = {(w, s): json.loads((archive / "runs" / "baseline" / f"d{w}" / f"s{s}" / "metrics.json").read_text())
             for _, w, s in six}
    shutil.copytree(archive / "runs", tmp_path / "kept")
    shutil.rmtree(archive / "runs")
    shutil.rmtree(root)
    sweep(seeds=[0, 1, 2], **kw)
    log = capsys.readouterr().out
    assert "6 point(s) listed in results.csv without their run dir, restored" in log and "6 already finished" in log
    assert not (root / "baseline").exists()
    for (w, s), m in saved.items():
        back = json.loads((archive / "runs" / "baseline" / f"d{w}" / f"s{s}" / "metrics.json").read_text())
        assert back.pop("restored_from") == "results.csv"
        assert back == {k: v for k, v in m.items() if v is not None}
    with pytest.raises(WidthlabError, match=r"was trained with trainer\.max_steps=2, but this sweep would use "
                                            r"trainer\.max_steps=3"):
        sweep(**{**kw, "out_dir": str(tmp_path / "elsewhere"), "overrides": {**ov, "trainer.max_steps": 3}}, seeds=[0])
    shutil.rmtree(archive / "runs")
    shutil.copytree(tmp_path / "kept", archive / "runs")  # with their config.yaml again

    # Mixing is refused: a changed setting, before any run directory or file is written.
    with pytest.raises(WidthlabError, match=r"baseline d=32 s0\) was trained with model\.lr=0\.003, but this sweep "
                                            r"would use model\.lr=0\.01; give this sweep its own name"):
        sweep(**{**kw, "out_dir": str(tmp_path / "elsewhere"), "overrides": {**ov, "model.lr": 0.01}}, seeds=[0])
    assert not (tmp_path / "elsewhere").exists()


def test_settings_compare_what_decides_a_result():
    cfg = {"seed_everything": 0, "model": {"d_model": 32, "lr": 0.003, "interventions": None, "compile": False},
           "data": {"seed": 0, "vocab_size": 512, "cache_dir": "a"}, "trainer": {"max_steps": 6, "logger": None}}
    old = run_settings(cfg)
    # the point itself (width, seed), where the cache lives, logging: not compared
    same = {**cfg, "seed_everything": 1, "model": {**cfg["model"], "d_model": 64, "compile": True},
            "data": {**cfg["data"], "seed": 1, "cache_dir": "b"}, "trainer": {"max_steps": 6, "logger": True}}
    assert settings_differ(old, run_settings(same)) is None
    # an option added since (absent from the old config) is read at its default
    assert settings_differ(old, run_settings({**cfg, "model": {**cfg["model"], "new_knob": 1.0}})) is None
    assert settings_differ(old, run_settings({**cfg, "trainer": {"max_steps": 7}})) == ("trainer.max_steps", 6, 7)
    iv = [{"class_path": "widthlab.interventions.logits.ZLoss", "init_args": {"coef": 1e-4}}]
    diff = settings_differ(old, run_settings({**cfg, "model": {**cfg["model"], "interventions": iv}}))
    assert diff is not None and diff[:2] == ("model.interventions", None)


def test_archives_are_not_git_ignored():
    """The per-run summaries of an archive must be committable (a `runs/` pattern once hid them)."""
    import subprocess
    repo = os.path.dirname(TESTS)
    if not os.path.isdir(os.path.join(repo, ".git")):
        pytest.skip("not a git checkout")
    path = "docs/results/some_sweep/runs/baseline/d8/s0/metrics.json"
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 1  # 1: not ignored
    assert subprocess.run(["git", "check-ignore", "-q", "runs/smoke/metrics.json"], cwd=repo).returncode == 0


def test_validated_configs_stay_what_config_yaml_holds(cache_dir, tmp_path):
    """validate() builds every arm's model; that must not turn its config's interventions into objects, or an
    archived run of that arm (whose config.yaml holds plain dicts) no longer matches its own sweep."""
    from widthlab.sweep import plan, validate
    points = plan("recipes/smoke.yaml", [32], [0], {"zloss": {"model.interventions": ZLOSS}}, tiny(cache_dir),
                  str(tmp_path))
    cfg = validate(points)["zloss"]
    assert run_settings(cfg)["model.interventions.0.class_path"] == "widthlab.interventions.logits.ZLoss"
    assert run_settings(cfg)["model.interventions.0.init_args.coef"] == 1e-3


def _nonembed(w: int, n_layer: int = 1, vocab: int = 512) -> int:
    """Non-embedding params of a real baseline GPT: every parameter but the token and position tables."""
    from widthlab.model import GPT, ModelConfig
    gpt = GPT(ModelConfig(vocab_size=vocab, d_model=w, n_layer=n_layer, head_dim=32, seq_len=32))
    return sum(p.numel() for p in gpt.parameters()) - gpt.embed.weight.numel() - gpt.pos.weight.numel()


def test_budget_sets_each_widths_steps_and_compare_accepts_only_the_rule(env, tmp_path, cache_dir, capsys):
    """A 3-width sweep under `budget: {tokens_per_param: 0.05}`: each run trains ceil(0.05·N/(B·T)) steps (N from a
    real model), warm-up and validation cadence follow; sweep.json records the rule and each point; compare fits
    runs of different lengths and states the rule, and refuses a run whose length is not the rule's."""
    from widthlab.plan import Budget
    ov = {k: v for k, v in tiny(cache_dir).items() if k not in ("trainer.max_steps", "trainer.val_check_interval",
                                                                 "model.warmup_steps")}
    budget = Budget(tokens_per_param=0.05, warmup_frac=0.25, val_checks=2)
    kw = dict(recipe="recipes/smoke.yaml", name="bud", out_dir=str(tmp_path), overrides=ov, budget=budget,
              archive=str(tmp_path / "archive"))
    path = sweep(widths=[32, 64, 96], **kw)
    root = tmp_path / "bud"
    # Again, from the archive alone: every point is checked against its own width's settings, nothing re-runs.
    shutil.copytree(root, tmp_path / "kept")
    shutil.rmtree(root)
    capsys.readouterr()
    sweep(widths=[32, 64, 96], **kw)
    assert "3 runs, 3 already finished (3 in the archive" in capsys.readouterr().out
    assert not (root / "baseline").exists()
    with pytest.raises(WidthlabError, match=r"d=32 s0\) was trained with model\.warmup_steps=3, but this sweep would "
                                            r"use model\.warmup_steps=6"):  # twice the tokens: 24 steps, not 12
        sweep(widths=[32, 64, 96], **{**kw, "budget": Budget(tokens_per_param=0.1, warmup_frac=0.25, val_checks=2)})
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "kept", root)
    want = {w: math.ceil(0.05 * _nonembed(w) / (4 * 32)) for w in (32, 64, 96)}
    assert want == {32: 12, 64: 33, 96: 63}  # the hand count of tests/test_plan.py's formula, at 1 layer
    got = {int(r["d_model"]): int(r["steps"]) for r in rows(path)}
    assert got == want
    spec = json.loads((root / "sweep.json").read_text())
    assert spec["budget"]["rule"] == {"tokens_per_param": 0.05, "params": "non_embedding", "warmup_frac": 0.25,
                                      "val_checks": 2}
    for w, n in want.items():
        point = spec["budget"]["points"][f"baseline/d{w}"]
        assert point == {"trainer.max_steps": n, "model.warmup_steps": round(0.25 * n),
                         "trainer.val_check_interval": n // 2, "tokens": n * 128,
                         "tokens_per_param": n * 128 / _nonembed(w)}
        cfg = yaml.safe_load((root / "baseline" / f"d{w}" / "s0" / "config.yaml").read_text())
        assert (cfg["trainer"]["max_steps"], cfg["model"]["warmup_steps"]) == (n, round(0.25 * n))
    res = compare(str(root), include_limited=True, n_boot=20, out=str(tmp_path / "report"))
    md = (tmp_path / "report" / "report.md").read_text()
    assert "token budget: 0.05 tokens per non-embedding parameter, warm-up 0.25 of the steps, 2 validations a run" in md
    assert "baseline d=64 4.22k (0.0513)" in md  # 33 steps × 128 tokens over 82304 params
    assert res["provenance"]["sweeps"][0]["budget"]["rule"]["tokens_per_param"] == 0.05
    # A run retrained with another length is a real mismatch.
    cfg_path = root / "baseline" / "d64" / "s0" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("max_steps: 33", "max_steps: 40"))
    with pytest.raises(WidthlabError, match=r"baseline d=64 s0 .* was trained with trainer\.max_steps=40, but its "
                                            r"sweep's budget \(0\.05 tokens per non-embedding parameter.*\) gives 33"):
        compare(str(root), include_limited=True, n_boot=20, out=str(tmp_path / "report"))


def test_more_runs_than_gpus_is_refused_unless_shared(tmp_path, monkeypatch):
    """devices > GPUs on a CUDA machine: one line, unless share_gpu; then runs share GPUs round-robin."""
    import torch

    from widthlab.launchers import slot_env
    kw = dict(recipe="recipes/smoke.yaml", widths=[32], name="gpu", out_dir=str(tmp_path), dry_run=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(WidthlabError, match=r"devices: 2 runs at once, but this machine has 1 GPU\(s\); set devices: "
                                            r"1, or share_gpu: true"):
        sweep(devices=2, **kw)
    sweep(devices=2, share_gpu=True, **kw)  # accepted
    sweep(devices=1, **kw)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    sweep(devices=2, **kw)  # CPU-only: parallel CPU runs, as before
    # the environment of each parallel slot
    assert [slot_env(s, 1, 3, cpus=12) for s in range(3)] == [{"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4"}] * 3
    assert [slot_env(s, 2, 4, cpus=16)["CUDA_VISIBLE_DEVICES"] for s in range(4)] == ["0", "1", "0", "1"]
    assert slot_env(1, 2, 2, cpus=16) == {"CUDA_VISIBLE_DEVICES": "1"}  # one run per GPU: all the cores
    assert slot_env(0, 1, 1) == {} and slot_env(1, 0, 2, cpus=2) == {"OMP_NUM_THREADS": "1"}
    assert not (tmp_path / "gpu").exists()
