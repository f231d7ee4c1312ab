"""Bad inputs through `python -m train`: exit status 2 and ONE line on stderr, `error: ...`, that names the problem;
no traceback, no usage block (that is what --help is for), and nothing written. None of these trains.

Bad inputs tested elsewhere are not repeated (test_train: unknown key, bad d_model, corpus, interventions, resume
guards; test_sweep: widths, arms, --only; test_compare, test_analyze, test_toy, test_coord_check: their own checks).
"""
import logging
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO
from helpers import without_progress

from widthlab.cli import main


def fit(t, *extra, command="fit"):
    return [command, "--config", "recipes/smoke.yaml", "--trainer.default_root_dir", str(t / "run"),
            "--data.cache_dir", str(t / "cache"), *extra]


def toy(t, *extra):
    return ["toy", "--n", "60", "--m", "[4]", "--steps", "2", "--out_dir", str(t / "toy"), *extra]


CASES = {
    # fit / test: checkpoints
    "ckpt_not_a_checkpoint": (lambda t: fit(t, "--ckpt_path", str(t / "notes.txt")), "notes.txt is not a checkpoint"),
    "ckpt_missing": (lambda t: fit(t, "--ckpt_path", str(t / "gone.ckpt")), "gone.ckpt does not exist"),
    "ckpt_is_a_directory": (lambda t: fit(t, "--ckpt_path", str(t)), "is not a checkpoint"),
    "ckpt_zip_not_torch": (lambda t: fit(t, "--ckpt_path", str(t / "a.zip")),
                           "a zip archive but not a torch checkpoint"),
    "test_ckpt_not_a_checkpoint": (lambda t: fit(t, "--ckpt_path", str(t / "notes.txt"), command="test"),
                                   "is not a checkpoint"),
    # fit: options and config files
    "typo_key_suggests": (lambda t: fit(t, "--model.d_modle", "64"),
                          "--model.d_modle 64; did you mean --model.d_model?"),
    "typo_section": (lambda t: fit(t, "--trainr.max_steps", "5"), "did you mean --trainer.max_steps?"),
    "typo_key_in_config_file": (lambda t: fit(t, "--config", str(t / "typo.yaml")),
                                "'model.d_modle'; did you mean --model.d_model?"),
    "config_not_yaml": (lambda t: fit(t, "--config", str(t / "broken.yaml")), "Problems parsing config"),
    "config_missing": (lambda t: fit(t, "--config", str(t / "nope.yaml")), "File does not exist"),
    "trainer_value_type": (lambda t: fit(t, "--trainer.max_steps", "ten"), 'trainer.max_steps": Expected a'),
    "precision_unknown": (lambda t: fit(t, "--trainer.precision", "fp7"), "trainer.precision"),
    "batch_size_zero": (lambda t: fit(t, "--data.batch_size", "0"), "must be positive"),
    "vocab_below_bytes": (lambda t: fit(t, "--data.vocab_size", "10"), "data.vocab_size >= 257"),
    "intervention_arg_typo": (lambda t: fit(t, "--model.interventions", '[{"class_path": '
                                            '"widthlab.interventions.ZLoss", "init_args": {"wieght": 1}}]'),
                              "Option 'wieght' is not accepted"),
    # commands
    "unknown_command": (lambda t: ["fitt", "--config", "recipes/smoke.yaml"],
                        "unknown command 'fitt'; did you mean fit?"),
    "no_command": (lambda t: [], "give a command"),
    "predict_unsupported": (lambda t: fit(t, command="predict"), "unknown command 'predict'"),
    # sweep
    "sweep_recipe_missing": (lambda t: ["sweep", "--config", str(t / "sweep.yaml"), "--out_dir", str(t / "sw")],
                             "recipe recipes/nope.yaml does not exist"),
    "sweep_repeated_seed": (lambda t: ["sweep", "--recipe", "recipes/smoke.yaml", "--widths", "[32]", "--seeds",
                                       "[0, 0]", "--out_dir", str(t / "sw")], "without repeats"),
    "sweep_widths_not_a_list": (lambda t: ["sweep", "--recipe", "recipes/smoke.yaml", "--widths", "thirty-two",
                                           "--out_dir", str(t / "sw")], 'widths": Expected a'),
    "sweep_widths_missing": (lambda t: ["sweep", "--recipe", "recipes/smoke.yaml", "--out_dir", str(t / "sw")],
                             "required: widths"),
    "sweep_typo_option": (lambda t: ["sweep", "--recipe", "recipes/smoke.yaml", "--widhts", "[32]",
                                     "--out_dir", str(t / "sw")], "did you mean --widths?"),
    # compare
    "compare_missing_dir": (lambda t: ["compare", str(t / "no_sweep"), "--out", str(t / "cmp")], "no runs found"),
    "compare_csv_without_width": (lambda t: ["compare", str(t / "bad.csv"), "--out", str(t / "cmp")],
                                  "no d_model column"),
    "compare_unknown_loss": (lambda t: ["compare", str(t / "mini"), "--loss", "val_los", "--out", str(t / "cmp")],
                             "--loss must be val_loss, val_loss_best or auto"),
    "compare_no_paths": (lambda t: ["compare"], "required: paths"),
    "compare_n_boot_negative": (lambda t: ["compare", str(t / "mini"), "--n_boot", "-5", "--out", str(t / "cmp")],
                                "--n_boot must be at least 10"),
    "compare_max_gap_negative": (lambda t: ["compare", str(t / "mini"), "--max_gap", "-1", "--out", str(t / "cmp")],
                                 "--max_gap and --max_epochs must be positive"),
    "compare_width_not_int": (lambda t: ["compare", str(t / "mini"), "--min_width", "abc", "--out", str(t / "cmp")],
                              "min_width"),
    # analyze
    "analyze_no_model": (lambda t: ["analyze", "--out", str(t / "a.json")], "required: model"),
    "analyze_block_rows_zero": (lambda t: ["analyze", "--model", str(t / "gone"), "--block_rows", "0",
                                           "--out", str(t / "a.json")], "block_rows must be"),
    # toy
    "toy_typo_in_config": (lambda t: ["toy", "--config", str(t / "toy.yaml")],
                           "Option 'mm' is not accepted; did you mean --m?"),
    "toy_lr_rule": (lambda t: toy(t, "--lr_rule", "fancy"), "lr_rule"),
    "toy_batch_size_zero": (lambda t: toy(t, "--batch_size", "0"), "must be ≥ 1"),
    "toy_width_zero": (lambda t: toy(t, "--m", "[0]"), "1 ≤ m < n"),
}


