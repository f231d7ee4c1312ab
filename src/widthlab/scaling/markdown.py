"""report.md for `compare`: the text only; every number in it is computed in report.py / inference.py / fit.py."""
from __future__ import annotations

import math

import numpy as np

from widthlab.scaling.runs import budget_lines
from widthlab.scaling.selection import selection_lines

_NA = {"est": float("nan"), "lo": float("nan"), "hi": float("nan")}


def _has(x) -> bool:
    """A number to print: not missing, not NaN (±inf is a real answer: an infinite multiplier)."""
    return isinstance(x, (int, float)) and x == x


def fmt_int(d: dict) -> str:
    if d["kind"] == "nan" or not _has(d["est"]):
        return "–"
    if d["kind"]:
        return f"{d['kind']} {d['est']:.3g}"
    return f"{d['est']:.3g}" + (f" [{d['lo']:.3g}, {d['hi']:.3g}]" if math.isfinite(d["lo"]) else "")


def interp_line(per_width: dict, key: str) -> str:
    return ", ".join(f"m={w}: {fmt_int(v['C' if key == 'C' else 'm'])}" for w, v in sorted(per_width.items()))


def fmt(d: dict, digits: int = 3) -> str:
    """est [lo, hi]; the estimate alone when there is no interval (the report says why: no_interval), "–" when
    there is no estimate. Never nan."""
    if not _has(d["est"]):
        return "–"
    if not (_has(d["lo"]) and _has(d["hi"])):
        return f"{d['est']:.{digits}g}"
    return f"{d['est']:.{digits}g} [{d['lo']:.{digits}g}, {d['hi']:.{digits}g}]"


def no_interval(res: dict) -> str:
    """Why some estimate has no interval, in words, with what would give one."""
    b, noise = res["baseline"], res["noise"]
    n_w = res["curve"]["n_widths"]
    if noise[b]["kind"] == "none":
        return (f"the baseline has no replicate seeds (one run per width) and only {n_w} widths, so there is no noise "
                "estimate to draw intervals from: add a seed (a second run at every width), or a fourth width")
    lone = [a for a, n in noise.items() if n["kind"] == "none"]
    if lone:
        return (f"{', '.join(lone)} ha{'s' if len(lone) == 1 else 've'} no replicate seeds and too few widths for "
                "a noise estimate of its own: add a seed")
    return "fewer than 95 % of the bootstrap draws gave a finite value"


def _bound(d: dict, key: str, digits: int = 3, why: str = "") -> str:
    if not (_has(d["lo"]) and _has(d["hi"])):
        return f"{key} = {d['est']:.{digits}g} (no interval: {why})" if why else f"{key} = {d['est']:.{digits}g}"
    lo = ("≤ " if d["open_lo"] else "") + f"{d['lo']:.{digits}g}"
    hi = f"{d['hi']:.{digits}g}" + (" (bound)" if d["open_hi"] else "")
    return f"{key} = {d['est']:.{digits}g} [{lo}, {hi}]"


