"""The selection behind a confirmation sweep, for `compare`: read from its sweep.json, shown beside the verdict.

A tuning sweep (an arm with a grid:, widthlab.tuning) only selects values (widthlab.selection_rule); its runs are
never judged: the winner's tuning runs are biased toward "lowers" by the selection itself (tests/test_selection.py
measures how much), so compare refuses them and judges the confirmation sweep, whose sweep.json records what was
selected, from which values, by which rule. This module turns that record into report.md's Selection section.
"""
from __future__ import annotations

import json
from pathlib import Path

from widthlab import WidthlabError
from widthlab.selection_rule import RULES
from widthlab.tuning import GRID, fmt_value


def _sweep_json(p: Path) -> dict:
    f = (p.parent if p.is_file() or p.suffix == ".csv" else p) / "sweep.json"  # a results.csv: its sweep dir's
    try:
        return dict(json.loads(f.read_text())) if f.is_file() else {}
    except (ValueError, TypeError):
        raise WidthlabError(f"{f} is not valid JSON; re-run the sweep command to rewrite it") from None


def selections(paths: list[str]) -> list[dict]:
    """The selection records (sweep.json's select) of the compared sweeps; a tuning sweep among them is refused."""
    out = []
    for p in map(Path, paths):
        js = _sweep_json(p)
        if any(isinstance(ov, dict) and GRID in ov for ov in (js.get("arms") or {}).values()):
            raise WidthlabError(f"{p} is a tuning sweep (its arms have grids): its runs select values and are never "
                                "judged; compare the confirmation sweep that selects from it (select: {from: "
                                f"{p}, ...}}), whose report shows the tuning losses")
        if isinstance(js.get("select"), dict):
            out.append(js["select"])
    return out


