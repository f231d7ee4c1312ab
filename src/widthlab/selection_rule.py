"""Selection: which value of each idea's grid a confirmation sweep runs, by a rule fixed before any run.

A tuning sweep runs the grids on tuning seeds at a few widths; a confirmation sweep names its archive and a rule
fixed before any run, `select: {from: docs/results/<tuning>, rule: mean_loss, widths: [8, 24]}`. `confirm_arms`
picks each idea's value by that rule and returns the confirmation's arms: its own (the baseline) and each idea's
winner under its sub-arm name, run on the confirmation's seeds at its widths. Those seeds must be fresh: under the
null (no value better than the baseline) a winner's tuning runs look better than they are, by the selection alone;
runs on new seeds are independent of it, so the confirmation's paired t keeps its level (tests/test_selection.py
measures both).

The baseline gets the ideas' tuning budget from a grid of its own in the same tuning sweep (an arm named like the
confirmation's baseline, e.g. `baseline: {grid: {model.lr: [...]}}`): its winner by the same rule is what the
confirmation's `baseline` arm runs with (the arm keeps its name), so every idea is judged against the tuned
baseline.

The confirmation's sweep.json records the selection: the rule and, per idea and for the baseline, its grid, tuning
seeds and winner; a later call that changes any of it, or drops a recorded idea, is refused. `select.family`
names the ideas to confirm (the verdicts' Holm family, fixed before the tuning results are read); without it,
every idea with a grid in the tuning archive when the selection is first recorded. compare refuses tuning
runs and shows the selection (scaling/selection.py).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from widthlab import WidthlabError
from widthlab.tuning import GRID, get_knob, grid_points, short_names

RULES = {"mean_loss": "the lowest mean {loss} over the tuning widths (each width's mean over its tuning seeds)"}
_SELECT_KEYS = {"from", "rule", "widths", "loss", "tie", "baseline", "family"}


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
           "baseline": select.get("baseline"), "family": select.get("family")}
    fam = out["family"]
    if fam is not None and (not isinstance(fam, list) or not fam or not all(isinstance(i, str) for i in fam)):
        raise WidthlabError(f"select.family must list the ideas to confirm, e.g. family: [signed_decay, frame] (got "
                            f"{fam!r})")
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


def _select_one(idea: str, raw: dict, old: dict | None, tuning: dict, cells: dict, rule: dict, recipe: dict) -> dict:
    """One grid's selection record, the recorded one if there is one: a grid, tuning seeds, winner or overrides in
    the tuning archive that differ from the record are refused (the tuning changed after the selection); while runs
    are missing, the record, else {"missing": n}."""
    src = rule["from"]
    now = {"grid": raw[GRID], "seeds": list(raw.get("seeds") or tuning.get("seeds") or [])}
    if old and (diff := [k for k in now if old.get(k) != now[k]]):
        raise WidthlabError(f"select: {idea}'s {diff[0]} in {src} is now {now[diff[0]]}, but this sweep recorded "
                            f"{old.get(diff[0])}: the tuning changed after the selection; restore it, or start a new "
                            "confirmation sweep (new name and archive)")
    got = select_idea(idea, raw, tuning, cells, rule, recipe)
    if "missing" in got:
        return old or got
    if old and (diff := [k for k in ("winner", "overrides") if old.get(k) != got[k]]):
        raise WidthlabError(f"select: {idea}'s {diff[0]} in {src} is now {got[diff[0]]}, but this sweep recorded "
                            f"{old.get(diff[0])}: the tuning runs changed after the selection; restore them, or start "
                            "a new confirmation sweep (new name and archive)")
    return old or got


def _note(name: str, v: dict, rule: dict) -> str:
    best = next(x for x in v["values"] if x["arm"] == v["winner"])
    return (f"select: {name} → {v['winner']} (mean {rule['loss']} {best['mean']:.4f} over d = {rule['widths']}, "
            f"{len(v['values'])} values" + (f"; a tie with {len(v['tied']) - 1} other(s), broken toward the untuned "
                                             "value" if v["tied"] else "") + ")")


def _design(seeds: list[int], widths: list[int] | None, own: dict[str, dict]) -> dict:
    """The confirmation's own design as sweep.json records it: its seeds, widths and each own arm's seeds."""
    return {"seeds": sorted(int(s) for s in seeds), "widths": sorted(int(w) for w in widths or []),
            "arm_seeds": {a: sorted(int(s) for s in ov.get("seeds") or seeds) for a, ov in own.items()}}


def _check_design(now: dict, old: dict | None) -> None:
    """A later call may run part of the recorded design (fewer seeds or widths now), never more or other: seeds
    added once results are seen make the number of seeds depend on them, which biases the verdict (docs/statistics.md
    §5: a third seed after a two-seed miss says *lowers* 4.4 % of the time, not 2.5 %)."""
    if not old:
        return
    extra = {"seeds": sorted(set(now["seeds"]) - set(old.get("seeds") or [])),
             "widths": sorted(set(now["widths"]) - set(old.get("widths") or []))}
    for a, ss in now["arm_seeds"].items():
        extra[f"arm {a}'s seeds"] = sorted(set(ss) - set((old.get("arm_seeds") or {}).get(a, old.get("seeds") or [])))
    if what := [k for k, v in extra.items() if v]:
        raise WidthlabError(f"select: this confirmation recorded its design with its selection (seeds "
                            f"{old.get('seeds')}, widths {old.get('widths')}), and {what[0]} {extra[what[0]]} are not "
                            "in it: adding seeds or widths after seeing results biases the verdict; start a new "
                            "confirmation sweep (new name and archive) with the larger design")


def confirm_arms(select: dict, arms: dict | None, seeds: list[int], recipe: str, overrides: dict | None,
                 recorded: dict | None = None, widths: list[int] | None = None) -> Chosen:
    """A confirmation sweep's arms: its own (the baseline; no grids) and, per idea of the tuning archive whose
    grid has every run at the tuning widths, the value chosen by the rule, named by its sub-arm. A grid of the
    baseline's own (an arm of its name in the tuning sweep) is its tuning at the ideas' budget: the confirmation's
    baseline runs at that grid's winner (chosen by the same rule) and keeps its name, so every idea is judged
    against it. Refuses a confirmation seed that was a tuning seed, a selection that differs from the one
    sweep.json recorded, and seeds or widths beyond the design recorded with it (part of it is accepted)."""
    rule = check_select(select)
    src = rule["from"]
    tuning, rows = read_archive(src)
    if not rows:
        raise WidthlabError(f"nothing to select yet: run the tuning sweep first ({src} has no finished runs)")
    own = {a: dict(ov or {}) for a, ov in (arms or {"baseline": {}}).items()}
    if gridded := [a for a, ov in own.items() if GRID in ov]:
        raise WidthlabError(f"arm {gridded[0]} has a grid: in a confirmation sweep (select:); grids belong in the "
                            "tuning sweep, and its winners are added here")
    base_name = "baseline" if "baseline" in own else next(iter(own))
    grids = {a: ov for a, ov in (tuning.get("arms") or {}).items() if isinstance(ov, dict) and GRID in ov}
    base_grid = grids.pop(base_name, None)  # the baseline's own tuning, beside the ideas'
    if not grids:
        raise WidthlabError(f"select.from: {src}/sweep.json has no idea's arm with a grid: to select from; point it "
                            "at a tuning sweep's archive")
    named = rule["family"] is not None
    if named:  # the verdicts' Holm family, fixed in the recipe: other tuned ideas stay out
        if off := [i for i in rule["family"] if i not in grids]:
            raise WidthlabError(f"select.family: {off[0]} has no grid in {src} (its ideas: {sorted(grids)})")
        grids = {i: grids[i] for i in rule["family"]}
    elif not (recorded and recorded.get("family") is None):  # (a record from before families were recorded: as is)
        rule["family"] = list(grids)  # every gridded idea, fixed now, not only those whose tuning has finished
    tw = sorted(int(w) for w in tuning.get("widths") or [])
    rule["widths"] = sorted(rule["widths"] or tw)
    if off := [w for w in rule["widths"] if w not in tw]:
        raise WidthlabError(f"select.widths {off} were not tuning widths of {src} ({tw}); choose among those")
    with open(recipe) as f:
        fit_recipe = yaml.safe_load(f) or {}
    # Fresh seeds: a seed the selection saw would carry its noise into the verdict (for the baseline too).
    ideas_seeds = {int(s) for ov in tuning["arms"].values() for s in (ov or {}).get("seeds") or tuning.get("seeds")
                   or []} | {int(r["seed"]) for r in rows}
    mine = {int(s) for s in seeds} | {int(s) for ov in own.values() for s in ov.get("seeds") or []}
    scan = read_archive(rule["baseline"])[1] if rule["baseline"] else []  # an earlier scan of the baseline's
    tuned = ideas_seeds | {int(r["seed"]) for r in scan}
    if clash := sorted(tuned & mine):
        raise WidthlabError(f"confirmation seed(s) {clash} were tuning seeds ({src}"
                            + (f" or {rule['baseline']}" if rule["baseline"] else "") + "): give the confirmation "
                            f"fresh seeds, e.g. seeds: {[max(tuned | mine) + 1 + i for i in range(len(mine))]}")
    design = _design(seeds, widths, own)
    _check_design(design, (recorded or {}).get("design"))
    cells = _cells(rows, rule["loss"])
    ideas, notes = {}, []
    old = (recorded or {}).get("ideas") or {}
    if recorded and (changed := [k for k in ("from", "rule", "widths", "loss", "tie", "baseline", "family")
                                 if (named or k != "family") and not _same(k, recorded.get(k), rule[k])]):
        raise WidthlabError(f"select.{changed[0]} is {rule[changed[0]]!r}, but this sweep recorded its selection with "
                            f"{recorded.get(changed[0])!r}: a rule is fixed before the runs; start a new confirmation "
                            "sweep (new name and archive) to select by another")
    # the tuning's own command, without an --only it was run with (the notes below name the arm to run)
    run = re.sub(r"\s--only(\s+|=)('[^']*'|\"[^\"]*\"|\S+)", "",
                 tuning.get("command") or "python -m train sweep --config <tuning recipe>")
    # The comparator: tuned here, or not, as recorded (its runs were made with those settings).
    old_base = (recorded or {}).get("tuned_baseline")
    if recorded and old_base and base_grid is None:
        raise WidthlabError(f"select: {base_name} was selected from its grid in {src} and recorded by this sweep, but "
                            f"{src} no longer has that grid; restore its arm in the tuning recipe, or start a new "
                            "confirmation sweep (new name and archive)")
    if recorded and not old_base and base_grid is not None:
        raise WidthlabError(f"select: {src} now tunes {base_name} (its arm has a grid), but this sweep recorded its "
                            f"selection with an untuned {base_name} and ran it so; start a new confirmation sweep (new "
                            "name and archive) to judge against the tuned one")
    tuned_base = None
    if base_grid is not None:
        tuned_base = _select_one(base_name, base_grid, old_base, tuning, cells, rule, fit_recipe)
        if "missing" in tuned_base:
            raise WidthlabError(f"select: {base_name}'s own tuning has {tuned_base['missing']} run(s) missing at d = "
                                f"{rule['widths']} in {src}; every idea is judged against its winner, so finish it "
                                f"first: {run} --only '[{base_name}]'")
        if clash := sorted(set(tuned_base["overrides"]) & set(own[base_name])):
            raise WidthlabError(f"arm {base_name} sets {clash[0]} in the confirmation, but its grid in {src} selects "
                                f"it; drop {clash[0]} from the confirmation's arms")
        tuned_base = {**tuned_base, "arm": base_name}
        own[base_name] = {**own[base_name], **tuned_base["overrides"]}
        notes.append(_note(base_name, tuned_base, rule) + f": the confirmation's {base_name} runs with "
                     f"{tuned_base['overrides']}")
    base = baseline_tuning(rule["baseline"], rule, fit_recipe, overrides or {}, own[base_name]) \
        if rule["baseline"] else None
    # A recorded idea stays, with its grid, tuning seeds and winner: dropping one after its runs would shrink the
    # verdicts' Holm family, and widening a grid re-selects on the same data. The first record stands.
    fixed = (recorded or {}).get("family") or []
    if gone := [i for i in [*old, *fixed] if i not in grids]:
        raise WidthlabError(f"select: {gone[0]} is in this sweep's recorded selection, but {src} no longer has its "
                            "grid: an idea once selected stays in its confirmation; restore its arm in the tuning "
                            "recipe, or start a new confirmation sweep (new name and archive)")
    if fixed and (new := [i for i in grids if i not in fixed]):
        raise WidthlabError(f"select: {new[0]} has a grid in {src} but is not in the Holm family this sweep recorded "
                            f"({', '.join(fixed)}): the family is fixed with the selection; start a new confirmation "
                            "sweep (new name and archive) to judge it")
    for idea, raw in grids.items():
        got = _select_one(idea, raw, old.get(idea), tuning, cells, rule, fit_recipe)
        if "missing" in got:
            notes.append(f"select: {idea} not selected yet ({got['missing']} tuning run(s) missing at d = "
                         f"{rule['widths']}): {run} --only '[{idea}]'")
            continue
        ideas[idea] = got
    if not ideas:  # (the baseline's winner, when known, is what the ideas' tuning arms may set meanwhile)
        raise WidthlabError(f"nothing to select yet: run the tuning sweep first ({src} has no idea with every "
                            f"value run at d = {rule['widths']})" + (
                                f"; {base_name}'s own tuning selected {tuned_base['winner']} "
                                f"({tuned_base['overrides']})" if tuned_base else ""))
    if clash := [v["winner"] for v in ideas.values() if v["winner"] in own]:
        raise WidthlabError(f"arm {clash[0]} is both in arms: and a tuning winner; rename the arm")
    notes += [_note(idea, v, rule) for idea, v in ideas.items()]
    # What the baseline's grid tuned (its LR) is shared by an idea that neither grids nor sets it: the idea runs at
    # the tuned value, not at the recipe's one the baseline's own tuning passed over (else the verdict would
    # compare LRs). Its knob was chosen at the setting its tuning arm ran with; set the knob there to tune at it.
    for idea, v in ideas.items():
        raw = grids[idea]
        inherit = {k: x for k, x in ((tuned_base or {}).get("overrides") or {}).items()
                   if k not in raw and k not in raw[GRID]}
        v = ideas[idea] = {k: x for k, x in v.items() if k != "inherits"}
        if idea in old and (old[idea].get("inherits") or {}) != inherit:  # its runs were made with the recorded one
            raise WidthlabError(f"select: {idea} would now run with the tuned {base_name}'s {inherit or 'nothing'}, "
                                f"but this sweep recorded {old[idea].get('inherits') or 'nothing'} and ran it so; "
                                "start a new confirmation sweep (new name and archive)")
        if odd := {k: raw[k] for k in ((tuned_base or {}).get("overrides") or {})
                   if k in raw and raw[k] != tuned_base["overrides"][k]}:
            notes.append(f"select: {idea} sets {odd}, the tuned {base_name} runs with "
                         f"{ {k: tuned_base['overrides'][k] for k in odd} }: its verdict compares those too")
        if inherit:
            v["inherits"] = inherit
            notes.append(f"select: {v['winner']} runs with the tuned {base_name}'s {inherit} (not in its grid; its "
                         "tuning ran at the recipe's value)")
    record = {**rule, "tuning": {"recipe": tuning.get("recipe"), "overrides": tuning.get("overrides") or {},
                                 "command": tuning.get("command"), "seeds": sorted(ideas_seeds)},
              "baseline_tuning": base, "tuned_baseline": tuned_base, "ideas": ideas,
              "design": (recorded or {}).get("design") or design}
    return Chosen({**own, **{v["winner"]: {**v["overrides"], **(v.get("inherits") or {})} for v in ideas.values()}},
                  record, notes)
