"""Estimates and intervals for a sweep: the baseline's curve, each arm's multipliers, and tests between arms.

Pure numpy/scipy; the reasons for every choice are in docs/statistics.md. In one paragraph:

* The data are cells (arm, width) holding seeds. Every number is a function of the cell means (`estimates`),
  so the point estimate and each bootstrap draw run the same code.
* The width curve is the **baseline's**: L_b(x) = A·x^-α + E fitted to its cell means (weights = seeds), for
  x = width, params and FLOPs. α and E get profile-likelihood intervals (fit.profile_ci).
* Per-width multipliers compare an arm with the baseline **measured at the same width**: Δ = L̄_arm(m) − L̄_b(m),
  turned into the baseline width (params, FLOPs) that would move the baseline's loss by Δ along its fitted
  curve. k(m) = m_eq/m, k_N(m) = N_eq/N_arm(m), k_C(m) = C_eq/C_arm(m). The baseline against itself has Δ = 0
  and so k = k_N = k_C = 1 exactly; on data that lie on the curves this equals inverting the curve at the arm's
  loss. Summaries are geometric means over the arm's widths.
* Intervals of the multipliers come from a bootstrap of the **data**: each draw adds resampled seed noise to the
  observed cell means (never to the fitted curve). Each arm's noise is its own: the baseline's within-cell seed
  residuals; for an arm that shares seeds with the baseline, the within-cell residuals of its paired differences
  (so shared seeds and data order cancel, as in a paired test); else its own seed residuals; and only when an
  arm has fewer than 2 degrees of freedom of seeds, the residuals of its cell means about the joint fit (then
  labelled "model residuals": they include any lack of fit). Each draw also scales a source's noise by
  √(ν/χ²_ν), so the draws carry the uncertainty of a variance estimated from ν seed dof (this turns the normal
  into a t_ν, the small-sample correction a plain bootstrap of 2–3 seeds lacks).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from widthlab.scaling.fit import Curve, fit_curve, fit_scaling, shifted_equivalent
from widthlab.scaling.interp import geomean, interpolated_equivalents

COSTS = ("N", "Nne", "C")  # total params, non-embedding params, training FLOPs


# ---------------------------------------------------------------------------------------------- the design

@dataclass
class Design:
    """Seed-level losses per cell, and each cell's costs (deterministic given the configuration)."""
    baseline: str
    arms: list[str]                                        # baseline first
    cells: dict[tuple[str, float], dict[int, float]]       # (arm, width) -> {seed: loss}
    costs: dict[str, dict[tuple[str, float], float]]       # "N"/"Nne"/"C" -> (arm, width) -> cost

    @staticmethod
    def from_rows(m, L, arm, seed, baseline: str, costs: dict[str, np.ndarray] | None = None) -> "Design":
        cells: dict[tuple[str, float], dict[int, float]] = {}
        cost_sum: dict[str, dict] = {k: {} for k in (costs or {})}
        for i, key in enumerate(zip(arm, np.asarray(m, float))):
            cells.setdefault(key, {})[int(seed[i])] = float(L[i])
            for k, v in (costs or {}).items():
                if v is not None and np.isfinite(v[i]):
                    cost_sum[k].setdefault(key, []).append(float(v[i]))
        arms = sorted({a for a, _ in cells}, key=lambda a: (a != baseline, a))
        return Design(baseline, arms, dict(sorted(cells.items(), key=lambda kv: (arms.index(kv[0][0]), kv[0][1]))),
                      {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in cost_sum.items() if d})

    def means(self) -> dict[tuple[str, float], float]:
        return {c: float(np.mean(list(s.values()))) for c, s in self.cells.items()}

    def counts(self) -> dict[tuple[str, float], int]:
        return {c: len(s) for c, s in self.cells.items()}

    def widths(self, arm: str) -> list[float]:
        return [w for a, w in self.cells if a == arm]


# ---------------------------------------------------------------------------------------------- estimates

