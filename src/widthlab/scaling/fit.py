"""Power-law fits and their intervals: pure numpy/scipy, no I/O. The method, and why, is in docs/statistics.md.

The model, with x the width m (or params N, or FLOPs C):

    L(x) = A · x^-α + E          L in nats/token; A ≥ 0; E ≥ 0

* Estimator: variable projection. For fixed α the model is linear in (A, E), so those come from a
  non-negative least-squares solve; what remains is a residual profile in α alone, minimised on a log grid and
  then by a bounded scalar search. Nothing to initialise, no loss-scale trouble (Epoch's critique of
  Chinchilla's Approach 3). `fit_curve` is the fast one-curve case (closed-form 2×2 solve), `fit_scaling` the
  several-arm case (per-arm A, shared or per-arm α, shared E).
* Residuals are in loss space (nats): the model is linear only there, and seed noise on a validation loss is
  additive and roughly constant in nats across widths.
* Weights: a curve fitted to cell means with weights n_c (seeds per cell) has the same estimate and profile as
  one fitted to every run, so callers pass cell means and counts.
* Intervals for α and E are profile-likelihood intervals (Bates & Watts 1988, §6): the set of values whose
  best fit raises the RSS by at most s²·F(1, ν), with s² the seed (pure-error) variance on ν degrees of
  freedom. Unlike a Wald or pairs-bootstrap interval they follow the banana-shaped α–E valley and widen
  correctly when only a few widths constrain the curve. `lack_of_fit` is the classical pure-error F test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

ALPHA_BOUNDS = (0.02, 4.0)  # widths 8…512 cannot tell α outside this apart from E moving
_GRID = 48  # log-spaced grid for the α search: neighbours differ by 12 %, then Brent refines between them


# ---------------------------------------------------------------------------------------------- log-log slope

@dataclass
class LogLogFit:
    """log y = intercept + slope · log x (natural logs)."""
    slope: float
    intercept: float
    stderr: float                  # OLS standard error of the slope (NaN for n = 2)
    ci: tuple[float, float]        # slope ± t(n−2) · stderr (NaN for n = 2)
    n: int                         # points fitted


def fit_loglog(x, y, ci: float = 0.95) -> LogLogFit:
    """OLS on (log x, log y) with a t interval on the slope (n − 2 dof); x, y: (n,) positive. Non-positive or
    non-finite pairs are dropped. With 4–6 points a pairs bootstrap under-covers badly (many resamples have
    2–3 distinct x); the t interval is exact for Gaussian scatter about a line."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = len(lx)
    if n < 2 or np.ptp(lx) == 0:
        raise ValueError(f"fit_loglog needs at least 2 distinct positive x, got {n} points")
    res = stats.linregress(lx, ly)
    if n > 2 and len(np.unique(lx)) > 2:
        se = float(res.stderr)
        half = float(stats.t.ppf(0.5 + ci / 2, n - 2)) * se
        return LogLogFit(float(res.slope), float(res.intercept), se, (res.slope - half, res.slope + half), n)
    return LogLogFit(float(res.slope), float(res.intercept), float("nan"), (float("nan"), float("nan")), n)


# ---------------------------------------------------------------------------------------------- one curve

@dataclass
class Curve:
    """L = A · x^-alpha + E for raw x, fitted to n points (cell means) with weights w."""
    A: float
    alpha: float
    E: float
    rss: float                     # Σ w·(y − f)²
    n: int
    at_bound: bool                 # α sits on its search bound: the points do not pin it

    def __call__(self, x) -> np.ndarray:
        return self.A * np.asarray(x, float) ** -self.alpha + self.E

    def inverse(self, L) -> np.ndarray:
        """x at which the curve reaches L (inf where L ≤ E: no finite x gets there)."""
        return effective_width(L, self.A, self.alpha, self.E)


