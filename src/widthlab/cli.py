"""`python -m train`: LightningCLI for fit/validate/test, plus typed-function subcommands.

`sweep`, `compare`, `analyze`, `toy` and `coord-check` are plain typed functions; jsonargparse derives their
options (and `--config`, `--print_config`) from the signatures and docstrings, as litgpt does.
"""
from __future__ import annotations

import importlib
import sys

from widthlab import WidthlabError

SUBCOMMANDS = {
    "sweep": "widthlab.sweep:sweep",
    "compare": "widthlab.scaling.report:compare",
    "analyze": "widthlab.analyze:analyze",
    "toy": "widthlab.toy:toy",
    "coord-check": "widthlab.coord_check:coord_check",
}


def run_function(name: str, args: list[str]):
    from jsonargparse import auto_cli

    module, fn = SUBCOMMANDS[name].split(":")
    func = getattr(importlib.import_module(module), fn)
    return auto_cli(func, args=args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            run_function(argv[0], argv[1:])
        else:
            from widthlab.lightning_cli import run_lightning_cli
            run_lightning_cli(argv)
    except WidthlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