def baseline_curves(d: Design, means: dict) -> dict[str, Curve | None]:
    """The baseline's fitted L(x) for x = width ("m") and each cost axis; None where < 3 distinct x."""
    b = d.baseline
    ws = d.widths(b)
    y = np.array([means[(b, w)] for w in ws])
    n = np.array([len(d.cells[(b, w)]) for w in ws], float)
    out: dict[str, Curve | None] = {}
    for name in ("m",) + COSTS:
        x = np.array(ws, float) if name == "m" else np.array([d.costs.get(name, {}).get((b, w), np.nan) for w in ws])
        try:
            out[name] = fit_curve(x, y, n)
        except ValueError:
            out[name] = None
    return out


def estimates(d: Design, means: dict, interpolate: bool = True) -> dict[str, float]:
    """Every derived number from cell means, as a flat dict (the unit the bootstrap resamples).

    Keys: `alpha`, `A`, `E` (baseline L(m)); `fit<X>/A|alpha|E` for X in N, Nne, C; per arm and width
    `dL/<arm>/<m>` (arm − baseline), `k_m/…`, `k_N/…`, `k_Nne/…`, `k_C/…`; summaries `k/<arm>`, `k_N/<arm>`,
    `k_Nne/<arm>`, `k_C/<arm>` (geometric means over the arm's widths); and, if `interpolate`, the power-law-free
    `k_int/<arm>/<m>` and `k_intC/<arm>/<m>` read off the baseline's measured cells (NaN outside their range).
    A width the baseline was not run at has no Δ and so no per-width multiplier (NaN)."""
    b = d.baseline
    curves = baseline_curves(d, means)
    out: dict[str, float] = {}
    cm = curves["m"]
    out["alpha"], out["A"], out["E"] = (cm.alpha, cm.A, cm.E) if cm else (np.nan,) * 3
    for name in COSTS:
        c = curves[name]
        out[f"fit{name}/A"], out[f"fit{name}/alpha"], out[f"fit{name}/E"] = (c.A, c.alpha, c.E) if c else (np.nan,) * 3
    per: dict[str, dict[str, list[float]]] = {}
    for a in d.arms:
        for w in d.widths(a):
            has_b = (b, w) in means
            dL = means[(a, w)] - means[(b, w)] if has_b else np.nan
            out[f"dL/{a}/{int(w)}"] = dL
            ks = {"k_m": float(shifted_equivalent(cm, w, dL)) / w if cm and has_b else np.nan}
            for name in d.costs:
                c, cost = curves[name], d.costs[name]
                ok = c is not None and has_b and (a, w) in cost and (b, w) in cost
                ks[f"k_{name}"] = float(shifted_equivalent(c, cost[(b, w)], dL)) / cost[(a, w)] if ok else np.nan
            for key, v in ks.items():
                out[f"{key}/{a}/{int(w)}"] = v
                if has_b:  # a width the baseline was not run at has no Δ: left out of the summary, not NaN
                    per.setdefault(a, {}).setdefault(key, []).append(v)
    for a, ks in per.items():
        for key, vs in ks.items():
            out[f"{'k' if key == 'k_m' else key}/{a}"] = geomean(vs)
    if interpolate:
        _interpolated(d, means, out)
    return out


def _interpolated(d: Design, means: dict, out: dict) -> None:
    b = d.baseline
    bw = d.widths(b)
    Lb = [means[(b, w)] for w in bw]
    keys = [c for c in d.cells]
    L = np.array([means[c] for c in keys])
    x_eq, kind = interpolated_equivalents(bw, Lb, L)
    # The baseline against itself is 1, also where it trained worse than a narrower width (then the monotone
    # interpolant would map it onto the narrower one).
    for (a, w), x, k in zip(keys, x_eq, kind):
        out[f"k_int/{a}/{int(w)}"] = 1.0 if a == b else x / w if k == "" else np.nan
    C = d.costs.get("C", {})
    if all((b, w) in C for w in bw) and len(bw):
        x_eq, kind = interpolated_equivalents([C[(b, w)] for w in bw], Lb, L)
        for (a, w), x, k in zip(keys, x_eq, kind):
            out[f"k_intC/{a}/{int(w)}"] = 1.0 if a == b else x / C[(a, w)] if k == "" and (a, w) in C else np.nan