def markdown(res: dict, runs: list[dict], figs: dict) -> str:
    b, c = res["baseline"], res["curve"]
    pct = f"{res['ci']:.0%}"
    lines = ["# Width-scaling comparison", "",
             f"{res['n_runs']} runs, {res['n_fit']} in the fit; fitted loss: `{res['loss']}`; baseline arm `{b}`. "
             f"Data-limited rule: {res['rule']}. How every number below is computed: docs/statistics.md.", ""]
    if res["skipped"]:
        lines += [f"Skipped: {', '.join(res['skipped'])}.", ""]
    lines += _how_run(res.get("provenance"))
    lines += ["## Runs", "",
              "| arm | m | seeds | fitted loss (mean ± sd) | last val loss | epochs | tokens/param | gap (val − train_eval) "
              "| run time (median) | excluded |", "|---|---|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["arm"], r.get("d_model", -1)), []).append(r)
    for (a, w), rs in sorted(cells.items(), key=lambda kv: (kv[0][0] != b, kv[0])):
        v = lambda k: [r[k] for r in rs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]  # noqa: E731
        mean = lambda xs: f"{np.mean(xs):.3g}" if xs else "–"  # noqa: E731
        loss = v("_loss")
        gaps = [r["val_loss"] - r["train_loss_eval"] for r in rs
                if isinstance(r.get("train_loss_eval"), float) and isinstance(r.get("val_loss"), float)]
        ls = (f"{np.mean(loss):.4f}" + (f" ± {np.std(loss, ddof=1):.4f}" if len(loss) > 1 else "")) if loss else "–"
        why = "; ".join(sorted({r["_why"] for r in rs if r["_why"]}))
        last = v("val_loss")
        lines.append(f"| {a} | {w} | {len(rs)} | {ls} | {f'{np.mean(last):.4f}' if last else '–'} | "
                     f"{mean(v('epochs'))} | {mean(v('tokens_per_param'))} | {mean(gaps)} | {_minutes(v('wall_s'))} | "
                     f"{why or '–'} |")
    lines += glance(res, cells)
    lines += _curve(res, c, pct, runs)
    if len(res["arms"]) > 1:
        lines += _multipliers(res, pct)
    lines += _overlap(res)
    lines += ["", "## Verdict", "",
              "Per arm, at equal parameters (k_N) and at equal training FLOPs (k_C): *beats* / *loses to* when the "
              "summary multiplier differs from 1 with a Holm-adjusted bootstrap p < 0.05 over the arms, else "
              "*is not distinguishable from* it (not an equivalence claim: read the interval, which is unadjusted). Only given when the baseline's curve passes its checks. "
              "Curve-free, per arm (the verdict to read when the curve fails): the mean over the shared widths of arm − "
              "baseline at equal width, by a paired t over the seeds both ran at every one of those widths (exact "
              "for normal D_s, whatever a seed's effect; 1 dof with two seeds), Holm-adjusted over the arms: *lowers* / *raises* the "
              "loss when p < 0.05, else *does not detectably change* it (not an equivalence claim; the printed "
              "interval is unadjusted). Per-width Δ tests below are descriptive; each kind of verdict is corrected "
              "over the arms, not across kinds.", ""]
    if res.get("selection"):  # a confirmation: the curve-free verdicts' family is fixed, not "the arms"
        lines += ["In this confirmation the curve-free verdicts are Holm-adjusted over its family, the ideas fixed "
                  "with the selection (below), whatever the data: a member without a test yet counts as p = 1 and "
                  "the others' verdicts say *provisional*; a member with a diverged run counts as failing.", ""]
    lines += [f"- **{a}**: {v['text']}" for a, v in res["verdict"].items()] or ["- only the baseline arm was given"]
    lines += selection_lines(res.get("selection"))  # a confirmation sweep: what its tuned arms were chosen from
    lines += ["", "## Figures", ""] + [f"![{n}]({n}.png)" for n in figs]
    return "\n".join(lines) + "\n"


def _minutes(walls: list[float]) -> str:
    return f"{np.median(walls) / 60:.1f} min" if walls else "–"


def _how_run(prov: dict | None) -> list[str]:
    """Which commands made these results and how long the runs took (sweep.json, the runs' wall_s)."""
    if not prov or not (prov["sweeps"] or prov.get("compare_command") or prov["n_timed"]):
        return []
    lines = ["## How this was run", ""]
    for s in prov["sweeps"]:
        how = (f"`{s['command']}`" if s.get("command") else
               "a command not recorded (sweep.json written from Python or by an older widthlab)")
        par = f", {s['devices']} run(s) at a time" if s.get("devices") and s.get("launcher", "local") == "local" else ""
        role = f" — {s['role']}" if s.get("role") else ""
        lines.append(f"- sweep `{s.get('name')}` ({s['dir']}{role}): fit recipe `{s.get('recipe')}`{par}; last run by "
                     f"{how}")
        lines += budget_lines(s.get("budget"))
    if prov.get("compare_command"):
        lines.append(f"- this report: `{prov['compare_command']}`")
    if prov["n_timed"]:
        lines.append(f"- run time: {prov['wall_s_total'] / 3600:.2f} h summed over the {prov['n_timed']} runs that "
                     "recorded it (wall clock of each fit, including validation and the overlap monitor; runs side "
                     "by side share the cores); median per run in the Runs table")
    return lines + [""]


def _no_midrun(runs: list[dict], res: dict) -> str:
    """Why α could not be refitted at 60 % of training: no history at all, or no validation that early."""
    base = [r for r in runs if r["arm"] == res["baseline"] and r.get("_fit")]
    if not any(r.get("val_history") for r in base):
        return "the runs carry no validation history (a CSV, or results without val_history)"
    return ("the refit needs each baseline run's loss at or before 60 % of its training, and not every run "
            "validated that early: validate more often (trainer.val_check_interval), or give a matched short "
            "sweep (--short_sweep)")


def _curve(res: dict, c: dict, pct: str, runs: list[dict]) -> list[str]:
    lof, conv = c["lack_of_fit"], c["convergence"]
    why = no_interval(res)
    noise = (f"{pct} profile-likelihood intervals with the noise variance from the {c['noise']}"
             if c["noise"] != "no noise estimate" else f"no intervals: {why}")
    out = ["", "## The baseline's width curve: L = A · m^-α + E", "",
           f"Fitted to the baseline's {c['n_widths']} cell means ({c['n_runs']} runs, weights = seeds) by variable "
           f"projection; {noise}.", "",
           f"- {_bound(c['alpha'], 'α', why='see above')}" + (
               f" (half-width {(c['alpha']['hi'] - c['alpha']['lo']) / 2:.3f})" if math.isfinite(c['alpha']['lo'])
               else ""),
           f"- {_bound(c['E'], 'E', 4, why='see above')} nats/token; A = {c['A']:.4g}"]
    if math.isfinite(lof["p"]):
        out.append(f"- lack of fit: χ²/dof = {lof['chi2_dof']:.2f} (cell means about the curve in units of the seed "
                   f"variance; F on ({lof['dof']}, {lof['nu']}) dof), p = {lof['p']:.3g}"
                   + (" — **the power law does not fit these cell means to within seed noise**" if lof["p"] < 0.05
                      else ""))
        if c.get("alpha_misfit"):
            m = c["alpha_misfit"]
            half = f" (half-width {(m['hi'] - m['lo']) / 2:.3f})" if math.isfinite(m["lo"]) else ""
            out.append(f"- α's interval above assumes seed noise is the only scatter about the curve, which the lack "
                       f"of fit rejects; allowing for the misfit (noise × χ²/dof = {m['dispersion']:.2f}, on the "
                       f"{m['dof']} lack-of-fit dof, as for an overdispersed GLM; it covers the best-fitting α for "
                       f"these widths): {_bound({**m, 'est': c['alpha']['est']}, 'α')}{half}")
    else:
        out.append("- lack of fit: not testable (needs seeds in the baseline's cells and more widths than 3)")
    if c.get("levene_p") == c.get("levene_p") and c.get("levene_p") is not None and c["levene_p"] < 0.05:
        out.append(f"- **seed noise differs between widths** (Levene p = {c['levene_p']:.2g}): the pooled variance "
                   "understates the noise at the noisiest widths, so their per-width intervals are too narrow")
    mid, matched = conv.get("midrun", conv), conv.get("matched")
    if matched:
        lo, hi = (f"{x * 100:.0f}" for x in matched.get("frac_range") or [matched["frac"]] * 2)
        out.append(f"- convergence (decides): a matched sweep at {lo if lo == hi else f'{lo}–{hi}'} % of the steps "
                   f"({matched['steps']:g}, its own schedule; {matched['n_runs']} runs, same widths and seeds) gives "
                   f"α = {matched['alpha']:.3f} [{matched['lo']:.3f}, {matched['hi']:.3f}], E = {matched['E']:.3f}; "
                   f"seed-paired {matched.get('estimand', 'α_short − α_full')} = {matched['diff']:+.3f} "
                   f"[{matched['diff_lo']:+.3f}, {matched['diff_hi']:+.3f}] ({matched['n_seeds'] - 1} dof; "
                   f"{matched.get('method', 'delta method')}"
                   + (f"; α_short − α_full of the cell means = {matched['diff_means']:+.3f}"
                      if matched.get("estimand", "α_short − α_full") != "α_short − α_full" else "") + ") "
                   f"→ **{matched['outcome']}** "
                   f"(converged: the interval within ±{matched['tol']:g}; not converged: it excludes 0)")
    if mid.get("checked"):
        out.append(f"- {'mid-run refit (information only)' if matched else 'convergence'}: refitted on the losses at "
                   f"60 % of training, α = {mid['alpha']:.3f}, E = {mid['E']:.3f} "
                   f"({'inside' if mid['inside'] else '**outside**'} α's interval)"
                   + ("; under a cosine schedule that checkpoint has not decayed its LR" if matched else ""))
    elif not matched:
        out.append(f"- convergence: not checked ({_no_midrun(runs, res)})")
    if c["not_identified"] or c["fails"]:
        out.append(f"- **warning**: the curve does not pass its checks ({'; '.join(c['not_identified'] + c['fails'])}). "
                   "Multipliers below still compare each arm with the baseline measured at the same width, but "
                   "their conversion into widths, params and FLOPs rests on a curve the data do not support; read "
                   "the curve-free verdict (Verdict) and, at equal cost, the measured-point multipliers instead.")
    for name, label in (("N", "params"), ("Nne", "non-embedding params"), ("C", "FLOPs")):
        p = res["fits"][name]
        if p["alpha"] is not None and math.isfinite(p["alpha"]):
            out.append(f"- baseline L({label}) = {p['A']:.4g}·x^-{p['alpha']:.3f} + {p['E']:.4f}")
    j = res["joint"]
    if len(res["arms"]) > 1:
        ks = ", ".join(f"{a} {k:.3g}" for a, k in j["k_parallel"].items() if a != res["baseline"] and k == k)
        out += ["", f"Joint fit of every arm ({'shared α' if j['shared_alpha'] else 'α per arm'}, shared E = "
                f"{j['E']:.4f}; dashed in the plot): " + (f"parallel-curve multipliers (A_base/A_arm)^(1/α): {ks}."
                                                          if ks else "α differs per arm.")]
    out += ["", "Noise per arm (the source of its bootstrap draws): " + "; ".join(
        f"{a}: {n['kind']}" + (f" (sd {n['sd']:.4f}, {n['dof']} dof)" if n['kind'] != 'none' else
                               " (one run per width: no replicate seeds)")
        for a, n in res["noise"].items()) + "."]
    return out


def _multipliers(res: dict, pct: str) -> list[str]:
    b = res["baseline"]
    out = ["", "## Multipliers", "",
           f"Per width: Δ = arm − baseline loss at the same width (paired by seed where the arm has a seed-paired "
           f"noise source), converted along the baseline's fitted curves into the baseline width (k = m_eq/m), params "
           f"(k_N = N_eq/N_arm) and FLOPs (k_C = C_eq/C_arm) that would reach the arm's loss. The baseline against "
           f"itself is 1 by construction. Summaries are geometric means over the arm's widths. {pct} percentile "
           f"intervals from {res['n_ok']}/{res['n_boot']} bootstrap draws of the data.", "",
           "| arm | k (width) | k_N (params) | k_N (non-embed) | k_C (FLOPs) |", "|---|---|---|---|---|"]
    for a in res["arms"]:
        out.append(f"| {a} | {fmt(res['k'][a])} | {fmt(res['k_N'][a])} | {fmt(res['k_Nne'][a])} | {fmt(res['k_C'][a])} |")
    out += ["", "### Per width", "",
            "Δ-loss test: paired t over shared seeds (`paired`), else Welch's t (`welch`); p_holm is adjusted over "
            "every test in this table. With 1–2 dof a t interval is very wide: such p-values are marked †.", "",
            "| arm | m | k(m) | k_N(m) | k_C(m) | Δ loss | test | n | dof | p | p_holm |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in res["arms"]:
        if a == b:
            continue
        for w, km in sorted(res["k_m"][a].items()):
            t = res["tests"].get(a, {}).get(w)
            if not t:
                tt = "– | – | – | – | – | –"
            elif t["kind"] and math.isfinite(t["p"]):
                dag = "†" if t["dof"] < 3 else ""
                tt = (f"{t['diff']:+.4f} | {t['kind']} | {t['n']} | {t['dof']:.3g} | {t['p']:.3g}{dag} | "
                      f"{t['p_holm']:.3g}{dag}")
            else:  # a t-test needs ≥ 2 seeds (paired, or on both sides)
                tt = f"{t['diff']:+.4f} | – | {t['n']} | – | – | –"
            out.append(f"| {a} | {w} | {fmt(km)} | {fmt(res['k_N_m'][a].get(w, _NA))} | "
                       f"{fmt(res['k_C_m'][a].get(w, _NA))} | {tt} |")
    shown = [v for a in res["arms"] for name in ("k", "k_N", "k_Nne", "k_C") for v in
             [res[name][a], *res[f"{name}_m"][a].values()]]
    if any(_has(v["est"]) and not (_has(v["lo"]) and _has(v["hi"])) for v in shown):
        out += ["", f"A multiplier shown without an interval has none: {no_interval(res)}."]
    out += ["", "### Measured-point multipliers (no power law)", "",
            "m_eq and C_eq read off the baseline's own measured cells: log x interpolated as a function of loss by a "
            "monotone cubic (PCHIP) through the cells that bracket the arm's loss (baseline made monotone first). "
            "`> x` / `< x`: the arm's loss lies outside the baseline's measured range, so only a bound is known. "
            "CIs from the same bootstrap, shown when ≥ 95 % of draws stayed in range.", "",
            "| arm | m | k_int(m) (width) | k_int,C(m) (FLOPs) |", "|---|---|---|---|"]
    for a in res["arms"]:
        for w, v in sorted(res["interpolated"].get(a, {}).items()):
            out.append(f"| {a} | {w} | {fmt_int(v['m'])} | {fmt_int(v['C'])} |")
    return out


def _overlap(res: dict) -> list[str]:
    out = ["", "## Overlap vs width", "",
           "Slope of log(statistic) on log m over the cell means (one point per width), OLS with a t interval on "
           "n − 2 dof. `mean_cos2`: mean cos² of the normalised rows (the paper's statistic; random isotropic rows "
           "give 1/m, slope −1). `mean_cos2_centred`: the same after subtracting the mean row, i.e. without the "
           "shared direction (\"cone\") that dominates trained heads.", ""]
    if not res["overlap_slope"]:
        out.append("No `geom_*_mean_cos2` columns in these runs.")
    for key, fits in res["overlap_slope"].items():
        for a, s in fits.items():
            ci = f"[{s['lo']:.3f}, {s['hi']:.3f}]" if math.isfinite(s["lo"]) else "(no interval with 2 widths)"
            out.append(f"- {key}, {a}: slope {s['slope']:.3f} {ci}, n = {s['n']}")
    return out


_NO_POOLED = "no curve-free verdict (it needs two seeds that both arms ran at every width they share)"


def pooled_text(v: dict | None, same_cost: float) -> str:
    """An arm's curve-free verdict in words (its entry of seedtests.pooled_verdicts; None: it has none); same_cost: the
    fraction of the baseline's params and FLOPs within which an arm counts as costing the same."""
    if v is None:
        return _NO_POOLED
    ws, ss = "/".join(map(str, v["widths"])), "/".join(map(str, v["seeds"]))
    if v["same_cost"]:
        cost = (f"params and FLOPs within {same_cost:.1%} of the baseline's, so this is also the verdict at equal "
                "params and FLOPs")
    elif v["cost_ratio"]:
        cost = ("costs differ (" + ", ".join(f"{'params' if k == 'N' else 'FLOPs'} ×{lo:.3g}–{hi:.3g}"
                                             for k, (lo, hi) in v["cost_ratio"].items())
                + "): at equal params or FLOPs read the measured-point multipliers")
    else:
        cost = "params or FLOPs not recorded for every run, so not known at equal cost"
    word = {"unavailable": "has no usable test of", "does not detectably change":
            "does not detectably change (not an equivalence claim: read the interval)",
            "diverged": f"counts as failing on (a run diverged: {v.get('failed')})"}.get(v["word"], v["word"])
    fam = v.get("family")
    if fam and fam["with_verdict"] < fam["size"]:  # Holm over the whole pre-registered family, missing ones as p = 1
        word += (f" [provisional: {fam['with_verdict']} of the {fam['size']} ideas of its Holm family have a test or "
                 "a diverged run; the others count as p = 1 until they do]")
    data = (f"; it trained on {token_ratio(v)} the baseline's tokens at these widths (its token budget counts its "
            "own parameters), so this Δ is at equal width, not at equal data" if v.get("token_ratio") else "")
    return (f"at equal width (m = {ws}) it {word} the loss: mean Δ = {v['diff']:+.4f}, 95 % CI (unadjusted) "
            f"[{v['lo']:+.4f}, {v['hi']:+.4f}] nats (paired t over seeds {ss}, {v['dof']:.0f} dof, Holm p = "
            f"{v['p_holm']:.2g}){data}; {cost}")


def token_ratio(v: dict) -> str:
    """'×1.05' or '×1.02–1.05': an arm's training tokens over the baseline's at equal width (its pooled entry)."""
    lo, hi = (f"{x:.4g}" for x in v["token_ratio"])
    return f"×{lo}" if lo == hi else f"×{lo}–{hi}"


def glance(res: dict, cells: dict[tuple, list[dict]]) -> list[str]:
    """One row per arm: its loss change at each width and pooled over them, what it costs, what it does to the
    head's and the embedding's overlap, and its measured-point multiplier — the table to read first when a sweep
    has many arms, and the one that says whether the loss follows the overlap."""
    b = res["baseline"]
    mean = lambda a, w, k: float(np.mean([r[k] for r in cells.get((a, w), []) if isinstance(r.get(k), (int, float))]  # noqa
                                         or [math.nan]))
    widths = sorted({w for (a, w) in cells if a == b})
    arms = [a for a in res["arms"] if a != b]
    if not arms or not widths:
        return []
    ws, ends = " / ".join(str(w) for w in widths), f"m = {widths[0]} → {widths[-1]}"
    out = ["", "## Arms at a glance", "",
           f"At m = {ws}: Δ = arm − baseline fitted loss (nats/token; runs in the fit only, as in the per-width tests: the "
           f"mean paired difference over shared seeds where ≥ 2 are shared, else the difference of the cell means); the curve-free Δ over the widths with its "
           f"unadjusted 95 % interval (see Verdict); params and FLOPs/token as ratios to the baseline's; mean cos² of "
           f"the head (raw / centred) and of the input embedding as ratios to the baseline's at {ends}; "
           f"k_int(m) = the measured-point width multiplier (below)."
           + (" (tokens ×r): the arm trained on r × the baseline's tokens at those widths (a token budget that "
              "counts its own parameters), so its Δ is at equal width, not equal data."
              if any(p.get("token_ratio") for p in res.get("pooled", {}).values()) else ""), "",
           f"| arm | Δ loss | curve-free Δ | params × | FLOPs/token × | head mean cos² × ({ends}) | embedding mean "
           f"cos² × ({ends}) | k_int(m) |",
           "|---|---|---|---|---|---|---|---|"]

    def ratio(a, w, k) -> str:
        x = mean(a, w, k) / mean(b, w, k)
        return f"{x:.2f}" if math.isfinite(x) else "–"  # e.g. no overlap metric in these runs

    def per_width(a, k) -> str:  # costs vary with m when an idea adds a fixed-size piece (a 256-wide head)
        return " / ".join(ratio(a, w, k) for w in widths)

    def span(a, *keys) -> str:  # at the narrowest and the widest width
        return " → ".join("/".join(ratio(a, w, k) for k in keys) for w in (widths[0], widths[-1]))

    for a in arms:
        # Δ as everywhere else in the report: the per-width test's (paired over shared seeds, fitted runs only)
        delta = [res["tests"].get(a, {}).get(int(w), {}).get("diff", math.nan) for w in widths]
        d = " / ".join(f"{x:+.3f}" if math.isfinite(x) else "–" for x in delta)
        p = res.get("pooled", {}).get(a)
        pooled = f"{p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]" if p else "–"
        if p and p.get("token_ratio"):  # a budget rule gave it other tokens: equal width is not equal data
            pooled += f" (tokens {token_ratio(p)})"
        k = " / ".join(fmt_int(res["interpolated"][a][w]["m"]) if w in res["interpolated"].get(a, {}) else "–"
                       for w in widths)
        head = span(a, "geom_unembed_mean_cos2", "geom_unembed_mean_cos2_centred")
        out.append(f"| {a} | {d} | {pooled} | {per_width(a, 'params')} | {per_width(a, 'flops_per_token')} | {head} "
                   f"| {span(a, 'geom_embed_mean_cos2')} | {k} |")
    return out
