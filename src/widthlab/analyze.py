"""`python -m train analyze`: overlap statistics of pretrained LM heads, as in Liu, Liu & Gore §3 (Fig. 6a).

For each model it reads one matrix W (n rows × m) and reports `geometry.summary(W)` in float64: the paper's
mean |cos| and mean cos² over all pairs (row blocks, O(n²m)) beside the exact Gram value of mean cos² (O(nm²)),
and mean_cos2_centred, the same after removing the mean row: many embedding matrices share one dominant
direction (mean cos ≈ 0.8, stable rank ≈ 1), and then raw mean cos² measures that direction, not the packing.
With --series it fits log(statistic) = a + b·log m across models for both (the paper's guide: b = −1), and says
when the models differ in vocabulary, family or matrix, which makes the slope something other than the paper's.

Which matrix (`checkpoints.py`): the LM head, or the tied input embedding, or an encoder's word embeddings (to
which its MLM decoder is tied); --tensor NAME takes any 2-D tensor instead (an input embedding, a projection;
rows are analysed as stored). Each result names the tensor it used and what it is. Only that tensor is read.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import torch

from widthlab import WidthlabError, geometry
from widthlab.checkpoints import candidates, locate, model_name, read_tensor, tensor_role

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
PAPER_GUIDE_SLOPE = -1.0
SERIES_STATS = ("mean_cos2", "mean_cos2_centred")


# --- statistics -----------------------------------------------------------------------------------------
def analyze_one(spec: str, pairs: bool = True, block_rows: int = 8192, device: str = "cpu",
                tensor: str | None = None) -> dict:
    """One model → {"model", "name", "file", "tensor", "tensor_role", "family", "n", "m", "dtype", "stats", ...}."""
    file, key, cfg, inv = locate(spec, tensor)
    W = read_tensor(file, key)
    if W.dim() != 2:
        raise WidthlabError(f"{key} in {file} has shape {tuple(W.shape)}, not a matrix (rows × width); "
                            f"pass --tensor NAME with a 2-D tensor: {candidates(inv)}")
    n, m = W.shape
    dtype = str(W.dtype).replace("torch.", "")
    W = W.to(device=device, dtype=torch.float64)
    stats = geometry.summary(W)
    if pairs:  # the paper's own method, so its numbers can be compared with ours one for one
        print(f"  {spec}: pairwise pass over {n * (n - 1) // 2:.3g} pairs ...", file=sys.stderr, flush=True)
        ps = geometry.pair_stats(W, block_rows)
        stats.update(mean_abs_cos=ps["mean_abs_cos"], max_abs_cos=ps["max_abs_cos"],
                     welch_max_bound=geometry.welch_max_bound(n, m), mean_cos2_pairs=ps["mean_cos2"])
    out = {"model": spec, "name": model_name(spec), "file": os.path.abspath(file), "tensor": key,
           "tensor_role": tensor_role(key, tensor is not None, cfg), "family": cfg.get("model_type"),
           "n": n, "m": m, "dtype": dtype, "stats": stats}
    width = next((cfg[k] for k in WIDTH_KEYS if isinstance(cfg.get(k), int)), None)
    if width is not None:
        out["hidden_size"] = width
        if width != m and tensor is None:  # OPT-350m: hidden 1024, projected to 512 before the tied head
            out["note"] = (f"m = {m} is the width of the head matrix itself; config hidden_size = {width} "
                           f"(a projection sits before the head, as in OPT-350m)")
    return out


def loglog_slope(x: list[float], y: list[float]) -> dict:
    """OLS of log y on log x; the slope's 95 % interval is stderr × t_{0.975, n−2} (none with 2 points)."""
    import numpy as np
    from scipy import stats

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    r = stats.linregress(lx, ly)
    dof = len(lx) - 2
    t = float(stats.t.ppf(0.975, dof)) if dof > 0 else None
    return {"n": len(lx), "dof": dof, "slope": float(r.slope), "intercept": float(r.intercept),
            "r2": float(r.rvalue ** 2), "slope_stderr": float(r.stderr) if t else None, "t975": t,
            "slope_ci95": [float(r.slope - t * r.stderr), float(r.slope + t * r.stderr)] if t else None}