# ---------------------------------------------------------------------------------------------- noise model

@dataclass
class Noise:
    """Where one arm's bootstrap noise comes from. Pools are scaled so that their mean square is the variance.

    When the same seeds recur at several widths, a seed's effect (its initialisation and data order) is shared by
    all of them, so the within-cell residuals split into a seed block (one shift per seed, the same at every
    width, on S − 1 dof) and a seed × width part (on the remaining dof). A draw then moves all widths of a seed
    together, and the averaging over widths that a summary does cannot shrink the seed part away."""
    kind: str              # "seeds" | "paired" | "borrowed" | "model residuals" | "none"
    residuals: np.ndarray  # per-run (seed × width) or cell-level (model residuals)
    dof: int
    s2: float              # variance of one run's seed × width part (or of one paired difference), nats²
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))  # seed-block pool (empty: none)
    shift_dof: int = 0

    @staticmethod
    def from_residuals(kind: str, r: list[float], dof: int, shift: list[float] | None = None,
                       shift_dof: int = 0) -> "Noise":
        r = np.asarray(r, float)
        if dof < 1 or r.size == 0 or not np.any(r != 0):
            return Noise("none", np.zeros(1), 0, float("nan"))
        s2 = float((r ** 2).sum() / dof)
        u = np.asarray(shift if shift is not None and shift_dof >= 1 else [], float)
        if u.size:
            u = u * np.sqrt(u.size / shift_dof)
        return Noise(kind, r * np.sqrt(r.size / dof), dof, s2, u, shift_dof if u.size else 0)


def two_way(table: dict[float, dict[int, float]]) -> tuple[list[float], int, list[float], int]:
    """Within-cell residuals of {width: {seed: value}}, split into seed × width residuals (and their dof) and the
    seed-block effects (one per seed seen in ≥ 2 replicated cells, and their dof S − 1). A seed seen once keeps its
    whole residual in the seed × width part. Balanced designs give the two-way ANOVA's split exactly."""
    cells = {w: v for w, v in table.items() if len(v) > 1}
    res = {w: {s: x - np.mean(list(v.values())) for s, x in v.items()} for w, v in cells.items()}
    total = sum(len(v) - 1 for v in cells.values())
    seen: dict[int, list[float]] = {}
    for v in res.values():
        for s_, x in v.items():
            seen.setdefault(s_, []).append(x)
    u = {s_: float(np.mean(xs)) for s_, xs in seen.items() if len(xs) >= 2}
    if len(u) < 2:
        return [x for v in res.values() for x in v.values()], total, [], 0
    inter = [x - u.get(s_, 0.0) for v in res.values() for s_, x in v.items()]
    block_dof = len(u) - 1
    # the per-seed shift pool: the seed effects scaled so that one draw has the variance of a seed mean
    # of W residuals (σ_seed² + σ_run²/W, slightly conservative)
    return inter, total - block_dof, list(u.values()), block_dof


