"""Grids over an arm's knobs: one named sub-arm per value (a tuning sweep's arms).

Grids. In a sweep recipe an arm may list values for any of its dotted overrides, an intervention's init_args
included (a list index is a path component):

    signed_decay:
      model.interventions: [{class_path: widthlab.interventions.signed_decay.SignedRowDecay, init_args: {gamma: -1.0}}]
      grid: {model.interventions.0.init_args.gamma: [-0.1, -0.3, -1.0, -3.0, -10.0]}

`expand_grids` turns it into one ordinary arm per value (the cartesian product over several knobs), named
`signed_decay@gamma=-0.3` (`unitnorm@init_scale=3@lr=0.01` for two knobs): each has its own run directory, archive
entry, HPARAMS row (columns idea and knobs) and compare arm. '@' and '=' are safe in a directory name, a shell
command and TensorBoard's run filter (`^signed_decay@` is one idea, `@gamma=-0.3/` one value).

The selection of a value per idea from a tuning sweep's runs, and the confirmation sweep that re-runs it on fresh
seeds, are widthlab.selection_rule.
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from typing import Any

from widthlab import WidthlabError

GRID = "grid"
# An arm's name (letters, digits, '_', '-', '.'), a grid's sub-arm adds '@knob=value' per knob (a confirmation
# sweep runs a winner under that name).
ARM_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.]+=[A-Za-z0-9_.+-]+)*"


# ---------------------------------------------------------------------------------------------- grids

def fmt_value(v: Any) -> str:
    """A knob value as it appears in an arm name: 1e-4 → 0.0001, -1.0 → -1, [a, b] → a-b."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(fmt_value(x) for x in v)
    return "null" if v is None else str(v)


def short_names(keys: list[str]) -> dict[str, str]:
    """Each knob's shortest trailing part of its dotted key that no other knob ends with, never starting at a list
    index: model.interventions.0.init_args.gamma → gamma, model.lr → lr."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if parts[-n].isdigit() and n < len(parts):
                continue
            if not any(o != k and (o == cand or o.endswith("." + cand)) for o in keys):
                break
        out[k] = cand
    return out


def split_arm(name: str) -> tuple[str, dict[str, str]]:
    """(idea, {knob: value as written}) of an arm name: 'signed_decay@gamma=-0.3' → ('signed_decay', {'gamma':
    '-0.3'}); an arm outside a grid → (name, {})."""
    idea, *rest = str(name).split("@")
    return idea, dict(p.split("=", 1) for p in rest if "=" in p)


def expand_only(only: list[str], names: list[str]) -> list[str]:
    """`--only` names: an idea's name stands for all of its grid's sub-arms."""
    out = []
    for o in only:
        subs = [n for n in names if "@" in n and split_arm(n)[0] == o]
        out += subs if subs and o not in names else [o]
    return out


def _walk(node: Any, parts: list[str], where: str, create: bool) -> tuple[Any, Any] | None:
    """The container holding the last of `parts` below `node`, and that last key (an int for a list), or None
    (create=False) when the path is absent. create: missing dict levels are made (init_args of a class without)."""
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                if not create:
                    return None
                raise WidthlabError(f"{where}: '{p}' is not an index of a list of {len(node)} (count from 0)")
            key: Any = int(p)
        elif isinstance(node, dict):
            key = p
            if not last and key not in node:
                if not create:
                    return None
                node[key] = {}
        else:
            if not create:
                return None
            raise WidthlabError(f"{where}: '{'.'.join(parts[:i])}' holds {node!r}, not a mapping or list to go into")
        if last:
            return node, key
        node = node[key]
    return None


def _head(key: str, *overrides: dict) -> tuple[str, list[str]] | None:
    """The longest proper prefix of a dotted key that is an override key in one of `overrides`, and the rest."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if any(".".join(parts[:i]) in ov for ov in overrides):
            return ".".join(parts[:i]), parts[i:]
    return None