def series_warnings(rows: list[dict]) -> list[str]:
    """Why a slope across these models is not the paper's width slope (empty when nothing is mixed)."""
    out = []
    ns = sorted({r["n"] for r in rows})
    if len(ns) > 1:
        out.append(f"vocabulary sizes differ (n = {', '.join(map(str, ns))}): mean cos² depends on n and on the "
                   f"tokenizer as well as on m, so the slope mixes them")
    fams = {r["name"]: r.get("family") for r in rows}
    if None in fams.values():
        unknown = [k for k, v in fams.items() if v is None]
        out.append(f"family unknown for {', '.join(unknown)} (no model_type in a config.json): cannot check that "
                   f"the models are one family")
    if len({f for f in fams.values() if f is not None}) > 1:
        out.append(f"families differ ({', '.join(sorted({f for f in fams.values() if f}))}): other data, "
                   f"tokenizer and training; the paper draws its 1/m guide across families but fits no line there")
    kinds = sorted({_kind(r["tensor_role"]) for r in rows})
    if len(kinds) > 1:
        out.append(f"the matrices differ in kind ({', '.join(kinds)})")
    out += [f"{k}: not what the paper measured (the head of causal LMs)" for k in kinds if k != "LM head"]
    return out


def _kind(role: str) -> str:
    """A tied decoder's input embedding is its LM head; an encoder's word embeddings are its MLM decoder."""
    if role in ("LM head", "input embedding, tied to the LM head"):
        return "LM head"
    if "MLM decoder" in role:
        return "masked-LM decoder"
    return "a tensor chosen with --tensor" if "--tensor" in role else "an untied input embedding"


def fit_series(rows: list[dict]) -> dict:
    """log(stat) against log m across models, for mean_cos2 and mean_cos2_centred, with t intervals and the
    reasons (if any) why the fit is not the paper's."""
    ms = [r["m"] for r in rows]
    if len(rows) < 2 or len(set(ms)) < 2:
        raise WidthlabError(f"--series needs models of at least 2 different widths (got m = {ms}); "
                            f"add --model+ entries of other sizes")
    warnings, fits = series_warnings(rows), {}
    for stat in SERIES_STATS:
        ys = [r["stats"][stat] for r in rows]
        if all(math.isfinite(y) and y > 0 for y in ys):
            fits[stat] = loglog_slope(ms, ys)
        else:
            fits[stat] = None
            warnings.append(f"{stat} is not positive for every model ({ys}); no log-log fit of it")
    return {"x": "log m", "n_models": len(rows), "m": ms, "n": [r["n"] for r in rows],
            "families": [r.get("family") for r in rows], "fits": fits, "guide_slope": PAPER_GUIDE_SLOPE,
            "comparable": not warnings, "warnings": warnings}


def format_series(fit: dict) -> str:
    lines = [f"series over N = {fit['n_models']} models (95 % t intervals, N − 2 = {fit['n_models'] - 2} dof; "
             f"the paper's guide slope is {PAPER_GUIDE_SLOPE:g}):"]
    for stat, f in fit["fits"].items():
        if f is None:
            continue
        ci = (f"[{f['slope_ci95'][0]:.3f}, {f['slope_ci95'][1]:.3f}] (SE {f['slope_stderr']:.3f} × t "
              f"{f['t975']:.2f})" if f["slope_ci95"] else "(no interval from 2 models)")
        lines.append(f"  log {stat:<17} = {f['intercept']:.3f} {f['slope']:+.3f}·log m, slope {ci}, "
                     f"R² = {f['r2']:.3f}")
    lines += [f"  not the paper's fit: {w}" for w in fit["warnings"]]
    return "\n".join(lines)