def _solve2(u: np.ndarray, y: np.ndarray, w: np.ndarray, fix_E: float | None) -> tuple[float, float, float]:
    """min Σ w(y − a·u − e)² over a ≥ 0, e ≥ 0 (or e fixed): the NNLS of two columns in closed form → (a, e, rss)."""
    if fix_E is not None:
        r = y - fix_E
        a = max(float((w * u * r).sum() / (w * u * u).sum()), 0.0)
        return a, fix_E, float((w * (r - a * u) ** 2).sum())
    sw, su, sy = w.sum(), (w * u).sum(), (w * y).sum()
    suu, suy = (w * u * u).sum(), (w * u * y).sum()
    det = sw * suu - su * su
    cands = []
    if det > 1e-300 * max(sw * suu, 1e-300):
        a, e = (sw * suy - su * sy) / det, (suu * sy - su * suy) / det
        if a >= 0 and e >= 0:
            cands.append((a, e))
    if not cands:  # the unconstrained optimum is infeasible: the best lies on an edge (e = 0 or a = 0)
        cands = [(max(suy / suu, 0.0), 0.0), (0.0, max(sy / sw, 0.0))]
    best = None
    for a, e in cands:
        rss = float((w * (y - a * u - e) ** 2).sum())
        if best is None or rss < best[2]:
            best = (float(a), float(e), rss)
    return best


def _rss_batch(xs: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """RSS of the best (A ≥ 0, E ≥ 0) for each α in `alphas` at once: `_solve2` vectorised over α."""
    U = xs[None, :] ** -alphas[:, None]
    sw, sy = w.sum(), (w * y).sum()
    su, suu, suy = (U * w).sum(1), (U * U * w).sum(1), (U * w * y).sum(1)
    det = sw * suu - su * su
    with np.errstate(divide="ignore", invalid="ignore"):
        a, e = (sw * suy - su * sy) / det, (suu * sy - su * suy) / det
        a0 = np.maximum(suy / suu, 0.0)  # edge e = 0
    rss = lambda a_, e_: (w * (y[None, :] - a_[:, None] * U - e_[:, None]) ** 2).sum(1)  # noqa: E731
    edge = np.minimum(rss(a0, np.zeros_like(a0)), float((w * (y - max(sy / sw, 0.0)) ** 2).sum()))
    feasible = (det > 0) & (a >= 0) & (e >= 0)
    return np.where(feasible, rss(np.where(feasible, a, 0.0), np.where(feasible, e, 0.0)), edge)


def _argmin_alpha(xs: np.ndarray, y: np.ndarray, w: np.ndarray, lo: float, hi: float) -> float:
    """α minimising `_rss_batch` on [lo, hi]: a log grid, zoomed in three times around its best point, then a
    parabola through the last three points (relative precision ≈ 1e-9 on smooth profiles)."""
    a, b = np.log(lo), np.log(hi)
    for _ in range(4):
        g = np.linspace(a, b, _GRID)
        r = _rss_batch(xs, y, w, np.exp(g))
        i = int(np.argmin(r))
        a, b = g[max(i - 1, 0)], g[min(i + 1, _GRID - 1)]
    if 0 < i < _GRID - 1:
        r0, r1, r2 = r[i - 1], r[i], r[i + 1]
        den = r0 - 2 * r1 + r2
        step = 0.5 * (r0 - r2) / den if den > 0 else 0.0
        return float(np.exp(g[i] + step * (g[1] - g[0])))
    return float(np.exp(g[i]))


def _min_1d(f, lo: float, hi: float, grid_n: int = _GRID) -> float:
    """Minimise f on [lo, hi]: log grid, then bounded Brent between the best point's neighbours."""
    grid = np.geomspace(lo, hi, grid_n)
    vals = np.array([f(a) for a in grid])
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid_n - 1)]
    r = optimize.minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-9 * b})
    return float(r.x) if r.fun <= vals[i] else float(grid[i])


