"""Reading a baseline's measured points without a power law: interpolated equivalents, and the geometric mean
used for summaries. Pure numpy/scipy."""
from __future__ import annotations

import numpy as np
from scipy import interpolate


def interpolated_equivalent(x_base, L_base, L: float) -> tuple[float, str]:
    """Baseline x (width or FLOPs) whose measured loss equals L, read off the baseline's points → (x_eq, kind).

    x_base, L_base: the baseline's cell means. The baseline is made monotone first (a wider model that trained
    worse than a narrower one defines no new loss level and is dropped). log x is then interpolated as a
    function of L by a monotone cubic (PCHIP): exact on curves linear in log x, within ~3 % of k on a power
    law sampled at doublings. kind: "" for an interpolated value, ">" when L is below every baseline loss
    (x_eq is then the largest x: a lower bound), "<" when L is above every baseline loss (x_eq the smallest x:
    an upper bound), "nan" for NaN input.
    """
    x_eq, kind = interpolated_equivalents(x_base, L_base, np.array([L], float))
    return float(x_eq[0]), str(kind[0])


def interpolated_equivalents(x_base, L_base, L) -> tuple[np.ndarray, np.ndarray]:
    """`interpolated_equivalent` for an array of losses L at once (one interpolant)."""
    x_base, L_base, L = np.asarray(x_base, float), np.asarray(L_base, float), np.asarray(L, float)
    if x_base.size == 0 or not (np.isfinite(x_base).all() and np.isfinite(L_base).all()):
        return np.full(L.shape, np.nan), np.full(L.shape, "nan", dtype=object)  # e.g. no FLOPs column
    o = np.argsort(x_base)
    xb, Lb = x_base[o], L_base[o]
    x_max = float(xb[-1])  # beating every measured baseline bounds m_eq by the widest one, trained well or not
    keep = np.r_[True, Lb[1:] < np.minimum.accumulate(Lb)[:-1]]  # strictly new loss levels only
    xb, Lb = xb[keep], Lb[keep]
    x_eq, kind = np.full(L.shape, np.nan), np.full(L.shape, "", dtype=object)
    nan, below, above = ~np.isfinite(L), L < Lb[-1], L > Lb[0]
    kind[nan], kind[below], kind[above] = "nan", ">", "<"
    x_eq[below], x_eq[above] = x_max, xb[0]
    inside = ~(nan | below | above)
    if inside.any():
        if len(xb) == 1:
            x_eq[inside] = xb[0]
        else:
            g = interpolate.PchipInterpolator(Lb[::-1], np.log(xb[::-1]))  # L increasing ↔ x decreasing
            x_eq[inside] = np.exp(g(L[inside]))
        for j in np.flatnonzero(inside):  # a measured level maps exactly to its own width
            hit = np.flatnonzero(Lb == L[j])
            if hit.size:
                x_eq[j] = xb[hit[0]]
    return x_eq, kind


def geomean(k) -> float:
    """Geometric mean; NaN if any is NaN or there are none, inf if any is inf."""
    k = np.asarray(k, float)
    if k.size == 0 or np.isnan(k).any():
        return float("nan")
    if np.isinf(k).any():
        return float("inf")
    with np.errstate(divide="ignore"):
        return float(np.exp(np.log(k).mean()))