# --- I/O --------------------------------------------------------------------------------------------------
def _finite(obj):
    """NaN/inf → None, so the file is strict JSON (welch_ratio is NaN when n ≤ m)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str, obj) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


COLUMNS = (("n", "{:>7d}"), ("m", "{:>5d}"), ("mean_cos2", "{:>10.5f}"), ("mean_cos2_centred", "{:>17.5f}"),
           ("mean_abs_cos", "{:>12.5f}"), ("kappa", "{:>7.2f}"), ("welch_ratio", "{:>11.2f}"),
           ("mean_cos", "{:>9.4f}"), ("max_abs_cos", "{:>11.4f}"), ("erank", "{:>8.1f}"),
           ("stable_rank", "{:>11.2f}"), ("phi_half", "{:>8.3f}"), ("phi_half_rel", "{:>12.3f}"),
           ("norm_cv", "{:>7.3f}"))


def format_table(rows: list[dict]) -> str:
    """One line per model; '-' where a statistic was not computed (e.g. pairs off)."""
    cols = [(c, f) for c, f in COLUMNS if any(c in r or c in r["stats"] for r in rows)]
    widths = [len(f.format(0)) for _, f in cols]
    w = max(len("model"), *(len(r["name"]) for r in rows))
    lines = ["model".ljust(w) + " " + " ".join(c.rjust(k) for (c, _), k in zip(cols, widths))]
    for r in rows:
        vals = []
        for (c, f), k in zip(cols, widths):
            v = r.get(c, r["stats"].get(c))
            vals.append(f.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "-".rjust(k))
        lines.append(r["name"].ljust(w) + " " + " ".join(vals))
    lines += [f"tensor ({r['name']}): {r['tensor']}, {r['tensor_role']}" for r in rows]
    lines += [f"note ({r['name']}): {r['note']}" for r in rows if "note" in r]
    return "\n".join(lines)


def analyze(*, model: list[str] | str, series: bool = False, out: str | None = None, pairs: bool = True,
            block_rows: int = 8192, device: str = "cpu", tensor: str | None = None) -> dict:
    """Overlap statistics of the LM head (or any 2-D tensor) of pretrained models (Liu, Liu & Gore §3, Fig. 6a).

    One model: `--model gpt2`. Several: `--model '[gpt2, gpt2-medium]'` or `--model+ gpt2 --model+ gpt2-medium`
    (a repeated plain `--model` keeps only the last one).

    Args:
        model: Hugging Face id (e.g. gpt2, EleutherAI/pythia-160m), local checkpoint directory (config.json +
            *.safetensors, a *.safetensors.index.json or pytorch_model.bin; decoders with a head or tied
            embeddings, BERT/MPNet/sentence-transformers encoders) or a single .safetensors file.
            Several: --model+ A --model+ B, or --model '[A, B]' (a repeated plain --model keeps only the last).
        series: Fit log mean_cos2 and log mean_cos2_centred against log m across the models (OLS slopes with
            95 % t intervals; guide slope −1), and say when vocabulary, family or matrix differ.
        out: JSON file to write ({"models": [...], "series": ...}); default runs/analyze/<name>.json for one
            model, runs/analyze/series.json (or models.json without --series) for several.
        pairs: Also run the paper's pairwise pass (mean |cos|, max |cos|, pairwise mean cos²); O(n²·m).
        block_rows: Row-block size of the pairwise pass; memory grows as block_rows².
        device: Torch device for the float64 arithmetic (cpu, cuda).
        tensor: Analyse this 2-D tensor instead of the head (e.g. gpt_neox.embed_in.weight), in every model
            given; its rows are analysed as stored. An unknown name lists the checkpoint's 2-D tensors.

    Returns:
        {"models": [per-model dicts with "stats"], "series": fit dict or None}.
    """
    specs = [model] if isinstance(model, str) else list(model)
    if not specs:
        raise WidthlabError("no model given; pass --model gpt2 or --model '[gpt2, ./my_checkpoint_dir]'")
    if block_rows < 1:
        raise WidthlabError(f"block_rows must be ≥ 1 (got {block_rows})")
    rows = [analyze_one(s, pairs=pairs, block_rows=block_rows, device=device, tensor=tensor) for s in specs]
    result = {"models": rows, "series": fit_series(rows) if series else None}
    print(format_table(rows))
    if series:
        print(format_series(result["series"]))
    if out is None:
        stem = rows[0]["name"] if len(rows) == 1 else ("series" if series else "models")
        out = os.path.join("runs", "analyze", f"{stem}.json")
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return result
