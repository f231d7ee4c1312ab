"""The front door: `python -m train --help` lists every command with one line, and offers nothing it refuses."""
import re
import subprocess
import sys

import pytest
from conftest import REPO

from widthlab.cli import LIGHTNING_COMMANDS, SUBCOMMANDS, main


def test_help_lists_every_command_once_with_one_line():
    out = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    rows = dict(re.findall(r"^  (\S+) +(\S.*)$", out.stdout, flags=re.M))
    assert list(rows) == LIGHTNING_COMMANDS + list(SUBCOMMANDS)  # every command, in order, nothing else
    assert {"fit", "validate", "test", "sweep", "compare", "analyze", "toy", "coord-check"} <= set(rows)
    assert all(len(d) > 15 for d in rows.values()), rows
    if "prepare" in SUBCOMMANDS:
        assert rows["prepare"] == "build the token cache for a recipe and exit"
    assert "predict" not in out.stdout
    assert len(out.stdout.splitlines()) < 20  # a menu, not LightningCLI's option dump


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_in_process(flag, capsys):
    main([flag])
    assert capsys.readouterr().out.count("\n  ") == len(LIGHTNING_COMMANDS) + len(SUBCOMMANDS)


def test_predict_is_not_a_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'predict'") and err.count("\n") == 1