def fit_curve(x, y, w=None, fix_E: float | None = None,
              alpha_bounds: tuple[float, float] = ALPHA_BOUNDS) -> Curve:
    """Fit L = A·x^-α + E to points (x, y) with weights w (seeds per cell; default 1) by variable projection.
    fix_E: hold E at this value (0 for a pure power law). Needs ≥ 3 distinct x (≥ 2 with E fixed)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (w > 0)
    x, y, w = x[ok], y[ok], w[ok]
    need = 2 if fix_E is not None else 3
    if len(np.unique(x)) < need:
        raise ValueError(f"a curve needs >= {need} distinct x, got {len(np.unique(x))}")
    x_ref = float(np.exp(np.average(np.log(x), weights=w)))  # columns x^-α and 1 on one scale, even for FLOPs
    xs = x / x_ref
    if fix_E is None:
        alpha = _argmin_alpha(xs, y, w, *alpha_bounds)
    else:
        alpha = _min_1d(lambda a: _solve2(xs ** -a, y, w, fix_E)[2], *alpha_bounds, grid_n=24)
    a, e, rss = _solve2(xs ** -alpha, y, w, fix_E)
    lo, hi = alpha_bounds
    at_bound = bool(np.isclose(alpha, lo, rtol=1e-3) or np.isclose(alpha, hi, rtol=1e-3))
    return Curve(a * x_ref ** alpha, alpha, e, rss, len(x), at_bound)


def pure_error(groups) -> tuple[float, int]:
    """(SS, ν) of the spread within groups (seeds of one configuration): Σ (y − ȳ_group)², Σ (n_group − 1)."""
    ss, nu = 0.0, 0
    for g in groups:
        g = np.asarray(g, float)
        g = g[np.isfinite(g)]
        if len(g) > 1:
            ss += float(((g - g.mean()) ** 2).sum())
            nu += len(g) - 1
    return ss, nu


@dataclass
class ProfileCI:
    lo: float
    hi: float
    open_lo: bool   # the interval runs into the parameter's bound: the data give no lower limit
    open_hi: bool


def _crossings(f, grid: np.ndarray, best: float, level: float, lo_open_val: float, hi_open_val: float) -> ProfileCI:
    """Where f (a profile RSS) rises above `level`, left and right of `best`, searched on `grid` then by brentq."""
    vals = np.array([f(g) for g in grid])
    left, right = grid[grid < best], grid[grid > best]
    vl, vr = vals[grid < best], vals[grid > best]
    out = []
    for side, xs, vs in (("lo", left[::-1], vl[::-1]), ("hi", right, vr)):
        idx = np.flatnonzero(vs > level)
        if idx.size == 0:
            out.append((lo_open_val if side == "lo" else hi_open_val, True))
            continue
        j = idx[0]
        inner = best if j == 0 else xs[j - 1]
        fi = f(inner) - level
        if fi < 0:
            root = optimize.brentq(lambda t: f(t) - level, min(inner, xs[j]), max(inner, xs[j]), xtol=1e-10)
        else:  # the inner profile search landed a hair above the level: the grid point is the end
            root = xs[j]
        out.append((float(root), False))
    return ProfileCI(out[0][0], out[1][0], out[0][1], out[1][1])


def profile_ci(x, y, w, s2: float, dof: int, ci: float = 0.95,
               alpha_bounds: tuple[float, float] = ALPHA_BOUNDS) -> dict[str, ProfileCI]:
    """Profile-likelihood intervals of α and E for `fit_curve(x, y, w)`.

    A value θ is inside when min over the other parameters of RSS(θ) ≤ RSS_min + s²·F(1, ν; ci), with s² the
    noise variance of one run (seed variance, or the residual mean square when there are no seeds) on ν dof.
    α is searched within alpha_bounds, E within [0, min y]; an end that reaches its bound is marked open."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    best = fit_curve(x, y, w, alpha_bounds=alpha_bounds)
    if not (np.isfinite(s2) and s2 > 0 and dof >= 1):
        nan = ProfileCI(float("nan"), float("nan"), False, False)
        return {"alpha": nan, "E": nan}
    level = best.rss + s2 * float(stats.f.ppf(ci, 1, dof))
    x_ref = float(np.exp(np.average(np.log(x), weights=w)))
    xs = x / x_ref
    rss_alpha = lambda a: _solve2(xs ** -a, y, w, None)[2]  # noqa: E731
    lo, hi = alpha_bounds
    a_grid = np.geomspace(lo, hi, 4 * _GRID)
    out = {"alpha": _crossings(rss_alpha, a_grid, best.alpha, level, lo, hi)}
    e_max = float(y.min())
    rss_E = lambda e: fit_curve(x, y, w, fix_E=float(e), alpha_bounds=alpha_bounds).rss  # noqa: E731
    e_grid = np.unique(np.r_[np.linspace(0.0, e_max, 41)[:-1], e_max * (1 - np.geomspace(1e-4, 2.5e-2, 8))])
    out["E"] = _crossings(rss_E, e_grid, best.E, level, 0.0, e_max)
    return out


