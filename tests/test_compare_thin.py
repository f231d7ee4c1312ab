"""`compare` when the data are thin: too few widths, one seed per cell. The error and the report say in words what
is missing and what would help, and never print nan."""
import json

import pytest

from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.scaling.report import compare

LOSS = {32: 5.0, 64: 4.6, 128: 4.35}


def _csv(path, widths=(32, 64), seeds=(0,), arms=("baseline",)):
    rows = ["d_model,val_loss,arm,seed"]
    for a in arms:
        for w in widths:
            for s in seeds:
                rows.append(f"{w},{LOSS[w] - (0.08 if a == 'packed' else 0) + 0.004 * s * (1 + w % 5)},{a},{s}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_two_widths_ask_for_a_third_and_suggest_nothing_useless(tmp_path, capsys):
    src = _csv(tmp_path / "two.csv", seeds=(0, 1))
    for include_limited in (False, True):
        with pytest.raises(WidthlabError) as e:
            compare(src, n_boot=10, out=str(tmp_path / "out"), include_limited=include_limited)
        msg = str(e.value)
        assert "has 2 usable widths [32, 64]" in msg and "a fit needs at least 3 widths" in msg
        assert "train the 'baseline' arm at 1 more width" in msg
        assert "include_limited" not in msg and "min_width" not in msg  # no run was left out: they would not help
    with pytest.raises(SystemExit) as e:
        main(["compare", src, "--include_limited", "true", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "1 more width" in err and "include_limited" not in err


def test_only_the_options_that_would_give_three_widths_are_suggested(tmp_path):
    src = _csv(tmp_path / "three.csv", widths=(32, 64, 128), seeds=(0, 1))
    with pytest.raises(WidthlabError) as e:
        compare(src, n_boot=10, out=str(tmp_path / "out"), min_width=64)
    msg = str(e.value)
    assert "d=32 (d_model < min_width 64)" in msg and "lower --min_width (now 64; it leaves out d=[32])" in msg
    assert "include_limited" not in msg
    with pytest.raises(WidthlabError) as e:
        compare(src, n_boot=10, out=str(tmp_path / "out"), min_width=128)  # one width left: 32, 64 out
    assert "lower --min_width (now 128; it leaves out d=[32, 64])" in str(e.value)
    assert "at 2 more widths" in str(e.value)


def test_one_seed_per_cell_says_why_there_is_no_interval(tmp_path):
    src = _csv(tmp_path / "one.csv", widths=(32, 64, 128), arms=("baseline", "packed"))
    res = compare(src, n_boot=20, out=str(tmp_path / "out"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "nan" not in report.lower() and "no noise estimate." not in report
    assert "the noise variance from the no noise estimate" not in report
    assert "no intervals: the baseline has no replicate seeds (one run per width) and only 3 widths" in report
    assert "add a seed (a second run at every width)" in report
    alpha = res["curve"]["alpha"]["est"]
    assert f"- α = {alpha:.3g} (no interval: see above)" in report
    k = res["k"]["packed"]["est"]
    assert f"| packed | {k:.3g} | – | – | – |" in report  # the estimate, no [nan, nan]; no params: no k_N
    assert "A multiplier shown without an interval has none: the baseline has no replicate seeds" in report
    assert "convergence: not checked (the runs carry no validation history" in report  # a CSV has none
    assert all("nan" not in v["text"] for v in res["verdict"].values())


def test_runs_validated_once_are_not_said_to_have_no_history(tmp_path):
    for w, loss in LOSS.items():
        d = tmp_path / "sweep" / "baseline" / f"d{w}" / "s0"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({
            "arm": "baseline", "d_model": w, "seed": 0, "val_loss": loss, "val_loss_best": loss, "steps": 100,
            "best_step": 100, "val_history": [[100, loss]], "status": "ok"}))
    compare(str(tmp_path / "sweep"), n_boot=20)
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "no validation history" not in report and "nan" not in report.lower()
    assert "not every run validated that early: validate more often (trainer.val_check_interval)" in report
