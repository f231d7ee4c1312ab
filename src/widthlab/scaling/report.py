"""`python -m train compare runs/<sweep>`: fit L(m) across arms, express each arm as a width/params/FLOPs
multiplier with bootstrap CIs, and write report.md, PNG plots, compare.json and TensorBoard images.

Reads (never writes) the sweep's results.csv or runs' metrics.json, plus their TensorBoard event files for
curves and for metrics a summary lacks. The math lives in fit.py; this file is loading, checks and text.
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from widthlab import WidthlabError
from widthlab.scaling import events, plots
from widthlab.scaling.fit import (ScalingBootstrap, bootstrap_scaling, fit_loglog, interpolated_equivalent,
                                  welch_t)
from widthlab.scaling.markdown import fmt, interp_line, markdown

RECIPE_KEYS = ("data_source", "vocab_size", "n_layer", "seq_len")  # must agree for runs to share one curve
STR_COLS = {"arm", "run_dir", "data_source"}
INT_COLS = {"d_model", "seed", "vocab_size", "n_layer", "seq_len", "params", "params_nonembed", "tokens"}
OVERLAP_MATRICES = ("unembed", "embed")
CI = 0.95


# ---------------------------------------------------------------------------------------------- loading

def _coerce(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, str) and v.strip() == ""):
            continue  # missing: absent key, never ""
        if k in STR_COLS or not isinstance(v, (str, int, float)):
            out[k] = v
            continue
        try:
            x = float(v)
        except ValueError:
            out[k] = v
            continue
        out[k] = int(x) if k in INT_COLS and math.isfinite(x) and x.is_integer() else x
    return out


def _run_dir(row: dict, sweep: Path) -> Path | None:
    """results.csv's run_dir may be absolute, relative to where the sweep ran, or to the sweep dir."""
    cands = []
    if "run_dir" in row:
        p = Path(str(row["run_dir"]))
        cands += [p] if p.is_absolute() else [Path.cwd() / p, sweep / p, sweep.parent / p, sweep / p.name]
    if {"arm", "d_model", "seed"} <= row.keys():
        cands.append(sweep / str(row["arm"]) / f"d{row['d_model']}" / f"s{row['seed']}")
    return next((c.resolve() for c in cands if c.is_dir()), None)


def load_runs(paths: list[str]) -> list[dict]:
    """One dict per run from sweep dirs (results.csv), run dirs (metrics.json), or dirs holding run dirs.
    Adds `_dir` (resolved run dir or None) and `_scalars` (event-file scalars); fills missing metrics from
    the event files and `flops` from flops_per_token·tokens. A run seen twice is kept once (see below)."""
    found: dict[object, dict] = {}
    for p in map(Path, paths):
        if (p / "results.csv").is_file():
            with open(p / "results.csv", newline="") as f:
                rows = [(_coerce(r), p) for r in csv.DictReader(f)]
            rows = [(r, _run_dir(r, p)) for r, _ in rows]
        elif p.is_dir():
            files = [p / "metrics.json"] if (p / "metrics.json").is_file() else sorted(p.rglob("metrics.json"))
            rows = [(_coerce(json.loads(f.read_text())), f.parent.resolve()) for f in files
                    if "tb_compare" not in f.parts]
        else:
            continue
        for r, d in rows:
            r.setdefault("arm", "baseline")  # a plain `fit` run is its own baseline
            r["_dir"] = d
            # One configuration (arm, width, seed) is one run: runs are deterministic, so the same one listed
            # by two sources (a sweep dir and an archived results.csv) has the same loss and is kept once, with
            # its run dir if either has one; two different losses mean two different experiments.
            key = (r["arm"], r.get("d_model"), r.get("seed", 0))
            old = found.get(key)
            if old is not None and old["_dir"] != d and old.get("val_loss") != r.get("val_loss"):
                raise WidthlabError(f"two different runs of arm {key[0]!r} at d_model={key[1]}, seed {key[2]} "
                                    f"(val_loss {old.get('val_loss')} vs {r.get('val_loss')}; second from {p}): "
                                    "compare one sweep's runs, or rename an arm")
            if old is None or old["_dir"] is None:
                found[key] = r
    runs = list(found.values())
    for r in runs:
        r["_scalars"] = events.read_scalars(r["_dir"]) if r["_dir"] is not None else {}
        for k, v in events.summary_from_scalars(r["_scalars"]).items():
            r.setdefault(k, v)
        if "flops" not in r and {"flops_per_token", "tokens"} <= r.keys():
            r["flops"] = r["flops_per_token"] * r["tokens"]
    return runs