@dataclass
class LackOfFit:
    chi2_dof: float   # mean square of the cell means about the curve, in units of the seed variance (an F)
    dof: int          # cells − parameters
    nu: int           # pure-error dof (seeds)
    p: float          # P(F ≥ chi2_dof) under a correct model; NaN when untestable


def lack_of_fit(rss_cells: float, n_cells: int, n_params: int, s2: float, nu: int) -> LackOfFit:
    """The pure-error F test (Draper & Smith §2.1): rss_cells = Σ n_c (ȳ_c − f_c)², compared with the seed
    variance s² on ν dof. chi2_dof ≈ 1 when the curve fits to within seed noise."""
    dof = n_cells - n_params
    if dof < 1 or nu < 1 or not (s2 > 0):
        return LackOfFit(float("nan"), dof, nu, float("nan"))
    F = rss_cells / dof / s2
    return LackOfFit(float(F), dof, nu, float(stats.f.sf(F, dof, nu)))


# ---------------------------------------------------------------------------------------------- several arms

@dataclass
class ScalingFit:
    """L = A[arm] · x^-alpha[arm] + E for raw x. `alpha` holds one (equal) value per arm when shared."""
    arms: list[str]                 # baseline first
    baseline: str
    alpha: dict[str, float]
    A: dict[str, float]             # nats · x^alpha
    E: float                        # nats
    shared_alpha: bool
    fix_E: bool
    rss: float                      # Σ w·residual², nats²
    n: int                          # points fitted
    at_bound: bool                  # some α sits on ALPHA_BOUNDS: the data do not pin it
    x: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # distinct x per arm

    def predict(self, x, arm: str) -> np.ndarray:
        return self.A[arm] * np.asarray(x, float) ** -self.alpha[arm] + self.E

    @property
    def k(self) -> dict[str, float]:
        """With shared α the arms' curves are parallel in log m and k = (A_base/A_arm)^(1/α) at every width."""
        b = self.baseline
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return {a: float((self.A[b] / self.A[a]) ** (1 / self.alpha[b])) if self.A[a] > 0 else float("inf")
                    for a in self.arms} if self.shared_alpha else {a: float("nan") for a in self.arms}


def _profile(alpha_arm: np.ndarray, xs: np.ndarray, y: np.ndarray, sw: np.ndarray, idx: np.ndarray, fix_E: bool):
    """Best (A'…, E) for fixed per-arm α, by NNLS (A ≥ 0, E ≥ 0), rows weighted by √w → (coef, rss)."""
    X = np.zeros((len(y), len(alpha_arm) + (0 if fix_E else 1)))
    X[np.arange(len(y)), idx] = xs ** -alpha_arm[idx]
    if not fix_E:
        X[:, -1] = 1.0
    Xw, yw = X * sw[:, None], y * sw
    coef = np.linalg.lstsq(Xw, yw, rcond=None)[0]
    if (coef < 0).any():  # the unconstrained optimum is infeasible: fall back to the constrained solve
        coef = optimize.nnls(Xw, yw)[0]
    r = yw - Xw @ coef
    return coef, float(r @ r)


