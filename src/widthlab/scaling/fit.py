"""Power-law fits, bootstrap CIs and width multipliers: pure numpy/scipy, no I/O.

The model (DESIGN.md, refs/interventions.md §3), with x the width m (or params N, or FLOPs C):

    L(x) = A_arm · x^-α + E          L in nats/token; A_arm > 0; E ≥ 0 shared by all arms

* E is the data's irreducible loss, which no packing idea should change, so it is shared. α is shared too by
  default (the universality claim); `shared_alpha=False` frees α per arm so that claim can be tested.
* Estimator: variable projection. For fixed α the model is linear in (A_arm…, E), so those come from a
  non-negative least-squares solve; what remains is a residual profile in α alone, minimised on a log grid
  and then by a bounded scalar search around the best grid point. Nothing to initialise, no loss-scale
  trouble of the kind Epoch found in Chinchilla's Approach 3.
* Residuals are in loss space (nats), not log-loss: the model is linear only there, and seed noise on a
  validation loss is additive and roughly constant in nats across widths (losses span < 2×, so log space
  would change the weights by little anyway).
* x is divided by its geometric mean x_ref inside the solve, so the columns x^-α and 1 are on one scale even
  for x = FLOPs ~ 1e15; the A reported is for raw x.

Multipliers. Inverting the baseline curve gives the width that would reach a loss L:
    m_eq(L) = ((L − E) / A_base)^(-1/α_base)          (inf when L ≤ E: no finite baseline gets there)
and k(m) = m_eq(L_arm(m)) / m. With shared α the curves are parallel and k = (A_base / A_arm)^(1/α) at every m.
The same inversion on the baseline's L(N) and L(C) fits gives k_N = N_base(L_arm)/N_arm and
k_C = C_base(L_arm)/C_arm, the params- and compute-equivalent gains. Summaries over widths are geometric means.

When the widths do not pin α and E apart (training-limited sweeps), those multipliers are extrapolations of an
arbitrary curve. `interpolated_equivalent` needs no power law: it reads m_eq (or C_eq) off the baseline's own
measured points (monotone cubic in log x); outside the measured range it gives only a bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, optimize, stats

ALPHA_BOUNDS = (0.02, 4.0)  # widths 32…512 cannot tell α outside this apart from E moving
_GRID = 24  # log-spaced: neighbours differ by 25 %, then Brent refines between them


# ---------------------------------------------------------------------------------------------- log-log slope

@dataclass
class LogLogFit:
    """log y = intercept + slope · log x (natural logs)."""
    slope: float
    intercept: float
    stderr: float                  # OLS standard error of the slope
    ci: tuple[float, float]        # bootstrap (over points) percentile CI of the slope
    n: int


def fit_loglog(x, y, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> LogLogFit:
    """OLS on (log x, log y); x, y: (n,) positive. Non-positive or non-finite pairs are dropped."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = len(lx)
    if n < 2 or np.ptp(lx) == 0:
        raise ValueError(f"fit_loglog needs at least 2 distinct positive x, got {n} points")
    res = stats.linregress(lx, ly)
    stderr = float(res.stderr) if n > 2 else float("nan")
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(lx[i]) > 0:  # a resample of one x has no slope
            slopes.append(np.polyfit(lx[i], ly[i], 1)[0])
    return LogLogFit(float(res.slope), float(res.intercept), stderr, _interval(np.array(slopes), ci), n)


# ---------------------------------------------------------------------------------------------- L = A x^-α + E

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
    rss: float                      # sum of squared residuals, nats²
    n: int                          # points fitted
    at_bound: bool                  # some α sits on ALPHA_BOUNDS: the data do not pin it
    x: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # distinct x per arm

    def predict(self, x, arm: str) -> np.ndarray:
        return self.A[arm] * np.asarray(x, float) ** -self.alpha[arm] + self.E

    @property
    def k(self) -> dict[str, float]:
        """Summary width multiplier per arm (baseline = 1): closed form when α is shared, else the geometric
        mean over the arm's widths of k(m) on its fitted curve."""
        b = self.baseline
        out = {}
        for a in self.arms:
            if self.shared_alpha:
                out[a] = _ratio_pow(self.A[b], self.A[a], self.alpha[b])
            else:
                xs = self.x[a]
                out[a] = _geomean(width_multiplier(xs, self.predict(xs, a), self.A[b], self.alpha[b], self.E))
        return out


