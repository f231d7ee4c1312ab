"""report.md for `compare`: the text only; every number in it is computed in report.py / fit.py."""
from __future__ import annotations

import math

import numpy as np

_NA = {"est": float("nan"), "lo": float("nan"), "hi": float("nan")}


def fmt_int(d: dict) -> str:
    if d["kind"] == "nan":
        return "nan"
    if d["kind"]:
        return f"{d['kind']} {d['est']:.3g}"
    return f"{d['est']:.3g}" + (f" [{d['lo']:.3g}, {d['hi']:.3g}]" if math.isfinite(d["lo"]) else "")


def interp_line(per_width: dict, key: str) -> str:
    return ", ".join(f"m={w}: {fmt_int(v['C' if key == 'C' else 'm'])}" for w, v in sorted(per_width.items()))


def fmt(d: dict, digits: int = 3) -> str:
    g = lambda x: "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"  # noqa
    return f"{g(d['est'])} [{g(d['lo'])}, {g(d['hi'])}]"


def markdown(res: dict, runs: list[dict], figs: dict) -> str:
    b, f = res["baseline"], res["fit"]
    pct = f"{f['ci']:.0%}"
    lines = ["# Width-scaling comparison", "",
             f"{res['n_runs']} runs, {res['n_fit']} in the fit; baseline arm `{b}`. Data-limited rule: "
             f"{res['rule']}.", "", "## Runs", "",
             "| arm | m | seeds | val loss (mean ± sd) | epochs | tokens/param | gap (val−train) | flagged | fitted |",
             "|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["arm"], r.get("d_model", -1)), []).append(r)
    for (a, w), rs in sorted(cells.items(), key=lambda kv: (kv[0][0] != b, kv[0])):
        v = lambda k: [r[k] for r in rs if isinstance(r.get(k), (int, float))]  # noqa: E731
        mean = lambda xs: f"{np.mean(xs):.3g}" if xs else "–"  # noqa: E731
        loss = v("val_loss")
        gaps = [r["val_loss"] - r["train_loss"] for r in rs if {"val_loss", "train_loss"} <= r.keys()]
        ls = (f"{np.mean(loss):.4f}" + (f" ± {np.std(loss, ddof=1):.4f}" if len(loss) > 1 else "")) if loss else "–"
        flags = "; ".join(sorted({r["_flag"] for r in rs if r["_flag"]}))
        lines.append(f"| {a} | {w} | {len(rs)} | {ls} | {mean(v('epochs'))} | {mean(v('tokens_per_param'))} | "
                     f"{mean(gaps)} | {flags or '–'} | {sum(r['_fit'] for r in rs)}/{len(rs)} |")
    lines += glance(res, cells)
    lines += ["", "## Fit: L = A_arm · m^-α + E", "",
              f"Residuals in loss space (nats): the model is linear in (A, E) there, which variable projection "
              f"needs, and seed noise is additive in nats. {'Shared α' if f['shared_alpha'] else 'α per arm'}, "
              f"{'E fixed at 0' if f['fix_E'] else 'shared E ≥ 0'}, A ≥ 0. {pct} percentile CIs from "
              f"{f['n_ok']}/{f['n_boot']} bootstrap refits ({f['bootstrap']} resampling). RSS = {f['rss']:.3g}.",
              "", f"- E = {fmt(f['E'], 4)} nats/token"]
    if f["shared_alpha"]:
        lines.append(f"- α = {fmt(f['alpha'])}")
    if f["not_identified"]:
        lines.append(f"- **warning**: the fit is not identified ({'; '.join(f['not_identified'])}): the widths do "
                     "not pin α and E apart, so k, k_N and k_C below extrapolate one of many curves that fit "
                     "equally well. Trust the interpolated multipliers (next section but one) instead.")
    lines += ["", "| arm | α | A | k (summary) | k_N (params) | k_N (non-embed) | k_C (FLOPs) |",
              "|---|---|---|---|---|---|---|"]
    for a in res["arms"]:
        lines.append(f"| {a} | {fmt(f['alpha_arm'][a])} | {fmt(f['A'][a])} | {fmt(res['k'][a])} | "
                     f"{fmt(res['k_N'][a])} | {fmt(res['k_Nne'][a])} | {fmt(res['k_C'][a])} |")
    lines += ["", "k = m_eq/m: the baseline width that reaches the arm's loss, over the arm's width "
              "(with shared α, k = (A_base/A_arm)^(1/α)). k_N, k_C invert the baseline's own fits "
              "L(N) = A_N·N^-a + E_N and L(C) = A_C·C^-a + E_C: baseline params (FLOPs) needed for the arm's loss, "
              "over the arm's; summaries are geometric means over widths; inf means the arm's loss is below the "
              "baseline fit's floor.", ""]
    for name, label in (("N", "params"), ("Nne", "non-embedding params"), ("C", "FLOPs")):
        p = res[f"fit_{name}"]
        if p["a"] is not None and math.isfinite(p["a"]):
            lines.append(f"- baseline L({label}): A = {p['A']:.4g}, a = {p['a']:.3f}, E = {p['E']:.4f}")
    lines += ["", "### k(m) per width (observed mean loss of the cell)", "",
              "| arm | m | k(m) | k_N(m) | k_C(m) | Δ loss vs base | Welch t | dof | p |",
              "|---|---|---|---|---|---|---|---|---|"]
    for a in res["arms"]:
        for w, km in sorted(res["k_m"][a].items()):
            t = res["welch"].get(a, {}).get(w)
            if not t:
                tt = "– | – | – | –"
            elif math.isfinite(t["t"]):
                tt = f"{t['diff']:+.4f} | {t['t']:.2f} | {t['dof']:.1f} | {t['p']:.3g}"
            else:  # a t-test needs ≥ 2 seeds on both sides
                tt = f"{t['diff']:+.4f} | – | – | –"
            lines.append(f"| {a} | {w} | {fmt(km)} | {fmt(res['k_N_m'][a].get(w, _NA))} | "
                         f"{fmt(res['k_C_m'][a].get(w, _NA))} | {tt} |")
    lines += ["", "### Interpolated multipliers (no power law)", "",
              "m_eq and C_eq read off the baseline's own measured cells, linear in log x between the two that "
              "bracket the arm's loss (baseline made monotone first). `> x` / `< x`: the arm's loss lies outside "
              "the baseline's measured range, so only a bound is known; wider baselines would turn it into a "
              "number. CIs from the same bootstrap, shown when ≥ 95 % of draws stayed in range.", "",
              "| arm | m | k_int(m) (width) | k_int,C(m) (FLOPs) |", "|---|---|---|---|"]
    for a in res["arms"]:
        for w, v in sorted(res["interpolated"].get(a, {}).items()):
            lines.append(f"| {a} | {w} | {fmt_int(v['m'])} | {fmt_int(v['C'])} |")
    lines += ["", "## Overlap: mean cos² of normalised rows vs m", ""]
    if not res["overlap_slope"]:
        lines.append("No `geom_*_mean_cos2` columns in these runs.")
    for mat, fits in res["overlap_slope"].items():
        for a, s in fits.items():
            lines.append(f"- {mat}, {a}: slope of log mean cos² vs log m = {s['slope']:.3f} "
                         f"[{s['lo']:.3f}, {s['hi']:.3f}] (1/m guide: −1; random isotropic rows give exactly 1/m)")
    lines += ["", "## Verdict (equal FLOPs; 'beats the curve' needs k_C > 1 with its CI above 1)", ""]
    lines += [f"- **{a}**: {v}" for a, v in res["verdict"].items()] or ["- only the baseline arm was given"]
    lines += ["", "## Figures", ""] + [f"![{n}]({n}.png)" for n in figs]
    return "\n".join(lines) + "\n"


def glance(res: dict, cells: dict[tuple, list[dict]]) -> list[str]:
    """One row per arm: its loss change at each width, what it costs, what it does to the head's overlap, and
    its measured-point multiplier — the table to read first when a sweep has many arms."""
    b = res["baseline"]
    mean = lambda a, w, k: float(np.mean([r[k] for r in cells.get((a, w), []) if isinstance(r.get(k), (int, float))]  # noqa
                                         or [math.nan]))
    widths = sorted({w for (a, w) in cells if a == b})
    arms = [a for a in res["arms"] if a != b]
    if not arms or not widths:
        return []
    ws = " / ".join(str(w) for w in widths)
    out = ["", "## Arms at a glance", "",
           f"At m = {ws}: Δ = arm − baseline validation loss (nats/token), params and FLOPs/token as ratios to the "
           f"baseline's, k_int(m) = the measured-point width multiplier (next sections); head mean cos² as a ratio "
           f"to the baseline's at m = {widths[0]}.", "",
           "| arm | Δ loss | params × | FLOPs/token × | head mean cos² × | k_int(m) |", "|---|---|---|---|---|---|"]

    def ratio(a, w, k) -> str:
        x = mean(a, w, k) / mean(b, w, k)
        return f"{x:.2f}" if math.isfinite(x) else "–"  # e.g. no overlap metric in these runs

    def per_width(a, k) -> str:  # costs vary with m when an idea adds a fixed-size piece (a 256-wide head)
        return " / ".join(ratio(a, w, k) for w in widths)

    for a in arms:
        delta = [mean(a, w, "val_loss") - mean(b, w, "val_loss") for w in widths]
        d = " / ".join(f"{x:+.3f}" if math.isfinite(x) else "–" for x in delta)
        k = " / ".join(fmt_int(res["interpolated"][a][w]["m"]) if w in res["interpolated"].get(a, {}) else "–"
                       for w in widths)
        out.append(f"| {a} | {d} | {per_width(a, 'params')} | {per_width(a, 'flops_per_token')} | "
                   f"{ratio(a, widths[0], 'geom_unembed_mean_cos2')} | {k} |")
    return out
