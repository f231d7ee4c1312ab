"""The baseline's width curve L(m) = A·m^-α + E and the checks it must pass before any arm is judged against it:
profile intervals, pure-error lack of fit, identification, and convergence in training length.

Convergence has two forms. *Mid-run*: each run's loss at 60 % of its own steps (val_history), refitted. Cheap, but
under a cosine schedule that checkpoint has not decayed its LR yet, so it overstates the loss a 60 %-length budget
reaches, and not necessarily equally at every width. *Matched*: a second sweep of the same design trained for
fewer steps with its own schedule (`short_sweep`), i.e. the model that budget does produce. When a matched sweep
is given it decides; the mid-run refit is reported beside it. docs/statistics.md explains both.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from widthlab import WidthlabError
from widthlab.scaling.fit import fit_curve, lack_of_fit, profile_ci, pure_error
from widthlab.scaling.inference import Design, two_way
from widthlab.scaling.runs import loss_at_fraction

CI = 0.95
MAX_ALPHA_CI_RATIO = 3.0   # hi/lo of α's interval above this: the widths do not pin α (and so E)
LOF_P = 0.05               # lack-of-fit p below this: the power law does not describe the cell means
CONVERGENCE_FRAC = 0.6     # mid-run check: α refit on the losses at this fraction of training
CONVERGENCE_TOL = 0.05     # matched check: |α_short − α_full| within this is "converged" (pre-registered, LOG s5)


def _noise(table: dict[float, dict[int, float]], fallback_rss: float) -> tuple[float, int, str, float, int, int]:
    """(s², dof, its description, pooled SS, pooled ν, seed-block dof) of the cell means' noise for the curve's
    shape: the seed × width variance when seeds recur across widths, else the pooled seed variance, else the
    residual mean square of the fit (then lack of fit cannot be tested)."""
    ss, nu = pure_error([list(v.values()) for v in table.values()])
    inter, nu_int, _, nu_seed = two_way(table)
    n_w = len(table)
    if nu_seed >= 1 and nu_int >= 2:
        # Seeds recur across widths: a seed's shared offset moves every cell mean alike and is absorbed by E, so
        # the shape (α) and the lack of fit are judged against the seed × width variance only; E's interval keeps
        # the whole seed variance (referee finding: with the pooled variance the lack-of-fit test had no power).
        return (float(np.sum(np.square(inter)) / nu_int), nu_int,
                f"seed × width variance ({nu_int} dof; {nu_seed + 1} seeds recur across widths)", ss, nu, nu_seed)
    if nu >= 2:
        return ss / nu, nu, f"seed variance ({nu} dof)", ss, nu, nu_seed
    if n_w > 3:
        return (fallback_rss / (n_w - 3), n_w - 3,
                f"residual mean square ({n_w - 3} dof; no seed replicates, so lack of fit cannot be tested)",
                ss, nu, nu_seed)
    return math.nan, 0, "no noise estimate", ss, nu, nu_seed


def _fit_table(table: dict[float, dict[int, float]]):
    """Fit, profile intervals and noise of one {width: {seed: loss}} table."""
    ws = sorted(table)
    y = np.array([np.mean(list(table[w].values())) for w in ws])
    n = np.array([len(table[w]) for w in ws], float)
    c = fit_curve(ws, y, n)
    s2, dof, source, ss, nu, nu_seed = _noise(table, c.rss)
    prof = profile_ci(ws, y, n, s2, dof, CI)
    prof["E_shape"] = prof["E"]  # E at the shape noise: whether E trades off against α
    if nu >= 2 and nu_seed >= 1:
        prof["E"] = profile_ci(ws, y, n, ss / nu, nu, CI)["E"]
    return ws, n, c, prof, (s2, dof, source, ss, nu)


def _midrun(fit_runs: list[dict], b: str, loss: str) -> dict:
    early = {}
    for r in fit_runs:
        if r["arm"] == b:
            early.setdefault(r["d_model"], []).append(loss_at_fraction(r, CONVERGENCE_FRAC, loss == "val_loss_best"))
    if not (early and all(np.isfinite(v).all() for v in early.values()) and len(early) >= 3):
        return {"checked": False}
    ew = sorted(early)
    c60 = fit_curve(ew, [np.mean(early[w]) for w in ew], [len(early[w]) for w in ew])
    return {"checked": True, "kind": "mid-run", "alpha": c60.alpha, "E": c60.E, "frac": CONVERGENCE_FRAC}


def _alpha_gradient(ws: list[float], means: np.ndarray, n: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """∂α/∂(cell mean) at each width, by central differences (the fit's α is precise to ≈ 1e-9, so h = 1e-5 leaves
    ≈ 1e-4 of error; a larger h can step across E's bound at 0 and return a secant, not the gradient)."""
    g = np.zeros(len(ws))
    for i in range(len(ws)):
        up, dn = means.copy(), means.copy()
        up[i] += h
        dn[i] -= h
        g[i] = (fit_curve(ws, up, n).alpha - fit_curve(ws, dn, n).alpha) / (2 * h)
    return g


def _linear_at_noise_scale(ws: list[float], means: np.ndarray, n: np.ndarray, s2: float) -> bool:
    """Is α smooth in the cell means at the scale of their noise? Each cell mean moved by ± its standard error must
    leave E off its bound 0 and α off its search bounds: across such a kink the delta method's linearisation (and
    so its interval) fails (referee finding, session 8: the 3560-step stage-2 fit, Ê = 0.047)."""
    if not (np.isfinite(s2) and s2 > 0):
        return False
    for i in range(len(ws)):
        for sign in (1, -1):
            y = means.copy()
            y[i] += sign * math.sqrt(s2 / n[i])
            c = fit_curve(ws, y, n)
            if c.E <= 1e-9 or c.at_bound:
                return False
    return True


def _matched(short_runs: list[dict], b: str, fit_runs: list[dict], full: dict[float, dict[int, float]]) -> dict:
    """α of the matched short sweep and a seed-paired t interval for D = α_short − α_full (delta method): seed s
    contributes z_s = Σ_w g_short,w · L_short(w, s) − g_full,w · L_full(w, s), with g the gradients of α in the cell
    means. A shift common to every width does not move α (Σ g = 0), so seed offsets shared across widths drop out,
    and the two sweeps' shared seeds (same init, same data order) make the difference far tighter than either α."""
    table: dict[float, dict[int, float]] = {}
    for r in short_runs:
        if r["arm"] == b and r["_fit"]:
            table.setdefault(r["d_model"], {})[int(r.get("seed", 0))] = float(r["_loss"])
    if sorted(table) != sorted(full) or any(set(table[w]) != set(full[w]) for w in full):
        have = {int(w): sorted(v) for w, v in sorted(table.items())}
        want = {int(w): sorted(v) for w, v in sorted(full.items())}
        raise WidthlabError(f"the short sweep's usable runs {have} (width: seeds) differ from this sweep's {want}: "
                            "a matched sweep needs the same widths and seeds (finish it, or leave --short_sweep out)")
    def steps(rs: list[dict]) -> dict:  # the baseline's median steps per width (a budget rule gives each its own)
        by: dict = {}
        for r in rs:
            if r["arm"] == b and r.get("steps"):
                by.setdefault(r["d_model"], []).append(r["steps"])
        return {w: float(np.median(v)) for w, v in by.items()}

    ws = sorted(full)
    s_short, s_full = steps([r for r in short_runs if r["_fit"]]), steps(fit_runs)
    # At every width, not on a median: a token table short at some widths and long at another is no matched sweep
    # (a referee's probe, 1.5/0.6/0.6/0.2 × the full sweep's steps, passed the median check).
    frac = {w: s_short.get(w, np.nan) / s_full.get(w, np.nan) for w in ws}
    if bad := [w for w in ws if not 0.4 <= frac[w] <= 0.8]:
        raise WidthlabError(f"the short sweep ran {s_short.get(bad[0], np.nan):g} steps at d = {bad[0]:g}, "
                            f"{frac[bad[0]] * 100:.0f} % of this sweep's {s_full.get(bad[0], np.nan):g} (out of range at d = "
                            f"{', '.join(f'{w:g}' for w in bad)}): a matched sweep runs 40–80 % of the steps at every "
                            "width (60 % in recipes/ptb_id_sweep_short)")
    seeds = sorted(set.intersection(*(set(full[w]) for w in ws)))
    n = np.array([len(full[w]) for w in ws], float)
    mf = np.array([np.mean(list(full[w].values())) for w in ws])
    ms = np.array([np.mean(list(table[w].values())) for w in ws])
    cf = fit_curve(ws, mf, n)
    _, _, cs, prof, (s2_short, *_) = _fit_table(table)  # the short sweep's own fit and profile interval
    s2_full = _noise(full, cf.rss)[0]
    diff = diff_means = cs.alpha - cf.alpha
    estimand = "α_short − α_full"
    if len(seeds) < 2:
        method, z = "no interval: fewer than two seeds at every width", np.array([])
    elif _linear_at_noise_scale(ws, mf, n, s2_full) and _linear_at_noise_scale(ws, ms, n, s2_short):
        method = "delta method"
        gf, gs = _alpha_gradient(ws, mf, n), _alpha_gradient(ws, ms, n)
        z = np.array([sum(gs[i] * table[w][s] - gf[i] * full[w][s] for i, w in enumerate(ws)) for s in seeds])
    else:
        # Near a bound the fit is not linear in the data at the noise scale: refit each seed's own curve in both
        # sweeps and take the paired differences. Cruder (each per-seed fit has one point per width), but it
        # needs no linearisation; z then estimates the mean per-seed difference, not α of the means.
        method = "per-seed refits (α is not linear in the cell means at their noise scale: a fit is near a bound)"
        one = np.ones(len(ws))
        per = [(fit_curve(ws, [table[w][s] for w in ws], one), fit_curve(ws, [full[w][s] for w in ws], one))
               for s in seeds]
        z = np.array([a.alpha - b.alpha for a, b in per])
        diff, estimand = float(z.mean()), "mean over seeds of α_short,s − α_full,s"
        if any(a.at_bound or b.at_bound for a, b in per):  # a difference of search bounds is no measurement
            z = np.array([])
    sd = float(np.std(z, ddof=1)) if len(z) >= 2 else math.nan
    # Identical z_s (e.g. every fit on a bound) give no scale: no interval, not a zero-width "converged".
    half = float(stats.t.ppf(0.5 + CI / 2, len(z) - 1) * sd / np.sqrt(len(z))) if sd > 0 else math.nan
    lo, hi = diff - half, diff + half
    outcome = ("undetermined" if not math.isfinite(half) else "not converged" if lo > 0 or hi < 0 else
               "converged" if -CONVERGENCE_TOL <= lo and hi <= CONVERGENCE_TOL else "undetermined")
    a = prof["alpha"]
    return {"checked": True, "kind": "matched", "alpha": cs.alpha, "E": cs.E, "lo": a.lo, "hi": a.hi,
            "open_lo": a.open_lo, "open_hi": a.open_hi, "steps": float(np.median(list(s_short.values()))),
            "frac": float(np.median(list(frac.values()))), "frac_range": [min(frac.values()), max(frac.values())],
            "n_runs": int(sum(len(v) for v in table.values())), "n_widths": len(ws), "n_seeds": len(seeds),
            "diff": diff, "diff_lo": lo, "diff_hi": hi, "tol": CONVERGENCE_TOL, "outcome": outcome,
            "inside": outcome == "converged", "method": method, "estimand": estimand, "diff_means": diff_means}


def curve_checks(d: Design, fit_runs: list[dict], loss: str, short_runs: list[dict] | None = None) -> dict:
    """The baseline's L(m): estimate, profile CIs, lack of fit, identification and convergence (the matched
    short sweep's α when `short_runs` is given, else α refit at 60 % of training)."""
    b = d.baseline
    ws, n, c, prof, (s2, dof, source, ss, nu) = _fit_table({w: d.cells[(b, w)] for w in d.widths(b)})
    lof = lack_of_fit(c.rss, len(ws), 3, s2 if nu >= 2 else math.nan, dof if nu >= 2 else 0)
    # Levene needs ≥ 3 seeds a width: with 2 the absolute deviations within a width are equal and the test degenerates
    groups = [list(d.cells[(b, w)].values()) for w in ws if len(d.cells[(b, w)]) >= 3]
    hetero = float(stats.levene(*groups).pvalue) if len(groups) >= 2 and np.var(np.concatenate(groups)) > 0 \
        else math.nan
    # Whether E trades off against α is judged at the noise that moves the curve's shape (seed × width), not at the
    # whole seed variance E's printed interval carries: a seed's shared offset moves E, never α.
    a, e, e_shape = prof["alpha"], prof["E"], prof["E_shape"]
    misfit = None
    if math.isfinite(lof.p) and lof.p < LOF_P:
        # The profile interval above assumes the cell means scatter about the curve by seed noise alone, which the
        # test just rejected. Allowing for the misfit as an overdispersed GLM does (McCullagh & Nelder §4.5):
        # noise scaled by the dispersion χ²/dof, on the lack-of-fit dof.
        y = np.array([np.mean(list(d.cells[(b, w)].values())) for w in ws])
        m = profile_ci(ws, y, n, s2 * lof.chi2_dof, lof.dof, CI)["alpha"]
        misfit = {"lo": m.lo, "hi": m.hi, "open_lo": m.open_lo, "open_hi": m.open_hi, "dispersion": lof.chi2_dof,
                  "dof": lof.dof}
    why = []
    if a.open_lo or a.open_hi or c.at_bound:
        why.append("α's interval reaches its search bound")
    if e.open_lo and c.E <= 1e-9:
        why.append("E at its bound 0")
    elif e_shape.open_lo:  # the floor is not bounded away from 0: any E down to 0 fits, α trading off against it
        why.append(f"E's interval reaches 0 at the shape noise (E = {c.E:.3g} [≤ 0, {e_shape.hi:.3g}])")
    if a.lo > 0 and a.hi / a.lo > MAX_ALPHA_CI_RATIO:
        why.append(f"α's CI spans ×{a.hi / a.lo:.1f}")
    if not math.isfinite(a.lo):
        why.append("no noise estimate (≤ 3 widths and no seeds)")
    fails = []
    if not math.isfinite(lof.p):
        fails.append("lack of fit untestable (needs seeds and ≥ 4 widths): any convex set of 3 points fits")
    elif lof.p < LOF_P:
        fails.append(f"lack of fit: χ²/dof = {lof.chi2_dof:.2f} on ({lof.dof}, {lof.nu}) dof, p = {lof.p:.2g}")
    # Convergence: if α moves outside its interval when training is shorter, the curve is still changing shape
    # and the final α reflects where training stopped, not the width limit.
    mid = _midrun(fit_runs, b, loss)
    matched = _matched(short_runs, b, fit_runs, {w: d.cells[(b, w)] for w in ws}) if short_runs is not None else None
    if mid["checked"]:
        mid["inside"] = bool(a.lo <= mid["alpha"] <= a.hi) if math.isfinite(a.lo) else True
    conv = dict(matched or mid, midrun=mid, matched=matched)
    if matched and matched["outcome"] != "converged":
        fails.append(f"{matched['outcome']}: {matched['estimand']} = {matched['diff']:+.3f} [{matched['diff_lo']:+.3f}, "
                     f"{matched['diff_hi']:+.3f}] ({matched['steps']:g}-step sweep, own schedule, "
                     f"{matched['method'].split(' (')[0]}; converged needs the interval within ±{CONVERGENCE_TOL:g})")
    elif not matched and mid["checked"] and not mid["inside"]:
        fails.append(f"not converged: α at {CONVERGENCE_FRAC * 100:.0f} % of training = {mid['alpha']:.3f}, outside "
                     f"[{a.lo:.3f}, {a.hi:.3f}]")
    return {"alpha": {"est": c.alpha, "lo": a.lo, "hi": a.hi, "open_lo": a.open_lo, "open_hi": a.open_hi},
            "alpha_misfit": misfit,
            "E": {"est": c.E, "lo": e.lo, "hi": e.hi, "open_lo": e.open_lo, "open_hi": e.open_hi},
            "A": c.A, "rss_cells": c.rss, "n_widths": len(ws), "n_runs": int(n.sum()), "noise": source,
            "s2": s2, "dof": dof, "lack_of_fit": vars(lof), "convergence": conv, "levene_p": hetero,
            "not_identified": why, "fails": fails, "ok": not why and not fails}