def _ratio_pow(num: float, den: float, alpha: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((num / den) ** (1.0 / alpha)) if den > 0 else float("inf")


def _profile(alpha_arm: np.ndarray, xs: np.ndarray, y: np.ndarray, idx: np.ndarray, fix_E: bool):
    """Best (A'…, E) for fixed per-arm α, by NNLS (A ≥ 0, E ≥ 0); returns (coef, rss). xs = x / x_ref."""
    n_arms = len(alpha_arm)
    X = np.zeros((len(y), n_arms + (0 if fix_E else 1)))
    X[np.arange(len(y)), idx] = xs ** -alpha_arm[idx]
    if not fix_E:
        X[:, -1] = 1.0
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    if (coef < 0).any():  # the unconstrained optimum is infeasible: fall back to the constrained solve
        coef = optimize.nnls(X, y)[0]
    r = y - X @ coef
    return coef, float(r @ r)


def _min_1d(f, lo: float, hi: float) -> float:
    """Minimise f on [lo, hi]: log grid, then bounded Brent between the best point's neighbours."""
    grid = np.geomspace(lo, hi, _GRID)
    vals = np.array([f(a) for a in grid])
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    r = optimize.minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
    return float(r.x) if r.fun <= vals[i] else float(grid[i])


def fit_scaling(m, L, arm=None, baseline: str = "baseline", shared_alpha: bool = True, fix_E: bool = False,
                alpha_bounds: tuple[float, float] = ALPHA_BOUNDS) -> ScalingFit:
    """Fit L = A_arm · m^-α + E by variable projection.

    Args:
        m: (n,) widths (or params, or FLOPs), positive.
        L: (n,) losses in nats/token, one per run (seeds are separate points).
        arm: (n,) arm names, or None for a single arm called `baseline`.
        baseline: the arm other arms are measured against; it needs ≥ 3 distinct m.
        shared_alpha: one α for all arms (default) or one per arm.
        fix_E: fix E = 0 (pure power law) instead of fitting it.
        alpha_bounds: search range for α.
    """
    m, L = np.asarray(m, float), np.asarray(L, float)
    arm = np.full(len(m), baseline, dtype=object) if arm is None else np.asarray(arm, dtype=object)
    ok = np.isfinite(m) & np.isfinite(L) & (m > 0)
    m, L, arm = m[ok], L[ok], arm[ok]
    names = sorted(set(arm), key=lambda a: (a != baseline, a))
    if baseline not in names:
        raise ValueError(f"baseline arm {baseline!r} not among {names}")
    xs_by_arm = {a: np.unique(m[arm == a]) for a in names}
    if len(xs_by_arm[baseline]) < 3:
        raise ValueError(f"baseline needs >= 3 distinct x, got {len(xs_by_arm[baseline])}")
    idx = np.array([names.index(a) for a in arm])
    x_ref = float(np.exp(np.log(m).mean()))
    xs = m / x_ref
    lo, hi = alpha_bounds

    def rss_shared(a: float) -> float:
        return _profile(np.full(len(names), a), xs, L, idx, fix_E)[1]

    alpha = np.full(len(names), _min_1d(rss_shared, lo, hi))
    if not shared_alpha and len(names) > 1:
        r = optimize.minimize(lambda v: _profile(v, xs, L, idx, fix_E)[1], alpha, method="Powell",
                              bounds=[alpha_bounds] * len(names), options={"xtol": 1e-8, "ftol": 1e-12})
        if r.fun <= rss_shared(alpha[0]):
            alpha = np.asarray(r.x, float)
    coef, rss = _profile(alpha, xs, L, idx, fix_E)
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


def width_multiplier(m, L, A_base: float, alpha_base: float, E: float) -> np.ndarray:
    """k(m) = m_eq / m: how much wider the baseline must be to match loss L reached at width m."""
    return effective_width(L, A_base, alpha_base, E) / np.asarray(m, float)


def interpolated_equivalent(x_base, L_base, L: float) -> tuple[float, str]:
    """Baseline x (width or FLOPs) whose measured loss equals L, read off the baseline's points → (x_eq, kind).

    x_base, L_base: the baseline's cell means. The baseline is made monotone first (a wider model that trained
    worse than a narrower one defines no new loss level and is dropped). log x is then interpolated as a
    function of L by a monotone cubic (PCHIP): exact on curves linear in log x, within ~3 % of k on a power
    law sampled at doublings (straight lines there overestimate k by ~5 %, always upward, as L is convex in
    log x). kind: "" for an interpolated value, ">" when L is below every baseline loss (x_eq is then the largest
    x: a lower bound), "<" when L is above every baseline loss (x_eq the smallest x: an upper bound), "nan" for
    NaN input.
    """
    x_base, L_base = np.asarray(x_base, float), np.asarray(L_base, float)
    o = np.argsort(x_base)
    xb, Lb = x_base[o], L_base[o]
    x_max = float(xb[-1])  # beating every measured baseline bounds m_eq by the widest one, trained well or not
    keep = np.r_[True, Lb[1:] < np.minimum.accumulate(Lb)[:-1]]  # strictly new loss levels only
    xb, Lb = xb[keep], Lb[keep]
    if not np.isfinite(L):
        return float("nan"), "nan"
    if L < Lb[-1]:
        return x_max, ">"
    if L > Lb[0]:
        return float(xb[0]), "<"
    hit = np.flatnonzero(Lb == L)
    if hit.size:
        return float(xb[hit[0]]), ""
    g = interpolate.PchipInterpolator(Lb[::-1], np.log(xb[::-1]))  # L increasing ↔ x decreasing
    return float(np.exp(g(L))), ""


def _geomean(k) -> float:
    k = np.asarray(k, float)
    if k.size == 0 or np.isnan(k).any():
        return float("nan")
    if np.isinf(k).any():
        return float("inf")
    with np.errstate(divide="ignore"):
        return float(np.exp(np.log(k).mean()))


def _cells(m, arm) -> dict[tuple[str, float], np.ndarray]:
    """Row indices per (arm, m) cell: the seeds of one configuration."""
    out: dict[tuple[str, float], list[int]] = {}
    for i, key in enumerate(zip(arm, m)):
        out.setdefault(key, []).append(i)
    return {k: np.array(v) for k, v in sorted(out.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))}