def set_knob(ov: dict, key: str, value: Any, sweep_overrides: dict, where: str) -> None:
    """Set a dotted knob in an arm's overrides, in place. Below an override key (model.interventions, of the arm,
    else of the sweep: copied into the arm) the rest of the key walks its value; otherwise the key is an override."""
    found = _head(key, ov, sweep_overrides)
    if found is None:
        ov[key] = value
        return
    head, rest = found
    if head not in ov:
        ov[head] = copy.deepcopy(sweep_overrides[head])
    node, last = _walk(ov[head], rest, f"{where}: grid key {key}", create=True)
    node[last] = value


def get_knob(key: str, ov: dict, sweep_overrides: dict, recipe: dict) -> Any:
    """The value a knob takes without its grid (the untuned default): the arm's override, the sweep's, the fit
    recipe's (nested YAML), or None when none sets it (a class default, e.g. UnitNormRows.init_scale = √m)."""
    def at(node: Any, parts: list[str]) -> Any:
        got = _walk(node, parts, key, create=False)
        return got[0][got[1]] if got is not None and (isinstance(got[0], list) or got[1] in got[0]) else None

    for src in (ov, sweep_overrides):
        if key in src:
            return src[key]
        if (found := _head(key, src)) is not None:
            return at(src[found[0]], found[1])
    return at(recipe, key.split("."))


def grid_points(arm: str, ov: dict, overrides: dict | None = None) -> list[tuple[str, dict, dict]]:
    """(name, {dotted key: value}, overrides) of each combination of an arm's grid values, first knob slowest.
    Pure: the caller's dicts (what sweep.json records) are not changed."""
    ov = dict(ov or {})
    grid = ov.pop(GRID)
    if not isinstance(grid, dict) or not grid:
        raise WidthlabError(f"arm {arm}: grid must map dotted overrides to lists of values, e.g. grid: "
                            f"{{model.lr: [3.0e-3, 1.0e-2]}} (got {grid!r})")
    for k, vs in grid.items():
        if k.split(".")[0] in ("seeds", GRID) or not isinstance(vs, list) or not vs:
            raise WidthlabError(f"arm {arm}: grid key {k} must be a dotted recipe override with a non-empty list "
                                f"of values (got {vs!r})")
        if len({json.dumps(v, sort_keys=True) for v in vs}) != len(vs):
            raise WidthlabError(f"arm {arm}: grid key {k} lists a value twice ({vs}); list each once")
    short = short_names(list(grid))
    out = []
    for combo in itertools.product(*grid.values()):
        knobs = dict(zip(grid, combo))
        sub = copy.deepcopy(ov)
        for k, v in knobs.items():
            set_knob(sub, k, copy.deepcopy(v), overrides or {}, f"arm {arm}")
        name = arm + "".join(f"@{short[k]}={fmt_value(v)}" for k, v in knobs.items())
        if not re.fullmatch(ARM_NAME, name):
            raise WidthlabError(f"arm {arm}: the grid value in {name!r} does not make a safe directory name; use "
                                "numbers, true/false or words of letters, digits, '_', '-', '.'")
        out.append((name, knobs, sub))
    return out


def expand_grids(arms: dict[str, dict | None], overrides: dict | None = None) -> dict[str, dict]:
    """Arms with a `grid: {dotted key: [values]}` replaced by one sub-arm per combination of values, named
    `<arm>@<knob>=<value>...`; other arms, and each sub-arm's own `seeds`, as given."""
    out: dict[str, dict] = {}
    for arm, ov in arms.items():
        if GRID not in (ov or {}):
            out[arm] = dict(ov or {})
            continue
        for name, _, sub in grid_points(arm, ov, overrides):
            if name in out or name in arms:
                raise WidthlabError(f"arm {arm}: two grid values give the arm name {name!r} (values equal to 6 "
                                    "significant digits?); make them differ more, or rename an arm")
            out[name] = sub
    return out