def _loss(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "diverged"


def _knobs(knobs: dict) -> str:
    return ", ".join(f"{k} = {fmt_value(v)}" for k, v in knobs.items())


def _edge(grid: dict | None, knobs: dict) -> str:
    """', at the edge of its grid in <knob>' when the winner takes the lowest or highest of a knob's ≥ 3 numeric
    values: then the best value may lie beyond the grid, and the idea was not tuned in that knob, only bounded.
    Other values beside the numbers (null: a width-dependent default such as unit-norm's √m) are not on the axis."""
    num = lambda y: isinstance(y, (int, float)) and not isinstance(y, bool)  # noqa: E731
    at = [k for (_, vals), (k, val) in zip((grid or {}).items(), knobs.items())
          if num(val) and len(xs := [y for y in vals if num(y)]) >= 3 and val in (min(xs), max(xs))]
    return f", at the edge of its grid in {', '.join(at)}: the best value may lie beyond it" if at else ""


def selection_lines(records: list[dict] | None) -> list[str]:
    """report.md's Selection section: per idea every value tried with its tuning losses, the winner and the rule;
    the baseline's own tuning (its grid in the same tuning sweep, first; or an earlier scan) beside them."""
    lines = []
    for rec in records or []:
        ws, tb, tuning = rec.get("widths") or [], rec.get("tuned_baseline"), rec.get("tuning") or {}
        base = tb.get("arm", "baseline") if tb else None
        ideas = {**({base: tb} if tb else {}), **(rec.get("ideas") or {})}
        rule = RULES.get(rec.get("rule"), str(rec.get("rule"))).format(loss=f"`{rec.get('loss')}`")
        lines += ["", "## Selection (tuning runs: shown, never judged)", "",
                  f"Each tuned arm above is the value its idea's grid chose before these runs, by a rule fixed in the "
                  f"confirmation recipe: {rule}, at d = {', '.join(map(str, ws))} on tuning seed(s) "
                  f"{tuning.get('seeds')} of `{rec.get('from')}`"
                  + (f"; values within {rec['tie']:g} nats of the lowest tie" if rec.get("tie") else "")
                  + "; a tie goes to the value closest to the untuned one (|log ratio|), then to the first listed. "
                  + (f"The ideas confirmed (the Holm family, fixed with the selection before any confirmation run): "
                     f"{', '.join(rec['family'])}. " if rec.get("family") else "")
                  + "The verdicts above use only this sweep's runs, on seeds the tuning never used: a winner's own "
                  "tuning runs are biased toward *lowers* by the selection (tests/test_selection.py)."
                  + (f" The baseline had the ideas' budget: its own grid ({', '.join(tb.get('grid') or {})}) in "
                     f"the same tuning sweep, chosen by the same rule; this sweep's `{base}` arm runs with its "
                     "winner, and every verdict above is against it." if tb else ""), ""]
        if tuning.get("command") or tuning.get("overrides"):
            lines += [f"Tuning runs: fit recipe `{tuning.get('recipe')}` with {tuning.get('overrides')}, made by "
                      f"`{tuning.get('command') or 'a command not recorded'}`.", ""]
        lines += ["| idea | value | " + " | ".join(f"d = {w}" for w in ws) + " | mean | |",
                  "|---|---|" + "---|" * len(ws) + "---|---|"]
        for idea, v in ideas.items():
            for i, x in enumerate(v.get("values") or []):
                untuned = all(v.get("default", {}).get(k) == val for k, val in x["knobs"].items())
                mark = ("**selected**" + (f": the `{base}` arm" if idea == base else "")
                        + (" (tie)" if v.get("tied") else "") + _edge(v.get("grid"), x["knobs"])
                        if x["arm"] == v.get("winner") else "tied" if x["arm"] in (v.get("tied") or []) else "")
                mark += (", " if mark else "") + "untuned value" if untuned else ""
                lines.append(f"| {idea if i == 0 else ''} | {_knobs(x['knobs'])} | "
                             + " | ".join(_loss(y) for y in x["loss"]) + f" | {_loss(x['mean'])} | {mark} |")
        if shared := [(v["winner"], v["inherits"]) for v in (rec.get("ideas") or {}).values() if v.get("inherits")]:
            lines += [""] + [f"`{w}` runs with the tuned `{base}`'s {_knobs(x)}: not in its grid, so it shares the "
                             "baseline's tuned value (its own tuning ran at the recipe's)." for w, x in shared]
        lines += _baseline(rec.get("baseline_tuning"), bool(tb))
    return lines


def _baseline(b: dict | None, tuned: bool = False) -> list[str]:
    """The baseline's tuning budget when it has no grid of its own in the tuning sweep: its scan's values, per-width
    losses and the value it runs with (with a grid: the scan, if given, as context)."""
    if not b:
        return [] if tuned else ["", "The baseline was not tuned here: no grid of its own in the tuning sweep and no "
                                     "select.baseline scan, so an idea with `model.lr` in its grid had a tuning budget "
                                     "the baseline did not."]
    ws = b.get("widths") or []
    lines = ["", (f"An earlier scan of the baseline's settings, `{b.get('from')}` (context; its value is its grid's "
                  "above)" if tuned else f"The baseline's own tuning, `{b.get('from')}`")
             + f": {len(b.get('arms') or {})} values at d = {', '.join(map(str, ws))} on seed(s) {b.get('seeds')}"
             + (f", {b['steps']} steps" if b.get("steps") else "") + "; the baseline runs with the marked one.", "",
             "| scan arm | settings | " + " | ".join(f"d = {w}" for w in ws) + " | mean | |",
             "|---|---|" + "---|" * len(ws) + "---|---|"]
    for a, ov in (b.get("arms") or {}).items():
        loss = (b.get("loss") or {}).get(a) or []
        ok = [y for y in loss if isinstance(y, (int, float))]
        mean = sum(ok) / len(ok) if ok and len(ok) == len(loss) else None
        lines.append(f"| {a} | {_knobs(ov)} | " + " | ".join(_loss(y) for y in loss)
                     + f" | {_loss(mean)} | {'**the baseline**' if a == b.get('used') else ''} |")
    return lines


def holm_family(chosen: list[dict] | None, runs: list[dict]) -> tuple[list[str], dict[str, str]]:
    """A confirmation's Holm family, fixed with its selection: per idea of select.family (else every recorded
    idea) its winner's arm, or the idea's own name while it has none yet; and the family arms with a diverged run
    (arm → why), which count against the idea."""
    fam: list[str] = []
    for rec in chosen or []:
        ideas = rec.get("ideas") or {}
        fam += [(ideas.get(i) or {}).get("winner", i) for i in rec.get("family") or list(ideas)]
    fam = list(dict.fromkeys(fam))  # several compared sweeps may record the same selection: each idea counts once
    failed = {r["arm"]: f"{r['_why']} at d = {r['d_model']}, seed {r.get('seed')}" for r in runs
              if r.get("arm") in fam and str(r.get("_why", "")).startswith("diverged")}
    return fam, failed
