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
    except Exception as e:
        # jsonargparse wraps errors raised while it instantiates a class (an intervention's argument check) in
        # a ValueError about Union subtypes; the user's one-line message is in the chain.
        cause = _widthlab_cause(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def _widthlab_cause(e: BaseException | None) -> WidthlabError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, WidthlabError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
