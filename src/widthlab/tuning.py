"""Grids over an arm's knobs, and the tuning protocol that keeps the selection of a value apart from its verdict.

Grids. In a sweep recipe an arm may list values for any of its dotted overrides, an intervention's init_args
included (a list index is a path component):

    signed_decay:
      model.interventions: [{class_path: widthlab.interventions.signed_decay.SignedRowDecay, init_args: {gamma: -1.0}}]
      grid: {model.interventions.0.init_args.gamma: [-0.1, -0.3, -1.0, -3.0, -10.0]}

`expand_grids` turns it into one ordinary arm per value (the cartesian product over several knobs), named
`signed_decay@gamma=-0.3` (`unitnorm@init_scale=3@lr=0.01` for two knobs): each has its own run directory, archive
entry, HPARAMS row (columns idea and knobs) and compare arm. '@' and '=' are safe in a directory name, a shell
command and TensorBoard's run filter (`^signed_decay@` is one idea, `@gamma=-0.3/` one value).

Selection. A tuning sweep runs the grids on tuning seeds at a few widths; a confirmation sweep names its archive and
a rule fixed before any run, `select: {from: docs/results/<tuning>, rule: mean_loss, widths: [8, 24]}`.
`confirm_arms` picks each idea's value by that rule and returns the confirmation's arms: its own (the baseline)
and each idea's winner under its sub-arm name, run on the confirmation's seeds at its widths. Those seeds must be
fresh: under the null (no value better than the baseline) a winner's tuning runs look better than they are, by the
selection alone; runs on new seeds are independent of it, so the confirmation's paired t keeps its level
(tests/test_selection.py measures both). The confirmation's sweep.json records the selection: the rule and, per
idea, its grid, tuning seeds and winner; a later call that changes any of it, or drops a recorded idea, is refused.
compare refuses tuning runs and shows the selection (scaling/selection.py).
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from widthlab import WidthlabError

GRID = "grid"
# An arm's name (letters, digits, '_', '-', '.'), a grid's sub-arm adds '@knob=value' per knob (a confirmation
# sweep runs a winner under that name).
ARM_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.]+=[A-Za-z0-9_.+-]+)*"
RULES = {"mean_loss": "the lowest mean {loss} over the tuning widths (each width's mean over its tuning seeds)"}
_SELECT_KEYS = {"from", "rule", "widths", "loss", "tie", "baseline"}


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


# ---------------------------------------------------------------------------------------------- selection

@dataclass
class Chosen:
    arms: dict[str, dict]                  # the confirmation's arms: its own, then each idea's winner
    record: dict                           # what sweep.json keeps under "select"
    notes: list[str] = field(default_factory=list)


def choose(means: list[float], distances: list[float], tie: float = 0.0) -> tuple[int, list[int]]:
    """The index of the lowest mean (a non-finite mean never wins), and the indices tied with it (within `tie`
    nats of it, itself included); a tie goes to the smallest distance from the untuned value, then the first."""
    ok = [i for i, m in enumerate(means) if math.isfinite(m)]
    if not ok:
        raise ValueError("no finite mean")
    best = min(means[i] for i in ok)
    tied = [i for i in ok if means[i] <= best + tie]
    return min(tied, key=lambda i: (distances[i], i)), tied


def distance(value: Any, default: Any) -> float:
    """How far a knob value is from its untuned default: |log ratio| for two numbers of one sign, else |difference|
    for numbers, else 0 (equal) or 1; 0 when there is no default (then the grid's order decides a tie)."""
    if default is None:
        return 0.0
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    if num(value) and num(default):
        if value * default > 0:
            return abs(math.log(value / default))
        return abs(value - default)
    return 0.0 if value == default else 1.0


def check_select(select: dict) -> dict:
    """The `select:` block with its defaults, or a one-line error."""
    if not isinstance(select, dict) or not isinstance(select.get("from"), str):
        raise WidthlabError("select: needs from: <tuning archive>, e.g. select: {from: docs/results/<tuning sweep>, "
                            "rule: mean_loss, widths: [8, 24]}")
    if bad := sorted(set(select) - _SELECT_KEYS):
        raise WidthlabError(f"select: unknown key(s) {bad}; the keys are {sorted(_SELECT_KEYS)}")
    out = {"from": select["from"], "rule": select.get("rule", "mean_loss"), "widths": select.get("widths"),
           "loss": select.get("loss", "val_loss_best"), "tie": float(select.get("tie", 0.0)),
           "baseline": select.get("baseline")}
    if out["rule"] not in RULES:
        raise WidthlabError(f"select.rule {out['rule']!r} is not known; use one of {sorted(RULES)}")
    if out["loss"] not in ("val_loss_best", "val_loss"):
        raise WidthlabError(f"select.loss must be val_loss_best or val_loss (got {out['loss']!r})")
    if out["tie"] < 0:
        raise WidthlabError(f"select.tie must be >= 0 nats (got {out['tie']})")
    return out


def read_archive(path: str) -> tuple[dict, list[dict]]:
    """A sweep archive's sweep.json and results.csv rows ({} and [] where absent)."""
    spec, rows = {}, []
    if os.path.isfile(os.path.join(path, "sweep.json")):
        with open(os.path.join(path, "sweep.json")) as f:
            spec = json.load(f)
    if os.path.isfile(os.path.join(path, "results.csv")):
        with open(os.path.join(path, "results.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    return spec, rows


def _loss(row: dict, key: str) -> float:
    """A run's loss for the rule; a diverged run, or one without the loss, counts as +inf (it never wins)."""
    try:
        x = float(row.get(key) or "nan")
    except ValueError:
        x = math.nan
    return x if row.get("status", "ok") in ("ok", "", None) and math.isfinite(x) else math.inf


def _cells(rows: list[dict], key: str) -> dict[tuple[str, int], dict[int, float]]:
    out: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        out.setdefault((r["arm"], int(r["d_model"])), {})[int(r["seed"])] = _loss(r, key)
    return out


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None  # strict JSON: a diverged value is null


def select_idea(idea: str, raw: dict, tuning: dict, cells: dict, rule: dict, recipe: dict) -> dict:
    """One idea's selection record from its tuning runs, or {"missing": n} while n runs at the tuning widths and
    seeds are not there yet."""
    points = grid_points(idea, raw, tuning.get("overrides") or {})
    seeds = list(raw.get("seeds") or tuning.get("seeds") or [])
    short = short_names(list(raw[GRID]))
    base = {k: v for k, v in raw.items() if k not in (GRID, "seeds")}
    default = {k: get_knob(k, base, tuning.get("overrides") or {}, recipe) for k in raw[GRID]}
    values, missing = [], 0
    for name, knobs, _ in points:
        per_width = []
        for w in rule["widths"]:
            got = [cells.get((name, w), {}).get(s) for s in seeds]
            missing += sum(x is None for x in got)
            per_width.append(sum(got) / len(got) if got and None not in got else math.nan)
        values.append({"arm": name, "knobs": {short[k]: v for k, v in knobs.items()}, "loss": per_width,
                       "mean": sum(per_width) / len(per_width),
                       "distance": sum(distance(v, default[k]) for k, v in knobs.items())})
    if missing:
        return {"missing": missing}
    try:
        win, tied = choose([v["mean"] for v in values], [v["distance"] for v in values], rule["tie"])
    except ValueError:
        raise WidthlabError(f"select: every value of {idea} diverged or has no {rule['loss']} in {rule['from']}; "
                            "widen its grid toward gentler values and re-run its tuning") from None
    for v in values:
        v["loss"], v["mean"] = [_num(x) for x in v["loss"]], _num(v["mean"])
    winner = points[win]
    return {"grid": raw[GRID], "seeds": seeds, "default": {short[k]: v for k, v in default.items()},
            "values": values, "winner": winner[0], "tied": [values[i]["arm"] for i in tied] if len(tied) > 1 else [],
            "overrides": {k: v for k, v in winner[2].items() if k != "seeds"}}


def baseline_tuning(path: str, rule: dict, recipe: dict, overrides: dict, base_ov: dict) -> dict:
    """The baseline's own tuning (an LR scan archive): each arm's overrides and mean loss per width, and which arm's
    settings the confirmation's baseline uses."""
    spec, rows = read_archive(path)
    if not rows or not spec.get("arms"):
        raise WidthlabError(f"select.baseline: {path} has no sweep.json with arms and results.csv; point it at the "
                            "archive of the scan that chose the baseline's settings (e.g. docs/results/ptb_id_lr_scan)")
    cells, widths = _cells(rows, rule["loss"]), sorted({int(r["d_model"]) for r in rows})
    arms = {a: {k: v for k, v in (ov or {}).items() if k not in ("seeds", GRID)} for a, ov in spec["arms"].items()}
    loss = {a: [_num(sum(c.values()) / len(c)) if (c := cells.get((a, w))) else None for w in widths] for a in arms}
    used = [a for a, ov in arms.items()
            if ov and all(get_knob(k, base_ov, overrides, recipe) == v for k, v in ov.items())]
    return {"from": path, "arms": arms, "widths": widths, "seeds": sorted({int(r["seed"]) for r in rows}),
            "loss": loss, "used": used[0] if used else None,
            "steps": (spec.get("overrides") or {}).get("trainer.max_steps"), "recipe": spec.get("recipe")}


def _same(key: str, a: Any, b: Any) -> bool:
    """A recorded select: value and today's: paths as the same directory (a trailing '/' is no change)."""
    return os.path.normpath(a) == os.path.normpath(b) if key in ("from", "baseline") and a and b else a == b


def confirm_arms(select: dict, arms: dict | None, seeds: list[int], recipe: str, overrides: dict | None,
                 recorded: dict | None = None) -> Chosen:
    """A confirmation sweep's arms: its own (the baseline; no grids) and, per idea of the tuning archive whose
    grid has every run at the tuning widths, the value chosen by the rule, named by its sub-arm. Refuses a
    confirmation seed that was a tuning seed, and a selection that differs from the one sweep.json recorded."""
    rule = check_select(select)
    src = rule["from"]
    tuning, rows = read_archive(src)
    if not rows:
        raise WidthlabError(f"nothing to select yet: run the tuning sweep first ({src} has no finished runs)")
    grids = {a: ov for a, ov in (tuning.get("arms") or {}).items() if isinstance(ov, dict) and GRID in ov}
    if not grids:
        raise WidthlabError(f"select.from: {src}/sweep.json has no arm with a grid: to select from; point it at a "
                            "tuning sweep's archive")
    tw = sorted(int(w) for w in tuning.get("widths") or [])
    rule["widths"] = sorted(rule["widths"] or tw)
    if off := [w for w in rule["widths"] if w not in tw]:
        raise WidthlabError(f"select.widths {off} were not tuning widths of {src} ({tw}); choose among those")
    own = {a: dict(ov or {}) for a, ov in (arms or {"baseline": {}}).items()}
    if gridded := [a for a, ov in own.items() if GRID in ov]:
        raise WidthlabError(f"arm {gridded[0]} has a grid: in a confirmation sweep (select:); grids belong in the "
                            "tuning sweep, and its winners are added here")
    with open(recipe) as f:
        fit_recipe = yaml.safe_load(f) or {}
    base_name = "baseline" if "baseline" in own else next(iter(own))
    base = baseline_tuning(rule["baseline"], rule, fit_recipe, overrides or {}, own[base_name]) \
        if rule["baseline"] else None
    # Fresh seeds: a seed the selection saw would carry its noise into the verdict (for the baseline too).
    ideas_seeds = {int(s) for ov in tuning["arms"].values() for s in (ov or {}).get("seeds") or tuning.get("seeds")
                   or []} | {int(r["seed"]) for r in rows}
    tuned = ideas_seeds | (set(base["seeds"]) if base else set())
    mine = {int(s) for s in seeds} | {int(s) for ov in own.values() for s in ov.get("seeds") or []}
    if clash := sorted(tuned & mine):
        raise WidthlabError(f"confirmation seed(s) {clash} were tuning seeds ({src}"
                            + (f" or {rule['baseline']}" if base else "") + "): give the confirmation fresh seeds, "
                            f"e.g. seeds: {[max(tuned | mine) + 1 + i for i in range(len(mine))]}")
    cells = _cells(rows, rule["loss"])
    ideas, notes = {}, []
    old = (recorded or {}).get("ideas") or {}
    if recorded and (changed := [k for k in ("from", "rule", "widths", "loss", "tie", "baseline")
                                 if not _same(k, recorded.get(k), rule[k])]):
        raise WidthlabError(f"select.{changed[0]} is {rule[changed[0]]!r}, but this sweep recorded its selection with "
                            f"{recorded.get(changed[0])!r}: a rule is fixed before the runs; start a new confirmation "
                            "sweep (new name and archive) to select by another")
    # A recorded idea stays, with its grid, tuning seeds and winner: dropping one after its runs would shrink the
    # verdicts' Holm family, and widening a grid re-selects on the same data. The first record stands.
    if gone := [i for i in old if i not in grids]:
        raise WidthlabError(f"select: {gone[0]} was selected and recorded by this sweep, but {src} no longer has its "
                            "grid: an idea once selected stays in its confirmation; restore its arm in the tuning "
                            "recipe, or start a new confirmation sweep (new name and archive)")
    for idea, raw in grids.items():
        now = {"grid": raw[GRID], "seeds": list(raw.get("seeds") or tuning.get("seeds") or [])}
        if idea in old and (diff := [k for k in now if old[idea].get(k) != now[k]]):
            raise WidthlabError(f"select: {idea}'s {diff[0]} in {src} is now {now[diff[0]]}, but this sweep recorded "
                                f"{old[idea].get(diff[0])}: the tuning changed after the selection; restore it, or "
                                "start a new confirmation sweep (new name and archive)")
        got = select_idea(idea, raw, tuning, cells, rule, fit_recipe)
        if "missing" in got:
            if idea in old:  # recorded before: the confirmation keeps it
                ideas[idea] = old[idea]
                continue
            run = tuning.get("command") or "python -m train sweep --config <tuning recipe>"
            notes.append(f"select: {idea} not selected yet ({got['missing']} tuning run(s) missing at d = "
                         f"{rule['widths']}): {run} --only '[{idea}]'")
            continue
        if idea in old and (diff := [k for k in ("winner", "overrides") if old[idea].get(k) != got[k]]):
            raise WidthlabError(f"select: {idea}'s {diff[0]} in {src} is now {got[diff[0]]}, but this sweep recorded "
                                f"{old[idea].get(diff[0])}: the tuning runs changed after the selection; restore "
                                "them, or start a new confirmation sweep (new name and archive)")
        ideas[idea] = old.get(idea) or got
    if not ideas:
        raise WidthlabError(f"nothing to select yet: run the tuning sweep first ({src} has no idea with every "
                            f"value run at d = {rule['widths']})")
    if clash := [v["winner"] for v in ideas.values() if v["winner"] in own]:
        raise WidthlabError(f"arm {clash[0]} is both in arms: and a tuning winner; rename the arm")
    for idea, v in ideas.items():
        best = next(x for x in v["values"] if x["arm"] == v["winner"])
        notes.append(f"select: {idea} → {v['winner']} (mean {rule['loss']} {best['mean']:.4f} over d = "
                     f"{rule['widths']}, {len(v['values'])} values" + (f"; a tie with {len(v['tied']) - 1} other(s), "
                     "broken toward the untuned value" if v["tied"] else "") + ")")
    record = {**rule, "tuning": {"recipe": tuning.get("recipe"), "overrides": tuning.get("overrides") or {},
                                 "command": tuning.get("command"), "seeds": sorted(ideas_seeds)},
              "baseline_tuning": base, "ideas": ideas}
    return Chosen({**own, **{v["winner"]: v["overrides"] for v in ideas.values()}}, record, notes)
