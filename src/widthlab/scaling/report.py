"""`python -m train compare runs/<sweep>`: the baseline's width curve with profile intervals and a lack-of-fit
test, each arm's width/params/FLOPs multipliers with bootstrap intervals, paired tests between arms with Holm's
correction, and a verdict per arm; writes report.md, PNG plots, compare.json and TensorBoard images.

Reads (never writes) the sweep's results.csv or runs' metrics.json (scaling/runs.py). The math lives in fit.py
and inference.py, the text in markdown.py; docs/statistics.md explains every choice.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from widthlab import WidthlabError, cli
from widthlab.scaling import plots
from widthlab.scaling.curve import CI, curve_checks
from widthlab.scaling.fit import fit_loglog, fit_scaling
from widthlab.scaling.inference import Design, boot_p, bootstrap
from widthlab.scaling.interp import interpolated_equivalent
from widthlab.scaling.markdown import fmt, interp_line, markdown, pooled_text
from widthlab.scaling.runs import (arm_override_keys, check_recipe, flag_limited, load_runs, provenance,
                                   sweep_defaults)
from widthlab.scaling.outputs import jsonable as _jsonable, write_atomic as _write_atomic
from widthlab.scaling.selection import holm_family, selections
from widthlab.scaling.seedtests import SAME_COST, compare_cell, holm, pooled_verdicts

OVERLAP = [(mat, stat) for mat in ("unembed", "embed") for stat in ("mean_cos2", "mean_cos2_centred")]


def compare(paths: list[str] | str, baseline: str = "baseline", shared_alpha: bool = True, n_boot: int = 1000,
            out: str | None = None, min_width: int | None = None, seed: int = 0, include_limited: bool = False,
            max_gap: float | None = None, max_epochs: float | None = None, loss: str = "auto",
            max_rise: float | None = None, short_sweep: str | None = None) -> dict:
    """Fit the baseline's L(m) = A·m^-α + E over a width sweep and measure every arm against it.

    Args:
        paths: A sweep dir (with results.csv), a results.csv, run dirs (with metrics.json), or a list of them
            (`"[runs/a, runs/b]"`); all must share one recipe (every setting in the runs' config.yaml but the width, an
            arm's interventions and its declared overrides; docs/statistics.md).
        baseline: The arm every other arm is measured against.
        shared_alpha: In the joint fit of all arms (drawn in the plot, A per arm), share the exponent α
            (default) or fit one per arm. The baseline's own curve is always fitted alone.
        n_boot: Bootstrap draws (seed noise resampled per arm, see docs/statistics.md) for the multipliers' CIs.
        out: Directory for report.md, PNGs, compare.json and tb_compare/ (default: the first path).
        min_width: Leave widths below this out of every fit (small widths often sit off the power law).
        seed: Seed of the bootstrap resampling.
        include_limited: Also fit runs flagged as data-limited (excluded by default).
        max_gap: A run is data-limited if val_loss − train_loss_eval exceeds this (nats/token; default 0.25 —
            PTB runs with dropout 0.1 show 0.05–0.15 after 5 epochs while their validation loss still falls).
        max_epochs: ... or if it took more than this many passes over the data (default 16).
        max_rise: ... or if its last validation loss is this much above its best (overfitting; default 0.02).
        loss: Which loss to fit: val_loss_best (lowest validation), val_loss (last validation), or auto
            (the sweep recipe's choice in sweep.json, else val_loss_best where every run has it, else val_loss).
        short_sweep: The convergence check: a sweep of the same design (same widths and seeds) trained for 40–80 %
            of the steps with its own schedule; converged when the seed-paired interval of α_short − α_full lies
            within ±0.05, not converged when it excludes 0 (default: sweep.json's compare.short_sweep; without one,
            α is refitted on each run's loss at 60 % of its training, as information).

    Returns:
        The key numbers (also written to compare.json).
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    chosen = selections(paths)  # a confirmation's selection, shown beside its verdict; tuning sweeps are refused
    if n_boot < 10:
        raise WidthlabError(f"--n_boot must be at least 10 (got {n_boot}); 1000 gives stable 95 % intervals")
    # Options given here win over (and are not merged from) the sweeps' compare sections.
    given = {k for k, v in (("max_gap", max_gap), ("max_epochs", max_epochs), ("max_rise", max_rise),
                            ("min_width", min_width), ("short_sweep", short_sweep), ("loss", loss != "auto" or None))
             if v is not None}
    defaults = sweep_defaults(paths, given)
    max_gap = defaults.get("max_gap", 0.25) if max_gap is None else max_gap
    max_epochs = defaults.get("max_epochs", 16.0) if max_epochs is None else max_epochs
    max_rise = defaults.get("max_rise", 0.02) if max_rise is None else max_rise
    if max_gap <= 0 or max_epochs <= 0 or max_rise <= 0:
        raise WidthlabError(f"--max_gap and --max_epochs must be positive (got {max_gap}, {max_epochs}, "
                            f"max_rise {max_rise})")
    runs = load_runs(paths)
    if not runs:
        raise WidthlabError(f"no runs found in {paths}: pass a sweep dir with results.csv or run dirs "
                            "with metrics.json")
    arm_keys = arm_override_keys(paths)
    check_recipe(runs, arm_keys)
    loss = _loss_column(runs, defaults.get("loss", "auto") if loss == "auto" else loss)
    min_width = defaults.get("min_width") if min_width is None else min_width
    arms = sorted({r["arm"] for r in runs})
    if baseline not in arms:
        raise WidthlabError(f"baseline arm {baseline!r} not found (arms: {arms}): pass --baseline <arm>")
    _mark(runs, loss, min_width, max_gap, max_epochs, max_rise, include_limited)
    fit_runs = [r for r in runs if r["_fit"]]
    widths = {a: sorted({r["d_model"] for r in fit_runs if r["arm"] == a}) for a in arms}
    if len(widths[baseline]) < 3:
        raise WidthlabError(_too_few_widths([r for r in runs if r["arm"] == baseline], baseline, widths[baseline],
                                            min_width))
    fit_runs = [r for r in fit_runs if widths[r["arm"]]]
    col = lambda k: np.array([r.get(k, np.nan) if isinstance(r.get(k), (int, float)) else np.nan  # noqa: E731
                              for r in fit_runs], dtype=float)
    m, L, arm = col("d_model"), col("_loss"), np.array([r["arm"] for r in fit_runs], dtype=object)
    seeds = np.array([r.get("seed", 0) for r in fit_runs])
    costs = {"N": col("params"), "Nne": col("params_nonembed"), "C": col("flops")}
    skipped = [f"k_{k} ({c} missing)" for k, c in (("N", "params"), ("Nne", "params_nonembed"), ("C", "flops"))
               if np.isnan(costs[k][arm == baseline]).any()]
    costs = {k: v for k, v in costs.items() if not np.isnan(v[arm == baseline]).any()}
    d = Design.from_rows(m, L, arm, seeds, baseline, costs)
    boot = bootstrap(d, n_boot=n_boot, ci=CI, seed=seed)
    short_sweep = defaults.get("short_sweep") if short_sweep is None else short_sweep
    short = _short_runs(short_sweep, runs, arm_keys, loss, min_width, max_gap, max_epochs, max_rise,
                        include_limited) if short_sweep else None
    curve = curve_checks(d, fit_runs, loss, short)
    joint = fit_scaling(m, L, arm, baseline, shared_alpha)

    overlap = {}
    for mat, stat in OVERLAP:
        y = col(f"geom_{mat}_{stat}")
        for a in d.arms:
            ws = [w for w in widths[a] if np.isfinite(y[(arm == a) & (m == w)]).any()]
            if len(ws) >= 2:  # cell means: seeds of one width are not independent widths
                ys = [np.nanmean(y[(arm == a) & (m == w)]) for w in ws]
                overlap.setdefault(f"{mat}/{stat}", {})[a] = fit_loglog(ws, ys, ci=CI)
    tests = _tests(d)

    out_dir = Path(out) if out is not None else Path(paths[0]) if Path(paths[0]).is_dir() else Path(paths[0]).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = {"loss_vs_width": plots.loss_vs_width(m, L, arm, boot, joint, CI, loss)}
    if len(d.arms) > 1:
        figs["multiplier"] = plots.multiplier(boot, d.arms, baseline)
        figs["multiplier_measured"] = plots.multiplier(boot, d.arms, baseline, key="k_int")
    for key, fits in overlap.items():
        mat, stat = key.split("/")
        name = "overlap_vs_width" + ("" if mat == "unembed" else f"_{mat}") + ("_centred" if "centred" in stat else "")
        figs[name] = plots.overlap_vs_width(m, col(f"geom_{mat}_{stat}"), arm, fits, f"{mat} {stat}")
    series = [(r["arm"], r["d_model"], r.get("seed", 0), r["val_history"]) for r in runs
              if r.get("val_history") and "d_model" in r]
    if series:
        figs["curves"] = plots.curves(series)
    images = {name: plots.render(fig) for name, fig in figs.items()}
    for name, rgba in images.items():
        plots.save_png(rgba, out_dir / f"{name}.png")
    plots.log_to_tensorboard(images, out_dir / "tb_compare")

    result = _summary(d, boot, curve, joint, overlap, tests, runs, n_boot, loss, max_gap, max_epochs, max_rise,
                      include_limited, skipped, chosen)
    result["selection"] = chosen
    result["provenance"] = {**provenance(paths, runs, short_sweep, short),
                            "compare_command": cli.INVOKED if (cli.INVOKED or "").startswith("python -m train compare")
                            else None}
    result["files"] = sorted(["report.md", "compare.json"] + [f"{n}.png" for n in figs])
    _write_atomic(out_dir / "compare.json", json.dumps(_jsonable(result), indent=2) + "\n")
    _write_atomic(out_dir / "report.md", markdown(result, runs, figs))
    print(f"compare: wrote {out_dir / 'report.md'} (fitted {loss}; {len(fit_runs)} of {len(runs)} runs)")
    if skipped:
        print(f"compare: skipped {', '.join(skipped)}")
    for a, v in result["verdict"].items():
        print(f"  {a}: {v['text']}")
    return result


def _mark(runs: list[dict], loss: str, min_width, max_gap, max_epochs, max_rise, include_limited) -> None:
    """Set each run's _loss, _fit and _why (why it is left out of the fits: diverged, no loss, too narrow,
    data-limited)."""
    for r in runs:
        r["_flag"] = flag_limited(r, max_gap, max_epochs, max_rise)
        r["_loss"] = r.get(loss)
        why = ("diverged" + (f" at step {r['diverged_step']}" if r.get("diverged_step") is not None else "")
               if r.get("status") == "diverged" else
               f"no finite {loss}" if not (isinstance(r["_loss"], float) and math.isfinite(r["_loss"])) else
               f"d_model < min_width {min_width}" if min_width is not None and r["d_model"] < min_width else
               r["_flag"] if r["_flag"] and not include_limited else "")
        r["_fit"], r["_why"] = not why, why


def _too_few_widths(base: list[dict], baseline: str, usable: list, min_width) -> str:
    """Why the baseline's curve cannot be fitted, with only the ways out that would give it 3 widths."""
    have = len(usable)
    text = (f"arm {baseline!r} has {have} usable width{'' if have == 1 else 's'} {usable}; L(m) = A·m^-α + E has "
            "three parameters, so a fit needs at least 3 widths")
    left = sorted({(r["d_model"], r["_why"]) for r in base if not r["_fit"]})
    if left:
        text += "; left out: " + ", ".join(f"d={w} ({why})" for w, why in left[:4]) + (" ..." if left[4:] else "")
    ways = []
    narrow = {r["d_model"] for r in base if r["_why"].startswith("d_model < min_width")} - set(usable)
    if have + len(narrow) >= 3:
        ways.append(f"lower --min_width (now {min_width}; it leaves out d={sorted(narrow)})")
    limited = {r["d_model"] for r in base if r["_flag"] and r["_why"] == r["_flag"]} - set(usable)
    if have + len(limited) >= 3:
        ways.append(f"pass --include_limited true (data-limited: d={sorted(limited)})")
    ways.append(f"train the {baseline!r} arm at {3 - have} more width{'' if 3 - have == 1 else 's'} (in a sweep: "
                "add to its widths and rerun it; finished runs are kept)")
    return f"{text}. Fix: {'; or '.join(ways)}"


# A matched short sweep is the same recipe trained for fewer steps: only its length and validation cadence differ.
_LENGTH_KEYS = ("trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval",
                "trainer.check_val_every_n_epoch")


def _short_runs(path: str, runs: list[dict], arm_keys: dict[str, set[str]], loss: str, *rules) -> list[dict]:
    """The matched short sweep's runs, marked by the same rules, after checking it is the same recipe."""
    if not Path(path).exists():
        raise WidthlabError(f"short sweep {path} not found: run its sweep recipe first, or pass --short_sweep "
                            "with a sweep of the same design and fewer steps")
    short = load_runs([path])
    if not short:
        raise WidthlabError(f"no runs found in the short sweep {path}")
    try:
        check_recipe(short, arm_keys)  # one length within the short sweep, then its recipe against the full one's
        check_recipe(runs + short, arm_keys, allow=_LENGTH_KEYS)
    except WidthlabError as e:
        raise WidthlabError(f"short sweep {path}: {e}") from None
    if not any(loss in r for r in short):
        raise WidthlabError(f"the short sweep {path} has no {loss} column; pass --loss val_loss")
    _mark(short, loss, *rules)
    return short


def _loss_column(runs: list[dict], loss: str) -> str:
    if loss == "auto":
        return "val_loss_best" if all(isinstance(r.get("val_loss_best"), float) for r in runs) else "val_loss"
    if loss not in ("val_loss", "val_loss_best"):
        raise WidthlabError(f"--loss must be val_loss, val_loss_best or auto (got {loss!r})")
    if not any(loss in r for r in runs):
        raise WidthlabError(f"no run has a {loss} column; pass --loss val_loss (the last validation)")
    return loss


# ---------------------------------------------------------------------------------------------- tests/verdicts

def _tests(d: Design) -> dict:
    """Arm vs baseline at every shared width (paired t by seed where possible), Holm-adjusted over all of them."""
    b, out = d.baseline, {}
    for a in d.arms[1:]:
        for w in d.widths(a):
            if (b, w) in d.cells:
                out.setdefault(a, {})[int(w)] = vars(compare_cell(d.cells[(a, w)], d.cells[(b, w)]))
    flat = [t for ws in out.values() for t in ws.values()]
    for t, p in zip(flat, holm([t["p"] for t in flat])):
        t["p_holm"] = p
    return out


def _tokens(fit_runs: list[dict]) -> dict[tuple[str, float], float]:
    """(arm, width) → the mean training tokens of its runs in the fit (where every one recorded them)."""
    cells: dict[tuple[str, float], list] = {}
    for r in fit_runs:
        cells.setdefault((r["arm"], float(r["d_model"])), []).append(r.get("tokens"))
    return {k: float(np.mean(v)) for k, v in cells.items() if all(isinstance(x, (int, float)) for x in v)}


def _verdicts(d: Design, boot, curve: dict, pooled: dict) -> dict:
    """Per arm and cost axis (params N, FLOPs C): beats / is not distinguishable from / loses to the baseline's curve, from the summary
    multiplier's bootstrap p-value for k = 1 with Holm's correction over the arms."""
    arms = d.arms[1:]
    res = {a: {} for a in arms}
    for axis in ("N", "C"):
        key = lambda a: f"k_{axis}/{a}"  # noqa: E731
        ps = holm([boot_p(boot.samples[key(a)]) if key(a) in boot.samples else math.nan for a in arms])
        for a, p in zip(arms, ps):
            k = boot.est.get(key(a), math.nan)
            lo, hi = boot.ci.get(key(a), (math.nan, math.nan))
            word = ("unavailable" if math.isnan(p) else "beats" if p < 0.05 and k > 1 else
                    "loses to" if p < 0.05 and k < 1 else "is not distinguishable from")
            res[a][axis] = {"word": word, "est": k, "lo": lo, "hi": hi, "p_holm": p}
    for a in arms:
        v = res[a]
        if not curve["ok"]:
            reasons = "; ".join(curve["not_identified"] + curve["fails"])
            interp = boot_interp(boot, d, a)
            at_cost = (f"; measured-point k_int,C(m): {interp_line(interp, 'C')}"
                       if any(v_["C"]["kind"] != "nan" for v_ in interp.values()) else "")  # none without FLOPs
            v["text"] = (f"no curve verdict: the baseline's curve does not pass its checks ({reasons}); "
                         + f"{pooled_text(pooled.get(a), SAME_COST)}{at_cost}")
        else:
            v["text"] = (f"{v['N']['word']} the curve at equal params (k_N = {_f(v['N'])}, Holm p = "
                         f"{v['N']['p_holm']:.2g}); {v['C']['word']} it at equal FLOPs (k_C = {_f(v['C'])}, "
                         f"Holm p = {v['C']['p_holm']:.2g}); " + (pooled_text(pooled.get(a), SAME_COST)))
    return res


def _f(x: dict) -> str:
    return fmt(x)  # never nan as a bound


def boot_interp(boot, d: Design, a: str) -> dict:
    """Per width of arm a: k_int (width) and k_intC (FLOPs) with the kind of each ("" a value, ">"/"<" only a
    bound outside the baseline's range) and CIs only when ≥ 95 % of the draws stayed inside the range."""
    b, means = d.baseline, boot.level
    bw = d.widths(b)
    out = {}
    for w in d.widths(a):
        row = {}
        for name, xs, x in (("m", bw, w), ("C", [d.costs.get("C", {}).get((b, w_), math.nan) for w_ in bw],
                                           d.costs.get("C", {}).get((a, w), math.nan))):
            x_eq, kind = interpolated_equivalent(xs, [means[(b, w_)] for w_ in bw], means[(a, w)])
            if a == b:  # the baseline against itself (see inference._interpolated)
                x_eq, kind = x, ""
            key = f"k_int{'' if name == 'm' else 'C'}/{a}/{int(w)}"
            draws = boot.samples.get(key, np.array([]))
            ok = draws.size > 0 and np.isfinite(draws).mean() >= 0.95
            lo, hi = boot.ci[key] if ok else (math.nan, math.nan)
            if ok and kind == "" and a != b:
                # The interpolant's own error is not in the draws: widen by the gap between the monotone cubic and
                # straight lines in log x (the truth on a convex curve lies between them).
                xb, Lb = np.asarray(xs, float), np.array([means[(b, w_)] for w_ in bw])
                o = np.argsort(Lb)
                lin = float(np.exp(np.interp(means[(a, w)], Lb[o], np.log(xb[o]))))
                gap = abs(math.log(x_eq / lin)) if x_eq > 0 and lin > 0 else 0.0
                lo, hi = lo * math.exp(-gap), hi * math.exp(gap)
            row[name] = {"est": x_eq / x if math.isfinite(x) else math.nan, "kind": kind if math.isfinite(x) else "nan",
                         "lo": lo, "hi": hi}
        out[int(w)] = row
    return out


# ---------------------------------------------------------------------------------------------- summary

def _iv(boot, key: str) -> dict:
    lo, hi = boot.ci.get(key, (math.nan, math.nan))
    return {"est": boot.est.get(key, math.nan), "lo": lo, "hi": hi}


def _summary(d, boot, curve, joint, overlap, tests, runs, n_boot, loss, max_gap, max_epochs, max_rise, include_limited,
             skipped, chosen: list[dict] | None = None) -> dict:
    b = d.baseline
    per_width = lambda prefix, a: {int(w): _iv(boot, f"{prefix}/{a}/{int(w)}") for w in d.widths(a)}  # noqa: E731
    res = {
        "baseline": b, "arms": d.arms, "n_runs": len(runs), "n_fit": sum(len(s) for s in d.cells.values()),
        "loss": loss, "skipped": skipped,
        "rule": (f"data-limited if the last validation is > {max_rise:g} above the best, val_loss − train_loss_eval > "
                 f"{max_gap:g} nats, or epochs > {max_epochs:g}; "
                 + ("included in the fit" if include_limited else "excluded from the fit")),
        "excluded": [{"arm": r["arm"], "d_model": r.get("d_model"), "seed": r.get("seed"), "reason": r["_why"]}
                     for r in runs if not r["_fit"]],
        "curve": curve, "n_boot": n_boot, "n_ok": boot.n_ok, "ci": CI,
        "noise": {a: {"kind": n.kind, "dof": n.dof, "sd": math.sqrt(n.s2) if n.s2 == n.s2 else math.nan}
                  for a, n in boot.noise.items()},
        "joint": {"shared_alpha": joint.shared_alpha, "alpha": joint.alpha, "A": joint.A, "E": joint.E,
                  "k_parallel": joint.k},
        "fits": {name: {p: boot.est.get(f"fit{name}/{p}") for p in ("A", "alpha", "E")} for name in ("N", "Nne", "C")},
        "overlap_slope": {key: {a: {"slope": v.slope, "lo": v.ci[0], "hi": v.ci[1], "stderr": v.stderr, "n": v.n}
                                for a, v in fits.items()} for key, fits in overlap.items()},
        "tests": tests,
    }
    for name in ("k", "k_N", "k_Nne", "k_C"):
        res[name] = {a: _iv(boot, f"{name}/{a}") for a in d.arms}
        res[f"{name}_m"] = {a: per_width("k_m" if name == "k" else name, a) for a in d.arms}
    res["interpolated"] = {a: boot_interp(boot, d, a) for a in d.arms}
    res["pooled"] = pooled_verdicts(d, _tokens([r for r in runs if r["_fit"]]), *holm_family(chosen, runs))
    res["verdict"] = _verdicts(d, boot, curve, res["pooled"])
    return res