def fit_scaling(m, L, arm=None, baseline: str = "baseline", shared_alpha: bool = True, fix_E: bool = False,
                w=None, alpha_bounds: tuple[float, float] = ALPHA_BOUNDS) -> ScalingFit:
    """Fit L = A_arm · m^-α + E jointly over arms by variable projection.

    Args:
        m: (n,) widths (or params, or FLOPs), positive.
        L: (n,) losses in nats/token (runs, or cell means with weights w = seeds per cell).
        arm: (n,) arm names, or None for a single arm called `baseline`.
        baseline: listed first; it needs ≥ 3 distinct m.
        shared_alpha: one α for all arms (default) or one per arm.
        fix_E: fix E = 0 (pure power law) instead of fitting it.
        w: (n,) weights, default 1.
    """
    m, L = np.asarray(m, float), np.asarray(L, float)
    arm = np.full(len(m), baseline, dtype=object) if arm is None else np.asarray(arm, dtype=object)
    w = np.ones_like(m) if w is None else np.asarray(w, float)
    ok = np.isfinite(m) & np.isfinite(L) & (m > 0)
    m, L, arm, w = m[ok], L[ok], arm[ok], w[ok]
    names = sorted(set(arm), key=lambda a: (a != baseline, a))
    if baseline not in names:
        raise ValueError(f"baseline arm {baseline!r} not among {names}")
    xs_by_arm = {a: np.unique(m[arm == a]) for a in names}
    if len(xs_by_arm[baseline]) < 3:
        raise ValueError(f"baseline needs >= 3 distinct x, got {len(xs_by_arm[baseline])}")
    idx = np.array([names.index(a) for a in arm])
    x_ref = float(np.exp(np.log(m).mean()))
    xs, sw = m / x_ref, np.sqrt(w)
    lo, hi = alpha_bounds
    rss_shared = lambda a: _profile(np.full(len(names), a), xs, L, sw, idx, fix_E)[1]  # noqa: E731
    alpha = np.full(len(names), _min_1d(rss_shared, lo, hi, 24))
    if not shared_alpha and len(names) > 1:
        r = optimize.minimize(lambda v: _profile(v, xs, L, sw, idx, fix_E)[1], alpha, method="Powell",
                              bounds=[alpha_bounds] * len(names), options={"xtol": 1e-8, "ftol": 1e-12})
        if r.fun <= rss_shared(alpha[0]):
            alpha = np.asarray(r.x, float)
    coef, rss = _profile(alpha, xs, L, sw, idx, fix_E)
    E = 0.0 if fix_E else float(coef[-1])
    A = {a: float(coef[i] * x_ref ** alpha[i]) for i, a in enumerate(names)}
    at_bound = bool(np.any(np.isclose(alpha, lo, rtol=1e-3) | np.isclose(alpha, hi, rtol=1e-3)))
    return ScalingFit(names, baseline, {a: float(alpha[i]) for i, a in enumerate(names)}, A, E,
                      shared_alpha, fix_E, rss, len(L), at_bound, xs_by_arm)


# ---------------------------------------------------------------------------------------------- multipliers

def effective_width(L, A: float, alpha: float, E: float) -> np.ndarray:
    """x at which A·x^-α + E = L: ((L − E)/A)^(-1/α); inf where L ≤ E, NaN where L is NaN."""
    L = np.asarray(L, float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gap = (L - E) / A
        return np.where(gap > 0, np.abs(gap) ** (-1.0 / alpha), np.where(np.isnan(gap), np.nan, np.inf))


def shifted_equivalent(curve: Curve, x_ref, dL) -> np.ndarray:
    """The baseline x that reaches a loss dL below (dL < 0) or above the baseline's own measurement at x_ref,
    moving along the fitted curve: curve⁻¹(curve(x_ref) + dL). Exactly x_ref when dL = 0, so the baseline
    measured against itself is 1 at every width, whatever the curve's residual there."""
    x_ref, dL = np.asarray(x_ref, float), np.asarray(dL, float)
    with np.errstate(invalid="ignore"):
        return np.where(dL == 0, x_ref, curve.inverse(curve(x_ref) + dL))