def noise_model(d: Design, min_dof: int = 2) -> dict[str, Noise]:
    """Per arm: its noise source (see the module docstring), each estimated from that arm's data only."""
    b = d.baseline
    out: dict[str, Noise] = {}
    means = d.means()
    joint = None
    for a in d.arms:
        own = two_way({w: d.cells[(a, w)] for w in d.widths(a)})
        pr: tuple = ([], 0, [], 0)
        if a != b:
            diffs = {}
            for w in d.widths(a):
                sa, sb = d.cells[(a, w)], d.cells.get((b, w), {})
                diffs[w] = {s_: sa[s_] - sb[s_] for s_ in set(sa) & set(sb)}
            pr = two_way(diffs)
        if a != b and pr[1] + pr[3] >= min_dof:
            out[a] = Noise.from_residuals("paired", *pr)
        elif own[1] + own[3] >= min_dof:
            out[a] = Noise.from_residuals("seeds", *own)
        else:  # too few seeds: the cell means' scatter about a fitted curve, which includes any lack of fit
            ws = d.widths(a)
            if a == b:
                c = fit_curve(ws, [means[(a, w)] for w in ws], [len(d.cells[(a, w)]) for w in ws])
                r, dof = [means[(a, w)] - float(c(w)) for w in ws], len(ws) - 3
            else:
                joint = joint or _joint_fit(d, means)
                r, dof = [means[(a, w)] - float(joint.predict(w, a)) for w in ws], len(ws) - 1
            out[a] = Noise.from_residuals("model residuals", r, dof)
            if out[a].kind == "none" and a != b and out[b].kind in ("seeds", "paired") and out[b].dof >= 1:
                # one run at one or two widths: no variance of its own to estimate, so the baseline's seed
                # variance stands in for it (labelled "borrowed"), rather than no noise at all
                nb = out[b]
                out[a] = Noise("borrowed", nb.residuals, nb.dof, nb.s2, nb.shift, nb.shift_dof)
    return out


def _joint_fit(d: Design, means: dict):
    keys = list(means)
    return fit_scaling([w for _, w in keys], [means[k] for k in keys], [a for a, _ in keys], d.baseline,
                       w=[len(d.cells[k]) for k in keys])


def _shared(d: Design, a: str, w: float) -> list[int]:
    return sorted(set(d.cells[(a, w)]) & set(d.cells.get((d.baseline, w), {})))


def levels(d: Design, noise: dict[str, Noise]) -> dict[tuple[str, float], float]:
    """The loss level of every cell that the estimates use: the cell mean, except for an arm compared by seed
    ("paired" noise), whose level at a width with shared seeds is the baseline's mean plus the mean paired
    difference over the shared seeds. With the same seeds on both sides the two are identical; with more
    baseline seeds than arm seeds the paired difference is the estimate whose noise the paired pool measures."""
    mean = d.means()
    out = dict(mean)
    for (a, w), cell in d.cells.items():
        shared = _shared(d, a, w) if a != d.baseline and noise[a].kind == "paired" else []
        if shared:
            base = d.cells[(d.baseline, w)]
            out[(a, w)] = mean[(d.baseline, w)] + float(np.mean([cell[s] - base[s] for s in shared]))
    return out


def draw_means(d: Design, noise: dict[str, Noise], rng: np.random.Generator,
               level: dict | None = None) -> dict[tuple[str, float], float]:
    """One bootstrap draw of every cell's level: the observed level plus resampled noise of that cell's seeds."""
    b = d.baseline
    level = levels(d, noise) if level is None else level
    g = {a: (np.sqrt(n.dof / rng.chisquare(n.dof)) if n.dof > 0 else 0.0) for a, n in noise.items()}
    shifts: dict[str, dict[int, float]] = {}  # per source, one shift per seed for this draw (all widths share it)

    def run_noise(a: str, seeds: list[int]) -> float:
        """Mean noise of these seeds' runs for arm a (cell-level residuals move the whole cell)."""
        n = noise[a]
        if n.kind == "none":
            return 0.0
        if n.kind == "model residuals":
            return float(g[a] * rng.choice(n.residuals))
        e = g[a] * rng.choice(n.residuals, len(seeds))
        if n.shift.size:
            if a not in shifts:
                shifts[a] = {"g": np.sqrt(n.shift_dof / rng.chisquare(n.shift_dof))}
            sh = shifts[a]
            for s_ in seeds:
                if s_ not in sh:
                    sh[s_] = sh["g"] * rng.choice(n.shift)
            e = e + np.array([sh[s_] for s_ in seeds])
        return float(e.mean())

    out, base_draw = {}, {}
    for (a, w), cell in d.cells.items():  # the baseline first: paired arms reuse its per-seed draws
        if a != b:
            continue
        if noise[b].kind == "model residuals":  # cell-level: every seed of the cell moves together
            shift = g[b] * rng.choice(noise[b].residuals)
            base_draw[w] = {s_: shift for s_ in cell}
        else:
            base_draw[w] = {s_: run_noise(b, [s_]) for s_ in cell}
        out[(a, w)] = level[(a, w)] + float(np.mean(list(base_draw[w].values())))
    for (a, w), cell in d.cells.items():
        if a == b:
            continue
        seeds = list(cell)
        shared = _shared(d, a, w) if noise[a].kind == "paired" else []
        if shared:  # baseline's draw + the paired difference's own noise: seed and data-order noise cancel
            out[(a, w)] = out[(b, w)] + (level[(a, w)] - level[(b, w)]) + run_noise(a, shared)
        elif noise[a].kind == "paired":  # no seed in common here: a baseline-like run plus a difference
            out[(a, w)] = level[(a, w)] + run_noise(b, seeds) + run_noise(a, seeds)
        else:
            out[(a, w)] = level[(a, w)] + run_noise(a, seeds)
    return out


