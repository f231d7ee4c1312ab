"""Tuning → confirmation → compare end to end with real (tiny) fits: the knob reaches the fit, the winner and the
baseline's tuned LR are what the confirmation runs, a fresh clone re-runs nothing, and compare judges only the
confirmation runs while showing the selection. The unit tests of the protocol are in test_tuning.py."""
import csv
import json
import shutil

import pytest
import yaml

from widthlab import WidthlabError
from widthlab.scaling.report import compare
from widthlab.sweep import sweep

ZLOSS = {"class_path": "widthlab.interventions.logits.ZLoss", "init_args": {"coef": 1e-4}}

@pytest.fixture()
def env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two fits side by side on a 2-core box, one thread each


def tiny(cache) -> dict:
    return {"trainer.max_steps": 2, "trainer.val_check_interval": 2, "trainer.log_every_n_steps": 1,
            "trainer.enable_model_summary": "false", "model.n_layer": 1, "model.warmup_steps": 1,
            "data.vocab_size": 512, "data.seq_len": 32, "data.batch_size": 4, "data.max_eval_tokens": 500,
            "data.cache_dir": str(cache), "overlap.every_n_steps": 2, "perf.every_n_steps": 2}


def test_tune_then_confirm_then_compare(env, tmp_path, cache_dir, capsys):
    out, docs = tmp_path / "runs", tmp_path / "docs" / "results"
    kw = dict(recipe="recipes/ptb_id.yaml", out_dir=str(out), overrides=tiny(cache_dir), devices=2)
    arms = {"baseline": {"grid": {"model.lr": [1e-2, 3e-2]}},  # the baseline's own tuning, at the ideas' budget
            "zloss": {"model.interventions": [ZLOSS], "grid": {"model.interventions.0.init_args.coef": [1e-4, 3.0]}}}
    sweep(widths=[8], seeds=[10], arms=arms, name="tune", archive=str(docs / "tune"), **kw)
    with open(docs / "tune" / "results.csv") as f:
        tuned = {r["arm"]: float(r["val_loss_best"]) for r in csv.DictReader(f)}
    assert sorted(tuned) == ["baseline@lr=0.01", "baseline@lr=0.03", "zloss@coef=0.0001", "zloss@coef=3"]
    cfg = (docs / "tune" / "runs" / "zloss@coef=3" / "d8" / "s10" / "config.yaml").read_text()
    assert "coef: 3.0" in cfg  # the knob reached the fit
    with pytest.raises(WidthlabError, match="is a tuning sweep"):
        compare(str(docs / "tune"))

    confirm = dict(widths=[8, 16, 24], seeds=[20, 21], arms={"baseline": {}}, name="confirm",
                   archive=str(docs / "confirm"), select={"from": str(docs / "tune"), "widths": [8]}, **kw)
    with pytest.raises(WidthlabError, match="were tuning seeds"):
        sweep(**{**confirm, "seeds": [10, 20]})
    sweep(**confirm)
    winner = min([a for a in tuned if a.startswith("zloss@")], key=tuned.get)
    base_lr = float(min([a for a in tuned if a.startswith("baseline@")], key=tuned.get).split("=")[1])
    js = json.loads((docs / "confirm" / "sweep.json").read_text())
    assert js["select"]["ideas"]["zloss"]["winner"] == winner and set(js["arms"]) == {"baseline", winner}
    assert js["arms"]["baseline"] == {"model.lr": base_lr}  # the comparator runs at its own grid's winner
    assert js["select"]["design"] == {"seeds": [20, 21], "widths": [8, 16, 24], "arm_seeds": {"baseline": [20, 21]}}
    with pytest.raises(WidthlabError, match=r"seeds \[22\] are not in it: adding seeds or widths after seeing"):
        sweep(**{**confirm, "seeds": [20, 21, 22]})  # a seed added after the results: refused before any run
    for arm, lr in (("baseline", base_lr), (winner, base_lr)):  # the idea shares the baseline's tuned LR
        cfg = yaml.safe_load((docs / "confirm" / "runs" / arm / "d16" / "s21" / "config.yaml").read_text())
        assert cfg["model"]["lr"] == lr
    with open(docs / "confirm" / "results.csv") as f:
        got = sorted((r["arm"], int(r["d_model"]), int(r["seed"])) for r in csv.DictReader(f))
    assert got == sorted((a, w, s) for a in ("baseline", winner) for w in (8, 16, 24) for s in (20, 21))

    # A fresh clone (no runs/): the same confirmation, from the archives, trains nothing.
    shutil.rmtree(out)
    capsys.readouterr()
    sweep(**confirm)
    assert "12 runs, 12 already finished" in capsys.readouterr().out

    res = compare(str(docs / "confirm"), n_boot=50, include_limited=True, out=str(tmp_path / "report"))
    assert list(res["pooled"]) == [winner] and res["pooled"][winner]["seeds"] == [20, 21]  # confirmation runs only
    assert res["selection"][0]["ideas"]["zloss"]["winner"] == winner
    md = (tmp_path / "report" / "report.md").read_text()
    sel = md[md.index("## Selection"):]
    assert md.index("## Verdict") < md.index("## Selection") < md.index("## Figures")
    assert "In this confirmation the curve-free verdicts are Holm-adjusted over its family" in md
    assert "coef = 0.0001" in sel and "coef = 3" in sel and "**selected**" in sel and "untuned value" in sel
    assert f"{tuned[winner]:.4f}" in sel and f"{tuned[f'baseline@lr={base_lr:g}']:.4f}" in sel
    assert "| baseline | lr = 0.01 |" in sel and "**selected**: the `baseline` arm" in sel
