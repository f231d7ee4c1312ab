"""Tests between an arm and the baseline at one width (paired t by seed, else Welch) and Holm's correction."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


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