# ---------------------------------------------------------------------------------------------- bootstrap

@dataclass
class Bootstrap:
    est: dict[str, float]
    ci: dict[str, tuple[float, float]]
    samples: dict[str, np.ndarray] = field(repr=False)
    noise: dict[str, Noise] = field(repr=False)
    n_ok: int
    level: dict = field(repr=False, default_factory=dict)   # the cell levels the estimates came from


def bootstrap(d: Design, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, interpolate: bool = True) -> Bootstrap:
    """Percentile intervals of every key of `estimates`, from n_boot draws of the cell means (`draw_means`)."""
    noise = noise_model(d)
    level = levels(d, noise)
    est = estimates(d, level, interpolate)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        try:
            draws.append(estimates(d, draw_means(d, noise, rng, level), interpolate))
        except (ValueError, np.linalg.LinAlgError):
            continue  # counted by n_ok
    samples = {k: np.array([x.get(k, np.nan) for x in draws]) for k in est}
    cis = {k: percentile(v, ci) for k, v in samples.items()}
    # No noise estimate at all (one run, no seeds, nothing to borrow): a zero-width interval would read as
    # certainty, so such an arm's intervals are NaN.
    quiet = [a for a, n in noise.items() if n.kind == "none"]
    if noise[d.baseline].kind == "none":
        quiet = list(noise)
    for k in cis:
        parts = k.split("/")
        if len(parts) >= 2 and parts[1] in quiet and parts[1] != d.baseline:
            cis[k] = (np.nan, np.nan)
        elif noise[d.baseline].kind == "none" and k in ("alpha", "A", "E") or k.startswith("fit"):
            cis[k] = cis[k] if noise[d.baseline].kind != "none" else (np.nan, np.nan)
    return Bootstrap(est, cis, samples, noise, len(draws), level)


def percentile(s: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval; NaN draws dropped; no interpolation, so inf draws stay inf instead of NaN."""
    s = np.asarray(s, float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    q = (1 - ci) / 2
    lo, hi = np.quantile(s, [q, 1 - q], method="inverted_cdf")
    return float(lo), float(hi)


def boot_p(s: np.ndarray, null: float = 1.0) -> float:
    """Two-sided bootstrap p-value of `null` for a multiplier: 2·min(P*(k ≤ null), P*(k ≥ null)), with the +1
    correction of Davison & Hinkley (p is never 0 from finitely many draws)."""
    s = np.asarray(s, float)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan")
    lo, hi = (s <= null).sum(), (s >= null).sum()
    return float(min(1.0, 2 * (min(lo, hi) + 1) / (s.size + 1)))