def check_recipe(runs: list[dict]) -> None:
    for k in RECIPE_KEYS:
        vals = sorted({str(r[k]) for r in runs if k in r})
        if len(vals) > 1:
            raise WidthlabError(f"runs mix {k} values {vals}: compare runs of one recipe at a time "
                                f"(pass only the sweep/run dirs that share {k})")


def flag_limited(r: dict, max_gap: float, max_epochs: float) -> str:
    """'' or why a run looks data-limited rather than width-limited (the fit assumes the latter)."""
    why = []
    if "val_loss" in r and "train_loss" in r and r["val_loss"] - r["train_loss"] > max_gap:
        why.append(f"gap {r['val_loss'] - r['train_loss']:.3f}>{max_gap:g}")
    if "epochs" in r and r["epochs"] > max_epochs:
        why.append(f"epochs {r['epochs']:.3g}>{max_epochs:g}")
    return ", ".join(why)


# ---------------------------------------------------------------------------------------------- compare

def compare(paths: list[str] | str, baseline: str = "baseline", shared_alpha: bool = True, n_boot: int = 1000,
            out: str | None = None, min_width: int | None = None, seed: int = 0, include_limited: bool = False,
            max_gap: float = 0.1, max_epochs: float = 16.0, fix_E: bool = False) -> dict:
    """Fit L(m) = A_arm·m^-α + E over a width sweep and report each arm's width/params/FLOPs multipliers.

    Args:
        paths: A sweep dir (with results.csv), run dirs (with metrics.json), or a list of them
            (`"[runs/a, runs/b]"`); all must share one recipe (data_source, vocab_size, n_layer, seq_len).
        baseline: The arm every other arm is measured against.
        shared_alpha: Share the exponent α across arms (default); false fits one α per arm.
        n_boot: Bootstrap resamples (runs resampled within each arm × width cell) for the CIs.
        out: Directory for report.md, PNGs, compare.json and tb_compare/ (default: the first path).
        min_width: Leave widths below this out of every fit (small widths often sit off the power law).
        seed: Seed of the bootstrap resampling.
        include_limited: Also fit runs flagged as data-limited (excluded by default).
        max_gap: A run is data-limited if val_loss − train_loss exceeds this (nats/token).
        max_epochs: ... or if it took more than this many passes over the data (repeated tokens beyond
            ~16 epochs add little, Muennighoff et al. 2023).
        fix_E: Fix the irreducible loss E at 0 instead of fitting it.

    Returns:
        The key numbers (also written to compare.json): α, E, A per arm, k, k(m), k_N, k_C with CIs,
        overlap slopes, per-width Welch tests, verdicts.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    runs = load_runs(paths)
    if not runs:
        raise WidthlabError(f"no runs found in {paths}: pass a sweep dir with results.csv or run dirs "
                            "with metrics.json")
    check_recipe(runs)
    arms = sorted({r["arm"] for r in runs})
    if baseline not in arms:
        raise WidthlabError(f"baseline arm {baseline!r} not found (arms: {arms}): pass --baseline <arm>")
    for r in runs:
        r["_flag"] = flag_limited(r, max_gap, max_epochs)
        r["_fit"] = ("d_model" in r and isinstance(r.get("val_loss"), float) and math.isfinite(r["val_loss"])
                     and (min_width is None or r["d_model"] >= min_width) and (include_limited or not r["_flag"]))
    fit_runs = [r for r in runs if r["_fit"]]
    widths = {a: sorted({r["d_model"] for r in fit_runs if r["arm"] == a}) for a in arms}
    need = [baseline] + ([] if shared_alpha else [a for a in arms if widths[a]])
    for a in need:
        if len(widths[a]) < 3:
            n_lim = sum(bool(r["_flag"]) for r in runs if r["arm"] == a)
            raise WidthlabError(
                f"arm {a!r} has {len(widths[a])} usable widths {widths[a]} (< 3 needed for a fit; {n_lim} of its "
                "runs flagged data-limited): add widths, lower --min_width, or pass --include_limited true")
    fit_runs = [r for r in fit_runs if widths[r["arm"]]]

    col = lambda k: np.array([r.get(k, np.nan) for r in fit_runs], dtype=float)  # noqa: E731
    m, L, arm = col("d_model"), col("val_loss"), np.array([r["arm"] for r in fit_runs], dtype=object)
    boot = bootstrap_scaling(m, L, arm, baseline, shared_alpha, fix_E, N=col("params"),
                             N_nonembed=col("params_nonembed"), C=col("flops"), n_boot=n_boot, ci=CI, seed=seed)
    overlap = {}
    for mat in OVERLAP_MATRICES:
        y = col(f"geom_{mat}_mean_cos2")
        for a in boot.fit.arms:
            sel = (arm == a) & np.isfinite(y) & (y > 0)
            if len(np.unique(m[sel])) >= 2:
                overlap.setdefault(mat, {})[a] = fit_loglog(m[sel], y[sel], n_boot=n_boot, seed=seed, ci=CI)
    welch = {a: {int(w): welch_t(L[(arm == a) & (m == w)], L[(arm == baseline) & (m == w)])
                 for w in sorted(set(m[arm == a]) & set(m[arm == baseline]))}
             for a in boot.fit.arms if a != baseline}

    out_dir = Path(out) if out is not None else Path(paths[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = {"loss_vs_width": plots.loss_vs_width(m, L, arm, boot, CI), "multiplier": plots.multiplier(boot),
            "multiplier_measured": plots.multiplier(boot, key="k_int")}
    for mat, fits in overlap.items():
        name = "overlap_vs_width" if mat == next(iter(overlap)) else f"overlap_vs_width_{mat}"
        figs[name] = plots.overlap_vs_width(m, col(f"geom_{mat}_mean_cos2"), arm, fits, f"{mat} mean cos²")
    series = [(r["arm"], r["d_model"], r.get("seed", 0), r["_scalars"]["val/loss"])
              for r in runs if r.get("_scalars", {}).get("val/loss") and "d_model" in r]
    if series:
        figs["curves"] = plots.curves(series)
    images = {name: plots.render(fig) for name, fig in figs.items()}
    for name, rgba in images.items():
        plots.save_png(rgba, out_dir / f"{name}.png")
    plots.log_to_tensorboard(images, out_dir / "tb_compare")

    result = _summary(boot, overlap, welch, runs, n_boot, max_gap, max_epochs, include_limited)
    result["files"] = sorted(["report.md", "compare.json"] + [f"{n}.png" for n in figs])
    _write_atomic(out_dir / "compare.json", json.dumps(_jsonable(result), indent=2) + "\n")
    _write_atomic(out_dir / "report.md", markdown(result, runs, figs))
    print(f"compare: wrote {out_dir / 'report.md'}")
    for a, v in result["verdict"].items():
        print(f"  {a}: {v}")
    return result


# ---------------------------------------------------------------------------------------------- summary/text

def _iv(boot: ScalingBootstrap, key: str) -> dict:
    lo, hi = boot.ci.get(key, (float("nan"), float("nan")))
    return {"est": boot.est.get(key, float("nan")), "lo": lo, "hi": hi}


def _verdict(kc: dict) -> str:
    if math.isnan(kc["lo"]):
        return "no verdict: k_C unavailable (needs flops for ≥ 3 baseline widths)"
    if kc["lo"] > 1:
        return f"beats the curve: k_C = {kc['est']:.3g} [{kc['lo']:.3g}, {kc['hi']:.3g}] > 1 at equal FLOPs"
    if kc["hi"] < 1:
        return f"below the curve: k_C = {kc['est']:.3g} [{kc['lo']:.3g}, {kc['hi']:.3g}] < 1 at equal FLOPs"
    return f"no detectable gain at equal FLOPs: k_C = {kc['est']:.3g} [{kc['lo']:.3g}, {kc['hi']:.3g}] spans 1"


def _summary(boot, overlap, welch, runs, n_boot, max_gap, max_epochs, include_limited) -> dict:
    f, b = boot.fit, boot.fit.baseline
    per_width = lambda prefix, a: {int(k.rsplit("/", 1)[1]): _iv(boot, k) for k in boot.est  # noqa: E731
                                   if k.startswith(f"{prefix}/{a}/")}
    res = {
        "baseline": b, "arms": f.arms, "n_runs": len(runs), "n_fit": f.n,
        "rule": (f"data-limited if val_loss - train_loss > {max_gap:g} nats or epochs > {max_epochs:g}; "
                 + ("included in the fit" if include_limited else "excluded from the fit")),
        "excluded": [{"arm": r["arm"], "d_model": r.get("d_model"), "seed": r.get("seed"),
                      "reason": r["_flag"] or "width/val_loss"} for r in runs if not r["_fit"]],
        "fit": {"space": "loss (nats), variable projection + NNLS", "shared_alpha": f.shared_alpha,
                "fix_E": f.fix_E, "rss": f.rss, "alpha_at_bound": f.at_bound, "bootstrap": boot.method,
                "n_boot": n_boot, "n_ok": boot.n_ok, "ci": CI,
                "alpha": _iv(boot, "alpha"), "E": _iv(boot, "E"),
                "alpha_arm": {a: _iv(boot, f"alpha/{a}") for a in f.arms},
                "A": {a: _iv(boot, f"A/{a}") for a in f.arms}},
        "k": {a: _iv(boot, f"k/{a}") for a in f.arms},
        "k_m": {a: per_width("k_m", a) for a in f.arms},
        "overlap_slope": {mat: {a: {"slope": v.slope, "lo": v.ci[0], "hi": v.ci[1], "stderr": v.stderr}
                                for a, v in fits.items()} for mat, fits in overlap.items()},
        "welch": {a: {w: vars(t) for w, t in ws.items()} for a, ws in welch.items()},
    }
    for name in ("N", "Nne", "C"):
        res[f"fit_{name}"] = {p: boot.est.get(f"fit{name}/{p}") for p in ("A", "a", "E")}
        res[f"k_{name}"] = {a: _iv(boot, f"k_{name}/{a}") for a in f.arms}
        res[f"k_{name}_m"] = {a: per_width(f"k_{name}", a) for a in f.arms}
    res["fit"]["not_identified"] = _unidentified(res["fit"])
    res["interpolated"] = _interpolated(boot, runs)
    res["verdict"] = {a: _verdict(res["k_C"][a]) for a in f.arms if a != b}
    if res["fit"]["not_identified"]:
        res["verdict"] = {a: f"no curve verdict: the fit is not identified ({'; '.join(res['fit']['not_identified'])}) "
                             f"and its k_C = {fmt(res['k_C'][a])} extrapolates; measured-point k_C(m): "
                             f"{interp_line(res['interpolated'][a], 'C')}" for a in res["verdict"]}
    return res


def _unidentified(f: dict) -> list[str]:
    """Why the widths do not pin α and E apart (empty when they do): then k, k_N, k_C extrapolate a guess."""
    why = []
    if not f["fix_E"] and f["E"]["est"] <= 1e-9:
        why.append("E at its bound 0")
    if f["alpha_at_bound"]:
        why.append("α at its search bound")
    a = f["alpha"]
    if f["shared_alpha"] and a["lo"] > 0 and a["hi"] / a["lo"] > 3:
        why.append(f"α's CI spans ×{a['hi'] / a['lo']:.0f}")
    return why


def _interpolated(boot: ScalingBootstrap, runs: list[dict]) -> dict:
    """Per arm and width: k_int (width) and k_intC (FLOPs) read off the baseline's measured cells, no power law.
    `kind` is "" (interpolated), ">"/"<" (only a bound: outside the baseline's loss range). CIs only when
    ≥ 95 % of the bootstrap draws stayed inside the range (otherwise the interval would be conditional)."""
    b = boot.fit.baseline
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["_fit"]:
            cells.setdefault((r["arm"], r["d_model"]), []).append(r)
    mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if all(k in r for r in rs) else float("nan")  # noqa
    base = sorted((w, mean(rs, "val_loss"), mean(rs, "flops")) for (a, w), rs in cells.items() if a == b)
    out: dict[str, dict] = {}
    for (a, w), rs in sorted(cells.items()):
        L, C = mean(rs, "val_loss"), mean(rs, "flops")
        row = {}
        for name, xs, x in (("", [p[0] for p in base], w), ("C", [p[2] for p in base], C)):
            x_eq, kind = interpolated_equivalent(xs, [p[1] for p in base], L)
            draws = boot.samples.get(f"k_int{name}/{a}/{w}", np.array([]))
            ok = np.isfinite(draws).mean() >= 0.95 if draws.size else False
            lo, hi = boot.ci.get(f"k_int{name}/{a}/{w}", (math.nan, math.nan)) if ok else (math.nan, math.nan)
            row[name or "m"] = {"est": x_eq / x, "kind": kind, "lo": lo, "hi": hi}
        out.setdefault(a, {})[int(w)] = row
    return out


def _jsonable(x):
    """Strict JSON: NaN -> null, ±inf -> "inf"/"-inf" (an infinite multiplier is a real answer)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) else ("inf" if x == math.inf else "-inf" if x == -math.inf else x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