def multipliers(fit: ScalingFit, m, L, arm, N=None, N_nonembed=None, C=None, L_obs=None) -> dict[str, float]:
    """Every derived number for one fit, as a flat dict (the unit the bootstrap resamples).

    Keys: `alpha` (NaN unless shared), `alpha/<arm>`, `A/<arm>`, `E`, `k/<arm>`; per width `k_m/<arm>/<m>`
    from the observed mean loss of the cell; `k_int/<arm>/<m>` (and `k_intC/…` when C is given) read off the
    baseline's measured points by `interpolated_equivalent`, NaN outside their range; and, for each cost axis given (`N` total params, `Nne`
    non-embedding params, `C` training FLOPs): the baseline fit `fit<X>/A|a|E`, `k_<X>/<arm>/<m>` and the
    geometric-mean summary `k_<X>/<arm>`. NaN where a number cannot be formed (e.g. < 3 distinct baseline N).
    L_obs: losses for the interpolated keys when they differ from L (the residual bootstrap centres the fit's
    draws on the fitted curve but the measured-point draws on the measured losses).
    """
    m, L, arm = np.asarray(m, float), np.asarray(L, float), np.asarray(arm, dtype=object)
    b = fit.baseline
    out = {"alpha": fit.alpha[b] if fit.shared_alpha else float("nan"), "E": fit.E}
    for a in fit.arms:
        out[f"alpha/{a}"], out[f"A/{a}"], out[f"k/{a}"] = fit.alpha[a], fit.A[a], fit.k[a]
    cells = _cells(m, arm)
    Lbar = {key: float(np.nanmean(L[i])) for key, i in cells.items()}
    for (a, w), Lc in Lbar.items():
        out[f"k_m/{a}/{int(w)}"] = float(width_multiplier(w, Lc, fit.A[b], fit.alpha[b], fit.E))
    Lobs = Lbar if L_obs is None else {key: float(np.nanmean(np.asarray(L_obs, float)[i])) for key, i in cells.items()}
    base_cells = [(w, Lc) for (a, w), Lc in Lobs.items() if a == b]
    Cbar = ({key: float(np.nanmean(np.asarray(C, float)[i])) for key, i in cells.items()} if C is not None else {})
    for (a, w), Lc in Lobs.items():
        x_eq, kind = interpolated_equivalent([w_ for w_, _ in base_cells], [l for _, l in base_cells], Lc)
        out[f"k_int/{a}/{int(w)}"] = x_eq / w if kind == "" else float("nan")
        if Cbar:
            cb = [Cbar[(b, w_)] for w_, _ in base_cells]
            x_eq, kind = interpolated_equivalent(cb, [l for _, l in base_cells], Lc)
            out[f"k_intC/{a}/{int(w)}"] = x_eq / Cbar[(a, w)] if kind == "" else float("nan")
    for name, cost in (("N", N), ("Nne", N_nonembed), ("C", C)):
        if cost is None:
            continue
        cost = np.asarray(cost, float)
        base = (arm == b) & np.isfinite(cost) & np.isfinite(L)
        try:
            f = fit_scaling(cost[base], L[base], baseline=b, fix_E=fit.fix_E)
            A, al, E = f.A[b], f.alpha[b], f.E
        except ValueError:
            A = al = E = float("nan")
        out[f"fit{name}/A"], out[f"fit{name}/a"], out[f"fit{name}/E"] = A, al, E
        per_arm: dict[str, list[float]] = {}
        for (a, w), i in cells.items():
            c = float(np.nanmean(cost[i])) if np.isfinite(cost[i]).any() else float("nan")
            k = float(effective_width(Lbar[(a, w)], A, al, E) / c) if np.isfinite(A) else float("nan")
            out[f"k_{name}/{a}/{int(w)}"] = k
            per_arm.setdefault(a, []).append(k)
        for a, ks in per_arm.items():
            out[f"k_{name}/{a}"] = _geomean(ks)
    return out


