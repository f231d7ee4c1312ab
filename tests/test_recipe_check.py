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
    with pytest.raises(WidthlabError, match=r"runs differ in model\.lr: 0\.01 \(baseline d=\d+ s0\) vs 0\.003 "
                                            r"\(baseline d=128 s0\)"):
        compare(str(sweep), n_boot=10)


def test_arms_may_differ_only_in_settings_a_sweep_declares(tmp_path):
    sweep = add_configs(make_sweep(tmp_path / "sweep"), lr=lambda arm, w, s: 3e-3 if arm == "packed" else 1e-2)
    with pytest.raises(WidthlabError, match=r"runs differ in model\.lr.*\(packed d="):
        compare(str(sweep), n_boot=10)
    # An LR scan declares model.lr as what its arms change (sweep.json arms), so the same runs compare.
    (sweep / "sweep.json").write_text(json.dumps({"arms": {"baseline": {}, "packed": {"model.lr": 3e-3}}}))
    assert abs(compare(str(sweep), n_boot=10)["curve"]["alpha"]["est"] - 0.9) < 0.1


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
    with pytest.raises(WidthlabError, match=r"runs differ in model\.lr: 0\.01 .* vs 0\.02"):
        compare(str(sweep), n_boot=10, short_sweep=str(other))


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


def test_short_sweep_path_is_found_from_the_sweep_dir(tmp_path, monkeypatch):
    # A recipe writes short_sweep relative to the repository root; compare run from elsewhere still finds it.
    (tmp_path / "repo" / "docs" / "results" / "short").mkdir(parents=True)
    full = tmp_path / "repo" / "docs" / "results" / "full"
    full.mkdir()
    (full / "sweep.json").write_text(json.dumps({"compare": {"short_sweep": "docs/results/short"}}))
    monkeypatch.chdir(tmp_path)
    found = sweep_defaults([str(full)])["short_sweep"]
    assert os.path.samefile(found, tmp_path / "repo" / "docs" / "results" / "short")
