"""`python -m train`: LightningCLI for fit/validate/test, plus typed-function subcommands.

`sweep`, `compare`, `analyze`, `toy` and `coord-check` are plain typed functions; jsonargparse derives their
options (and `--config`, `--print_config`) from the signatures and docstrings, as litgpt does.

Every bad input ends as one line on stderr, `error: <what is wrong; what to do>`, and exit status 2: our own
checks raise WidthlabError, and parse errors (an unknown option, a bad value) come back from jsonargparse as
ArgumentError instead of its usage block (`--help` prints the usage).
"""
from __future__ import annotations

import difflib
import importlib
import shlex
import sys

from widthlab import WidthlabError
from widthlab.errors import one_line_parse_error

LIGHTNING_COMMANDS = ["fit", "validate", "test"]
# The command line this process was started with, as a user would retype it; sweep.json and report.md record it so
# a result says which command made it (None when widthlab is called from Python).
INVOKED: str | None = None
SUBCOMMANDS = {
    "sweep": "widthlab.sweep:sweep",
    "compare": "widthlab.scaling.report:compare",
    "analyze": "widthlab.analyze:analyze",
    "toy": "widthlab.toy.model:toy",
    "coord-check": "widthlab.coord_check:coord_check",
    "prepare": "widthlab.data.prepare:prepare",
}
# One line per command for `python -m train --help` (a command without one shows its docstring's first line).
DESCRIPTIONS = {
    "fit": "train a model from a recipe (--config recipes/<name>.yaml); --ckpt_path last resumes a run exactly",
    "validate": "evaluate a checkpoint on the validation split (--ckpt_path)",
    "test": "evaluate a checkpoint on the test split (--ckpt_path)",
    "sweep": "train widths × arms × seeds from a sweep recipe; resumable, skips finished runs",
    "compare": "fit the width curve of sweeps or a CSV: intervals, multipliers, tests, report.md and figures",
    "analyze": "the paper's overlap analysis of a pretrained model's token vectors (HF id or local directory)",
    "toy": "the paper's toy model of superposition",
    "coord-check": "μP coordinate check: activation scales across widths after a few steps",
    "prepare": "build the token cache for a recipe and exit",
}
# Subcommands that parse their own arguments (prepare reads a fit or sweep recipe's data section).
RAW_ARGV = {"prepare"}


def run_function(name: str, args: list[str]):
    from jsonargparse import ArgumentError, auto_cli, capture_parser

    module, fn = SUBCOMMANDS[name].split(":")
    func = getattr(importlib.import_module(module), fn)
    if name in RAW_ARGV:
        return func(args)
    try:
        return auto_cli(func, args=args, exit_on_error=False)
    except ArgumentError as e:
        parser = capture_parser(lambda: auto_cli(func, args=[]))
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        raise WidthlabError(one_line_parse_error(str(e), options, name)) from None


def check_command(argv: list[str]) -> None:
    """A missing or unknown command is one line with a guess, not LightningCLI's usage block."""
    known = LIGHTNING_COMMANDS + list(SUBCOMMANDS)
    if not argv:
        raise WidthlabError(f"give a command: one of {', '.join(known)} (python -m train <command> --help)")
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS and argv[0] not in LIGHTNING_COMMANDS:
        close = difflib.get_close_matches(argv[0], known, n=1)
        guess = f"did you mean {close[0]}? " if close else ""
        raise WidthlabError(f"unknown command '{argv[0]}'; {guess}the commands are {', '.join(known)}")


def help_text() -> str:
    """The front door's help: every command with one line (LightningCLI's own would offer only its trainer
    commands, predict among them, which widthlab does not support)."""
    names = LIGHTNING_COMMANDS + list(SUBCOMMANDS)
    width = max(map(len, names)) + 2
    lines = ["usage: python -m train <command> [--config FILE] [--<option> VALUE ...]", "",
             "Train small GPTs at several widths and compare their width curves.", "", "commands:"]
    lines += [f"  {n:<{width}}{DESCRIPTIONS.get(n) or _doc_line(n)}" for n in names]
    lines += ["", "python -m train <command> --help lists a command's options (every recipe option can be given "
              "on the command line by its dotted name)."]
    return "\n".join(lines)


def _doc_line(name: str) -> str:
    module, fn = SUBCOMMANDS[name].split(":")
    doc = getattr(importlib.import_module(module), fn).__doc__ or ""
    return doc.strip().split("\n")[0]


def main(argv: list[str] | None = None) -> None:
    global INVOKED
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(help_text())
        return
    outer, INVOKED = INVOKED, shlex.join(["python", "-m", "train", *argv])
    try:
        check_command(argv)
        if argv and argv[0] in SUBCOMMANDS:
            run_function(argv[0], argv[1:])
        else:
            from widthlab.lightning_cli import run_lightning_cli
            run_lightning_cli(argv)
    except Exception as e:
        # jsonargparse wraps errors raised while it instantiates a class (an intervention's argument check) in
        # a ValueError about Union subtypes; the user's one-line message is in the chain.
        cause = _widthlab_cause(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
    finally:
        INVOKED = outer  # a later call from Python (tests, notebooks) must not inherit this command


def _widthlab_cause(e: BaseException | None) -> WidthlabError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, WidthlabError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
