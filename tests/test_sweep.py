"""`sweep` end to end with real (tiny) fit subprocesses: one results.csv row per run, resume after a kill, bad input
rejected before any run directory exists, and `compare` on the result."""
import csv
import os

import pytest

from widthlab import WidthlabError
from widthlab.scaling.report import compare
from widthlab.sweep import sweep

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
