"""What a user reads on the terminal during `python -m train fit` and its resume: no false alarms, real numbers.

Run as subprocesses, exactly as typed, so stderr is what a user sees (pytest would otherwise capture warnings)."""
import json
import subprocess
import sys

import pytest
from conftest import REPO
from helpers import tiny_args
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count


def _train(args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def fit_then_resume(tmp_path_factory, cache_dir):
    """A 4-step fit with the model summary on, then the same run resumed to 8 steps with --ckpt_path last (the
    resume starts mid-epoch, the case Lightning warns about)."""
    root = tmp_path_factory.mktemp("msg") / "run"
    summary = ["--trainer.enable_model_summary", "true", "--trainer.val_check_interval", "4"]
    first = _train(tiny_args(root, cache_dir, 4, summary))
    resumed = _train(tiny_args(root, cache_dir, 8, summary + ["--ckpt_path", "last"]))
    return {"first": first, "resumed": resumed, "metrics": json.load(open(root / "metrics.json"))}


def test_resume_prints_no_false_alarm(fit_then_resume):
    err = fit_then_resume["resumed"].stderr
    assert "Restored all states from the checkpoint" in err  # it did resume ...
    assert fit_then_resume["metrics"]["steps"] == 8 and fit_then_resume["metrics"]["status"] == "ok"
    for alarm in ["not resumable", "unreliable", "exists and is not empty"]:  # ... and says nothing alarming
        assert alarm not in err, err


def test_no_deprecation_warning_from_lightning_internals(fit_then_resume):
    for run in ["first", "resumed"]:
        err = fit_then_resume[run].stderr
        assert "deprecated" not in err and "Warning" not in err, err


def test_model_summary_shows_training_flops_per_token(fit_then_resume):
    err = fit_then_resume["first"].stderr
    fpt = fit_then_resume["metrics"]["flops_per_token"]
    assert fpt > 0
    assert f"{get_human_readable_count(fpt):<10}Training FLOPs per token" in err.splitlines()
    assert "Total Flops" not in err and "FLOPs" not in err.split("Trainable params")[0]  # no column of zeros
    assert "Total params" in err and "Skipping setting a default" not in err