@dataclass
class ScalingBootstrap:
    """Point estimates and percentile CIs for every key of `multipliers` (see there)."""
    fit: ScalingFit
    est: dict[str, float]
    ci: dict[str, tuple[float, float]]
    samples: dict[str, np.ndarray] = field(repr=False)   # key -> (n_ok,) draws, NaN where a draw lacked it
    method: str          # "cases" (seeds resampled within each arm×width cell) or "residuals"
    n_ok: int            # resamples that fitted


def bootstrap_scaling(m, L, arm, baseline: str = "baseline", shared_alpha: bool = True, fix_E: bool = False,
                      N=None, N_nonembed=None, C=None, n_boot: int = 1000, ci: float = 0.95,
                      seed: int = 0) -> ScalingBootstrap:
    """Refit on resampled runs and take percentile CIs of every derived number.

    Runs are resampled with replacement within each (arm, width) cell, so every resample keeps the design
    (all widths, all arms) and only seed noise varies. Resampling n values keeps (n−1)/n of their variance,
    which with 2–4 seeds makes CIs visibly narrow, so resampled losses are re-spread about their cell mean by
    √(n/(n−1)) (costs stay as drawn). If some cell holds a single run, case resampling
    would give it zero variance, so we resample the fit's residuals instead (scaled by √(n/(n−p)) for the
    p fitted parameters): added to the fitted curve for the fit's numbers, to the measured losses for the
    measured-point multipliers k_int. With one seed those residuals mix seed noise with the curve's lack of fit,
    so the CIs are conservative. m, L, arm, N, N_nonembed, C: (n,) per-run arrays as in `multipliers`.
    """
    m, L, arm = np.asarray(m, float), np.asarray(L, float), np.asarray(arm, dtype=object)
    costs = {k: (None if v is None else np.asarray(v, float)) for k, v in
             (("N", N), ("N_nonembed", N_nonembed), ("C", C))}
    fit = fit_scaling(m, L, arm, baseline, shared_alpha, fix_E)
    est = multipliers(fit, m, L, arm, **costs)
    cells = list(_cells(m, arm).values())
    method = "cases" if min(len(c) for c in cells) >= 2 else "residuals"
    fitted = np.array([fit.predict(mi, a) for mi, a in zip(m, arm)])
    p = len(fit.arms) * (1 if shared_alpha else 2) + (1 if shared_alpha else 0) + (0 if fix_E else 1)
    resid = (L - fitted) * np.sqrt(len(L) / max(len(L) - p, 1))
    # Resampling n seeds keeps only (n−1)/n of their variance; spread each resampled run away from its cell
    # mean by √(n/(n−1)) − 1 more so the cell means vary as much as they would across fresh seeds.
    Lcell, shrink = np.empty_like(L), np.zeros_like(L)
    for c in cells:
        Lcell[c] = L[c].mean()
        shrink[c] = np.sqrt(len(c) / (len(c) - 1)) - 1 if len(c) > 1 else 0.0
    rng = np.random.default_rng(seed)
    draws: list[dict[str, float]] = []
    for _ in range(n_boot):
        if method == "cases":
            i = np.concatenate([rng.choice(c, len(c)) for c in cells])
            mb, Lb, ab = m[i], L[i] + shrink[i] * (L[i] - Lcell[i]), arm[i]
            cb = {k: (None if v is None else v[i]) for k, v in costs.items()}
            Lo = None
        else:
            e = rng.choice(resid, len(L))
            mb, Lb, ab, cb, Lo = m, fitted + e, arm, costs, L + e
        try:
            fb = fit_scaling(mb, Lb, ab, baseline, shared_alpha, fix_E)
            draws.append(multipliers(fb, mb, Lb, ab, **cb, L_obs=Lo))
        except (ValueError, np.linalg.LinAlgError):
            continue  # counted by n_ok
    samples = {k: np.array([d.get(k, np.nan) for d in draws]) for k in est}
    return ScalingBootstrap(fit, est, {k: _interval(v, ci) for k, v in samples.items()}, samples, method,
                            len(draws))


def _interval(s: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval; NaN draws dropped; no interpolation, so inf draws stay inf instead of NaN."""
    s = np.asarray(s, float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    q = (1 - ci) / 2
    lo, hi = np.quantile(s, [q, 1 - q], method="inverted_cdf")
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- seeds

@dataclass
class WelchT:
    diff: float   # mean(a) − mean(b)
    t: float
    dof: float    # Welch–Satterthwaite
    p: float      # two-sided


def welch_t(a, b) -> WelchT:
    """Unequal-variance t-test of mean(a) vs mean(b); NaN when either side has < 2 values or both have zero
    variance."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff = float(a.mean() - b.mean()) if a.size and b.size else float("nan")
    if a.size < 2 or b.size < 2:
        return WelchT(diff, float("nan"), float("nan"), float("nan"))
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return WelchT(diff, float("nan"), float("nan"), float("nan"))
    t = diff / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return WelchT(diff, float(t), float(dof), float(2 * stats.t.sf(abs(t), dof)))