@pytest.fixture
def inputs(tmp_path):
    """The files the bad inputs point at; the test checks that nothing else appears next to them."""
    (tmp_path / "cache").mkdir()  # the token cache is not a run: it may exist (empty, as none of these gets that far)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("readme.txt", "a zip, but no torch pickle inside")
    (tmp_path / "typo.yaml").write_text("model:\n  d_modle: 64\n")
    (tmp_path / "broken.yaml").write_text("model: [d_model: 64\n")
    (tmp_path / "sweep.yaml").write_text("recipe: recipes/nope.yaml\nwidths: [32]\n")
    (tmp_path / "toy.yaml").write_text("n: 60\nmm: [4]\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "results.csv").write_text("arm,seed,d_model,val_loss\n" + "".join(
        f"baseline,0,{w},{5 - 0.1 * i}\n" for i, w in enumerate([32, 64, 128, 256])))
    return tmp_path


def log_to_captured_stderr(monkeypatch):
    """Log lines (Lightning's "Seed set to ...") go to the stderr capsys reads. A library's stream handler keeps the
    stream it was made with (under pytest an earlier test's, closed by now), and capsys swaps sys.stderr only once
    the test body runs, so this is called from the body."""
    import lightning.pytorch  # noqa: F401  (makes its handlers first)

    loggers = [logging.root] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for h in {h for lg in loggers for h in lg.handlers}:
        if type(h) is logging.StreamHandler:
            monkeypatch.setattr(h, "stream", sys.stderr)


# An error found while building the data or the model comes after the seed is set, and Lightning says so first.
LIGHTNING_INFO = ("Seed set to ",)


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs + [""])


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line(name, inputs, capsys, monkeypatch):
    args, match = CASES[name]
    before = _tree(inputs)
    log_to_captured_stderr(monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # any other exception would be a traceback for the user
        main(args(inputs))
    assert e.value.code == 2
    *info, err = without_progress(capsys.readouterr().err)
    assert err.startswith("error: ") and match in err, err
    assert all(line.removeprefix("INFO: ").startswith(LIGHTNING_INFO) for line in info), info
    assert _tree(inputs) == before  # nothing half-written: no run dir, config.yaml, events, report or JSON


def test_a_model_setting_checked_after_the_data_is_built(inputs, capsys):
    # The model is built after the datamodule (its vocabulary comes from the tokenizer), so a bad model value
    # is found once the token cache exists; the cache is complete and reusable, and nothing else is written.
    with pytest.raises(SystemExit) as e:
        main(fit(inputs, "--model.dropout", "1.5"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err == "error: dropout must be in [0, 1) (got 1.5); PTB recipes use 0.1"
    assert not any(p.name in ("config.yaml", "metrics.json") for p in inputs.rglob("*"))


def test_the_same_through_a_real_process(tmp_path):
    """A file that is not a checkpoint (was a torch unpickler traceback) as a user meets it: a real process."""
    (tmp_path / "notes.txt").write_text("hello\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "train", *fit(tmp_path, "--ckpt_path", str(tmp_path / "notes.txt"))],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and "not a checkpoint" in p.stderr, p.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0 and "--widths" in capsys.readouterr().out


def test_an_unknown_option_is_not_guessed_wildly(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "x", "--zzz", "1"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzz" in err and "did you mean" not in err


assert len(CASES) >= 20  # the issue asks for at least 20 distinct bad inputs
