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


@dataclass
class Pooled:
    diff: float      # mean over the shared widths of mean(arm) − mean(baseline), nats
    lo: float
    hi: float
    p: float         # two-sided, H0: diff = 0
    dof: float      # Satterthwaite
    widths: list


def _design(sides: list[dict[float, dict[int, float]]], widths: list, seeds: list) -> tuple:
    """Rows of the two-way model: one indicator per (side, width) cell, seed effects relative to the first seed."""
    n_cells = len(sides) * len(widths)
    rows, y, side_of = [], [], []
    for k, side in enumerate(sides):
        for j, w in enumerate(widths):
            for s, v in side[w].items():
                x = np.zeros(n_cells + len(seeds) - 1)
                x[k * len(widths) + j] = 1.0
                if seeds.index(s) > 0:
                    x[n_cells + seeds.index(s) - 1] = 1.0
                rows.append(x)
                y.append(v)
                side_of.append(k)
    return np.array(rows), np.array(y), np.array(side_of)


def _own_variance(side: dict[float, dict[int, float]], widths: list) -> tuple[float, int]:
    """σ² of one side's runs about its own two-way fit (cells + its seed effects), and its dof."""
    seeds = sorted({s for w in widths for s in side[w]})
    X, y, _ = _design([side], widths, seeds)
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(y) - rank
    return (float(((y - X @ beta) ** 2).sum() / dof), int(dof)) if dof >= 1 else (float("nan"), 0)


def pooled_delta(arm: dict[float, dict[int, float]], base: dict[float, dict[int, float]],
                 ci: float = 0.95) -> Pooled | None:
    """Arm vs baseline over every width both have, {width: {seed: loss}} each: the equal-weight mean of the
    per-width differences of cell means, from the two-way model
        L(side, m, s) = μ(side, m) + β(s) + ε,   Var ε = σ²_side
    fitted by least squares to every run of both sides at those widths. β(s) is a seed's effect (its
    initialisation and data order), shared by both sides and every width: that is what a seed fixes, and it is
    what pairing by seed removes. σ² is estimated per side from the side's own two-way fit, the contrast's
    variance is the sandwich c(X'X)⁻¹X'ΣX(X'X)⁻¹c and its dof Satterthwaite's, so an arm noisier than the baseline
    widens the interval instead of borrowing the baseline's precision. Uses every run (≈ 7 dof for 2 + 3 seeds at
    5 widths, against 1 for a paired t at one width); seed variance that differs across widths averages out of an
    equal-weight mean. None without residual dof on either side."""
    widths = sorted(set(arm) & set(base))
    if not widths:
        return None
    (sa, da), (sb, db) = _own_variance(arm, widths), _own_variance(base, widths)
    if da < 1 or db < 1:
        return None
    seeds = sorted({s for c in (arm, base) for w in widths for s in c[w]})
    X, y, side = _design([arm, base], widths, seeds)
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    c = np.zeros(X.shape[1])
    c[:len(widths)], c[len(widths):2 * len(widths)] = 1 / len(widths), -1 / len(widths)
    diff = float(c @ beta)
    g = X @ np.linalg.pinv(X.T @ X) @ c            # the contrast as a weight on each run
    ka, kb = float((g[side == 0] ** 2).sum()), float((g[side == 1] ** 2).sum())
    # A seed may not play out the same way in both arms (an intervention changes what the seed's init and data
    # order do): a per-seed arm effect with variance τ² moves all of the arm's runs of that seed together. Its
    # weight is the squared contrast weight per seed; τ² by moments from the paired seed means of arm − baseline,
    # whose variance over the shared seeds is τ² + (σ²_arm + σ²_base)/W.
    arm_seed = np.array([s for w in widths for s in arm[w]])
    kt = float(sum(g[side == 0][arm_seed == s].sum() ** 2 for s in set(arm_seed)))
    shared = sorted(set.intersection(*(set(arm[w]) & set(base[w]) for w in widths)))
    tau, dt = 0.0, len(shared) - 1
    if dt >= 1:
        dbar = [np.mean([arm[w][s] - base[w][s] for w in widths]) for s in shared]
        tau = max(0.0, float(np.var(dbar, ddof=1)) - (sa + sb) / len(widths))
    var = ka * sa + kb * sb + kt * tau
    if var == 0:
        return Pooled(diff, diff, diff, float("nan"), 0, widths)
    dof = var ** 2 / ((ka * sa) ** 2 / da + (kb * sb) ** 2 / db + ((kt * tau) ** 2 / dt if dt >= 1 else 0.0))
    se, q = float(np.sqrt(var)), stats.t.ppf(0.5 + ci / 2, dof)
    return Pooled(diff, diff - q * se, diff + q * se, float(2 * stats.t.sf(abs(diff) / se, dof)), float(dof), widths)
