"""`compare` refuses runs of different recipes: every setting in the runs' config.yaml, not only four coarse keys.

A verdict that mixes a baseline trained for 3560 steps with arms trained for 1780, or two learning rates, is wrong
without any visible sign; these tests build such mixtures on disk and ask for a one-line error, and check that
what may differ (width, an arm's interventions and declared overrides, a short sweep's length) still compares.
"""
import json
import os

import pytest
import yaml

from test_compare import make_sweep, power_law
from widthlab import WidthlabError
from widthlab.scaling.report import compare
from widthlab.scaling.runs import sweep_defaults

PACKED = [{"class_path": "widthlab.interventions.frame_penalty.FramePenalty", "init_args": {"weight": 1.0}}]


def add_configs(root, lr=lambda arm, w, s: 1e-2, steps=1000):
    """Write each run's config.yaml as LightningCLI would (the parts run_settings reads)."""
    for arm in ("baseline", "packed"):
        for wdir in (root / arm).iterdir():
            for sdir in wdir.iterdir():
                w, s = int(wdir.name[1:]), int(sdir.name[1:])
                cfg = {"seed_everything": s,
                       "trainer": {"max_steps": steps, "val_check_interval": steps // 10, "default_root_dir": str(root)},
                       "model": {"d_model": w, "n_layer": 2, "lr": lr(arm, w, s), "warmup_steps": 100,
                                 "interventions": PACKED if arm == "packed" else None},
                       "data": {"source": "ptb", "vocab_size": 4096, "seq_len": 64, "batch_size": 32}}
                (sdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_one_recipe_compares_and_arms_differ_by_interventions(tmp_path):
    sweep = add_configs(make_sweep(tmp_path / "sweep"))
    res = compare(str(sweep), n_boot=10)
    assert abs(res["curve"]["alpha"]["est"] - 0.9) < 0.1


def test_a_setting_that_differs_within_an_arm_is_refused(tmp_path):
    sweep = add_configs(make_sweep(tmp_path / "sweep"), lr=lambda arm, w, s: 3e-3 if w == 128 else 1e-2)
    with pytest.raises(WidthlabError, match=r"runs of arm 'baseline' differ in model\.lr: 0\.01 \(baseline d=\d+ s0 "
                                            r"in .*\) vs 0\.003 \(baseline d=128 s0 in .*sweep/baseline/d128/s0\)"):
        compare(str(sweep), n_boot=10)


def test_arms_may_differ_only_in_settings_a_sweep_declares(tmp_path):
    sweep = add_configs(make_sweep(tmp_path / "sweep"), lr=lambda arm, w, s: 3e-3 if arm == "packed" else 1e-2)
    with pytest.raises(WidthlabError, match=r"runs differ in model\.lr.*\(packed d="):
        compare(str(sweep), n_boot=10)
    # An LR scan declares model.lr as what its arms change (sweep.json arms), so the same runs compare, also when
    # the sweep is named by its results.csv.
    (sweep / "sweep.json").write_text(json.dumps({"arms": {"baseline": {}, "packed": {"model.lr": 3e-3, "model.interventions": PACKED}}}))
    assert abs(compare(str(sweep), n_boot=10)["curve"]["alpha"]["est"] - 0.9) < 0.1
    assert abs(compare(str(sweep / "results.csv"), n_boot=10)["curve"]["alpha"]["est"] - 0.9) < 0.1
    # Declared overrides are per arm: an arm declared with only its interventions may not change the LR, and
    # without a declaration the interventions are what an arm may change.
    (sweep / "sweep.json").write_text(json.dumps({"arms": {"baseline": {}, "packed": {"model.interventions": []}}}))
    with pytest.raises(WidthlabError, match=r"runs differ in model\.lr.*declare model\.lr in the sweep's arms"):
        compare(str(sweep), n_boot=10)


def test_a_setting_only_some_runs_have_is_still_compared_between_those(tmp_path):
    # Old runs without an option are read at its default; runs that have it must agree among themselves.
    sweep = add_configs(make_sweep(tmp_path / "sweep"))
    for i, cfg in enumerate(sorted(sweep.glob("*/d*/s*/config.yaml"))[1:]):
        doc = yaml.safe_load(cfg.read_text())
        doc["data"]["max_eval_tokens"] = 100000 if i < 3 else 200000
        cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(WidthlabError, match=r"differ in data\.max_eval_tokens: (100000 .* vs 200000|200000 .* vs 100000)"):
        compare(str(sweep), n_boot=10)


def test_a_short_sweep_may_differ_only_in_length(tmp_path):
    def alter(row, w, arm):
        row["steps"], row["val_history"] = 600, [[600, row["val_loss"]]]

    def hist(row, w, arm):
        row["steps"], row["val_history"] = 1000, [[600, row["val_loss"] + 0.1], [1000, row["val_loss"]]]

    sweep = add_configs(make_sweep(tmp_path / "sweep", alter=hist))
    short = add_configs(make_sweep(tmp_path / "short", loss_of=lambda a, w: power_law(a, w) + 0.05, alter=alter),
                        steps=600)
    assert compare(str(sweep), n_boot=10, short_sweep=str(short))["curve"]["convergence"]["outcome"] == "converged"
    other = add_configs(make_sweep(tmp_path / "other", alter=alter), steps=600, lr=lambda arm, w, s: 2e-2)
    with pytest.raises(WidthlabError, match=r"short sweep .*other: runs of arm 'baseline' differ in model\.lr: 0\.01 "
                                            r"\(.* in .*sweep/.*\) vs 0\.02 \(.* in .*other/"):
        compare(str(sweep), n_boot=10, short_sweep=str(other))
    # a short sweep must have one length itself (only its length may differ from the full sweep's)
    mixed = add_configs(make_sweep(tmp_path / "mixed", alter=alter), steps=600)
    cfg = mixed / "packed" / "d64" / "s1" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 600", "max_steps: 300"))
    with pytest.raises(WidthlabError, match=r"short sweep .*mixed: runs of arm 'packed' differ in trainer\.max_steps"):
        compare(str(sweep), n_boot=10, short_sweep=str(mixed))


def test_sweep_defaults_merge_and_conflict(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, section in ((a, {"loss": "val_loss_best", "min_width": 16}), (b, {"loss": "val_loss_best", "max_gap": 0.3})):
        d.mkdir()
        (d / "sweep.json").write_text(json.dumps({"compare": section}))
    assert sweep_defaults([str(a), str(b)]) == {"loss": "val_loss_best", "min_width": 16, "max_gap": 0.3}
    (b / "sweep.json").write_text(json.dumps({"compare": {"loss": "val_loss"}}))
    with pytest.raises(WidthlabError, match=r"set compare\.loss differently .*pass --loss"):
        sweep_defaults([str(a), str(b)])
    assert sweep_defaults([str(a), str(b)], given={"loss"}) == {"min_width": 16}
    # two spellings of one short sweep are not a conflict
    (a / "sweep.json").write_text(json.dumps({"compare": {"short_sweep": str(b)}}))
    (b / "sweep.json").write_text(json.dumps({"compare": {"short_sweep": str(b / ".." / "b")}}))
    assert os.path.samefile(sweep_defaults([str(a), str(b)])["short_sweep"], b)


def test_short_sweep_path_is_found_from_the_sweep_dir(tmp_path, monkeypatch):
    # A recipe writes short_sweep relative to the repository root; compare run from elsewhere still finds it.
    (tmp_path / "repo" / "docs" / "results" / "short").mkdir(parents=True)
    full = tmp_path / "repo" / "docs" / "results" / "full"
    full.mkdir()
    (full / "sweep.json").write_text(json.dumps({"compare": {"short_sweep": "docs/results/short"}}))
    monkeypatch.chdir(tmp_path)
    found = sweep_defaults([str(full)])["short_sweep"]
    assert os.path.samefile(found, tmp_path / "repo" / "docs" / "results" / "short")
