"""Tests between an arm and the baseline at one width (paired t by seed, else Welch), Holm's correction, and the
curve-free verdict per arm over the widths (a paired t over seeds, Holm over the arms or a confirmation's family)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from widthlab.scaling.inference import Design


@dataclass
class Test:
    diff: float      # mean(arm) − mean(baseline)
    t: float
    dof: float
    p: float         # two-sided
    kind: str        # "paired" (by seed), "welch", or "" (too few seeds)
    n: int           # pairs (paired) or runs of the arm (welch)


def compare_cell(arm: dict[int, float], base: dict[int, float]) -> Test:
    """Arm vs baseline at one width: paired t over shared seeds when there are ≥ 2 (seeds share init and data
    order, so the pairing removes that noise), else Welch's t when both sides have ≥ 2 seeds."""
    a, b = np.array(list(arm.values())), np.array(list(base.values()))
    diff = float(a.mean() - b.mean())
    shared = sorted(set(arm) & set(base))
    if len(shared) >= 2:
        x = np.array([arm[s] - base[s] for s in shared])
        if x.std() == 0:
            return Test(float(x.mean()), float("nan"), len(x) - 1, float("nan"), "paired", len(x))
        r = stats.ttest_rel([arm[s] for s in shared], [base[s] for s in shared])
        return Test(float(x.mean()), float(r.statistic), len(x) - 1, float(r.pvalue), "paired", len(x))
    if len(a) >= 2 and len(b) >= 2 and (a.var() + b.var()) > 0:
        r = stats.ttest_ind(a, b, equal_var=False)
        return Test(diff, float(r.statistic), float(r.df), float(r.pvalue), "welch", len(a))
    return Test(diff, float("nan"), float("nan"), float("nan"), "", len(a))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaNs stay NaN and do not count toward the family size)."""
    p = np.asarray(p, float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p[j]))
        out[j] = running
    return out.tolist()


@dataclass
class Pooled:
    diff: float      # mean over the widths of arm − baseline, nats
    lo: float
    hi: float
    p: float         # two-sided, H0: diff = 0
    dof: float       # seeds − 1
    widths: list
    seeds: list      # the seeds both sides ran at every one of the widths


def pooled_delta(arm: dict[float, dict[int, float]], base: dict[float, dict[int, float]],
                 ci: float = 0.95) -> Pooled | None:
    """Arm vs baseline over every width both have, {width: {seed: loss}} each: the equal-weight mean over those
    widths of arm − baseline, as a paired t over seeds. Each seed that both sides ran at every one of the widths
    gives one number, D_s = mean over the widths of arm(m, s) − base(m, s). Seeds are independent draws, so the D_s
    are too, whatever a seed does (an effect shared by both sides, one that differs by width, one the intervention
    changes) and however the noise differs across widths: the t interval on S − 1 dof needs only D_s to be
    normal, which a mean over widths helps. That is why it is preferred to a model with more dof (a two-way model
    with shared seed effects, or per-width pairs taken as independent): each of those assumes a seed structure
    that 2–3 seeds cannot check, and a referee's simulation found them under-covering (0.83–0.90) when the
    assumption fails. The price: 1 dof with two seeds. The baseline's extra seeds do not enter. None with fewer
    than two such seeds."""
    widths = sorted(set(arm) & set(base))
    if not widths:
        return None
    seeds = sorted(set.intersection(*(set(arm[w]) & set(base[w]) for w in widths)))
    if len(seeds) < 2:
        return None
    d = np.array([np.mean([arm[w][s] - base[w][s] for w in widths]) for s in seeds])
    diff, dof = float(d.mean()), len(seeds) - 1
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    if not np.isfinite(se) or se <= 1e-12 * max(1.0, float(np.abs(d).max())):  # identical D_s: no scale to test on
        return Pooled(diff, diff, diff, float("nan"), dof, widths, seeds)
    q = stats.t.ppf(0.5 + ci / 2, dof)
    return Pooled(diff, diff - q * se, diff + q * se, float(2 * stats.t.sf(abs(diff) / se, dof)), dof, widths,
                  seeds)


# Within this fraction of the baseline's params and FLOPs (counted as matmul FLOPs) an arm counts as costing the
# same. The baseline's loss falls ≈ 0.4 nats per e-fold of params at these widths, so 5 % more params is worth
# ≈ 0.02 nats; 0.5 % is worth ≈ 0.002. The built-in equal-cost arms differ from the baseline by < 0.01 % (a learned
# scalar), so for them the gap is worth ≈ 0; an arm nearer the 0.5 % edge would need its interval compared with
# 0.002 nats.
SAME_COST = 0.005


def pooled_verdicts(d: Design, tokens: dict[tuple[str, float], float] | None = None,
                    family: list[str] | None = None, failed: dict[str, str] | None = None) -> dict:
    """Per arm: the curve-free verdict at equal width, the mean over the shared widths of arm − baseline by a
    paired t over seeds (pooled_delta), Holm-adjusted over a confirmation's fixed `family` (see below) or else over
    the arms; and whether the arm's params and FLOPs stay within SAME_COST of the baseline's at every one of those
    widths (then equal width is also equal params and FLOPs). `tokens` ((arm, width) → training tokens): an arm
    trained on other tokens than the baseline at some shared width (a budget rule counts its extra parameters) gets
    its range of ratios as token_ratio."""
    b, out, tokens = d.baseline, {}, tokens or {}
    for a in d.arms[1:]:
        ws = [w for w in d.widths(a) if (b, w) in d.cells]
        r = pooled_delta({w: d.cells[(a, w)] for w in ws}, {w: d.cells[(b, w)] for w in ws})
        if r is None:
            continue
        ratio = {k: [d.costs[k].get((a, w), math.nan) / d.costs[k].get((b, w), math.nan) for w in r.widths]
                 for k in ("N", "C") if k in d.costs}
        ratio = {k: v for k, v in ratio.items() if all(math.isfinite(x) for x in v)}  # a cost some run lacks: unknown
        out[a] = {**vars(r), "widths": [int(w) for w in r.widths], "seeds": [int(s) for s in r.seeds],
                  "cost_ratio": {k: [min(v), max(v)] for k, v in ratio.items()},
                  "same_cost": len(ratio) == 2 and all(abs(x - 1) <= SAME_COST for v in ratio.values() for x in v)}
        tok = [tokens.get((a, float(w)), math.nan) / tokens.get((b, float(w)), math.nan) for w in r.widths]
        if all(math.isfinite(x) for x in tok) and any(x != 1 for x in tok):  # equal width, not equal data
            out[a]["token_ratio"] = [min(tok), max(tok)]
    # A confirmation's family is fixed in advance: Holm over all of it, a member without a usable p (not run yet,
    # no test, or diverged) counting as p = 1, so the family never shrinks with the data; verdicts stay provisional
    # until every member has one. Other arms (or any sweep without a selection): Holm over the arms with a p.
    fam, failed = list(family or []), failed or {}
    usable = {a: out[a]["p"] for a in fam if a in out and a not in failed and not math.isnan(out[a]["p"])}
    adjusted = dict(zip(fam, holm([usable.get(a, 1.0) for a in fam]))) if fam else {}
    rest = [a for a in out if a not in adjusted]
    adjusted.update(zip(rest, holm([out[a]["p"] for a in rest])))
    for a, v in out.items():
        p = v["p_holm"] = adjusted[a]
        v["word"] = ("unavailable" if math.isnan(p) or math.isnan(v["p"]) else  # a member's nan p counted as 1
                     "lowers" if p < 0.05 and v["diff"] < 0 else "raises" if p < 0.05 else "does not detectably change")
        if a in fam:
            # a diverged member is settled (it counts as failing), so it does not keep the others provisional
            v["family"] = {"size": len(fam), "with_verdict": len(usable) + len(set(fam) & set(failed))}
            if a in failed:
                v["word"], v["failed"] = "diverged", failed[a]
    return out
