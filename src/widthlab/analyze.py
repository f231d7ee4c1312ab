"""`python -m train analyze`: overlap statistics of pretrained LM heads, as in Liu, Liu & Gore §3 (Fig. 6a).

For each model it reads one tensor, the unembedding W (n tokens × m), and reports `geometry.summary(W)` in
float64: the paper's mean |cos| and mean cos² over all pairs (row blocks, O(n²m)) beside the exact Gram value
of mean cos² (O(nm²)). With --series it fits log mean_cos2 = a + b·log m across models (the paper's guide: b = −1).

Where the head lives: an explicit head wins (`lm_head.weight`, Pythia's `embed_out.weight`); otherwise the
input embedding of a tied model (OPT `model.decoder.embed_tokens.weight`, Qwen `model.embed_tokens.weight`,
GPT-2 `wte.weight`). Only that tensor is read: safetensors headers name every tensor, and for sharded
checkpoints the index says which shard to fetch. No `transformers`, no remote code.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import tempfile

import torch

from widthlab import WidthlabError, geometry

# Preference order: an explicit head beats a (possibly tied) input embedding.
HEAD_KEYS = (
    "lm_head.weight",                                            # Llama/Qwen ≥7B, OPT-66b, most untied models
    "embed_out.weight", "gpt_neox.embed_out.weight",            # Pythia (GPT-NeoX), untied
    "head.weight", "model.head.weight",                         # widthlab's GPT (model or Lightning state)
    "model.decoder.embed_tokens.weight", "decoder.embed_tokens.weight",  # OPT ≤30B, tied
    "model.embed_tokens.weight",                                # Qwen2.5 ≤3B, tied
    "transformer.wte.weight", "wte.weight",                     # GPT-2, tied
    "embed.weight", "model.embed.weight",                       # widthlab's GPT, tied
)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
PAPER_GUIDE_SLOPE = -1.0


# --- finding and reading the one tensor -------------------------------------------------------------------
def pick_head_key(keys) -> str | None:
    keys = set(keys)
    return next((k for k in HEAD_KEYS if k in keys), None)


def _no_head(where: str, keys) -> WidthlabError:
    some = ", ".join(sorted(keys)[:6])
    return WidthlabError(f"no LM-head tensor in {where} (has e.g. {some}); expected one of "
                         f"{', '.join(HEAD_KEYS[:2])}, ... — pass the model's own checkpoint directory")


def _safetensors_keys(path: str) -> list[str]:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # header unreadable: truncated download, not safetensors, ...
        raise WidthlabError(f"cannot read {path} as safetensors ({type(e).__name__}); re-download it") from None


def _read(path: str, key: str) -> torch.Tensor:
    """One tensor from a .safetensors (reads only its bytes) or a torch pickle (weights_only, mmap'd)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(key)
        except Exception as e:
            raise WidthlabError(f"cannot read {key} from {path} ({type(e).__name__}); re-download the file") from None
    sd = _torch_state(path)
    if key not in sd:
        raise _no_head(path, sd.keys())
    return sd[key]


def _torch_state(path: str) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be mmap'd
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WidthlabError(f"cannot load {path} with torch.load(weights_only=True) ({type(e).__name__}); "
                            f"convert it to .safetensors") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WidthlabError(f"{path} does not hold a state dict; pass a checkpoint of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _from_weight_map(index_path: str, base: str) -> tuple[str, str]:
    with open(index_path) as f:
        wmap = json.load(f).get("weight_map", {})
    key = pick_head_key(wmap)
    if key is None:
        raise _no_head(index_path, wmap)
    return os.path.join(base, wmap[key]), key


def locate_local(path: str) -> tuple[str, str, dict]:
    """A local directory or file → (file holding the head, tensor name, config.json contents or {})."""
    if os.path.isfile(path):
        keys = _safetensors_keys(path) if path.endswith(".safetensors") else list(_torch_state(path))
        key = pick_head_key(keys)
        if key is None:
            raise _no_head(path, keys)
        cfg_path = os.path.join(os.path.dirname(path), "config.json")
        return path, key, _json(cfg_path) if os.path.isfile(cfg_path) else {}
    cfg = _json(os.path.join(path, "config.json")) if os.path.isfile(os.path.join(path, "config.json")) else {}
    idx = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
    if idx:
        file, key = _from_weight_map(idx[0], path)
        if not os.path.isfile(file):
            raise WidthlabError(f"{idx[0]} puts {key} in {os.path.basename(file)}, which is missing; "
                                f"download that shard into {path}")
        return file, key, cfg
    shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if shards:
        where = {k: s for s in shards for k in _safetensors_keys(s)}
        key = pick_head_key(where)
        if key is None:
            raise _no_head(path, where)
        return where[key], key, cfg
    if os.path.isfile(os.path.join(path, "pytorch_model.bin.index.json")):
        file, key = _from_weight_map(os.path.join(path, "pytorch_model.bin.index.json"), path)
        return file, key, cfg
    for name in ("pytorch_model.bin", "model.bin", "model.pt"):
        if os.path.isfile(os.path.join(path, name)):
            return locate_local(os.path.join(path, name))[:2] + (cfg,)
    raise WidthlabError(f"no weights in {path}: expected *.safetensors (or an *.index.json) or pytorch_model.bin")


def locate_hub(repo: str) -> tuple[str, str, dict]:
    """A Hugging Face model id → the same triple, downloading config.json, the index and only the head's shard
    (from the local cache when offline)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    def get(filename: str) -> str | None:
        try:
            return huggingface_hub.hf_hub_download(repo, filename)
        except EntryNotFoundError:
            return None
        except RepositoryNotFoundError:
            raise WidthlabError(f"'{repo}' is neither a local path nor a model on the Hugging Face Hub; "
                                f"check the spelling or the path") from None
        except Exception as e:
            raise WidthlabError(f"could not fetch {filename} of '{repo}' from the Hugging Face Hub "
                                f"({type(e).__name__}); check the network or pass a local directory") from None

    cfg_file = get("config.json")
    cfg = _json(cfg_file) if cfg_file else {}
    for name in WEIGHT_FILES:
        local = get(name)
        if local is None:
            continue
        if name.endswith(".index.json"):
            with open(local) as f:
                wmap = json.load(f).get("weight_map", {})
            key = pick_head_key(wmap)
            if key is None:
                raise _no_head(f"{repo}/{name}", wmap)
            shard = get(wmap[key])
            if shard is None:
                raise WidthlabError(f"{repo}/{name} names shard {wmap[key]}, which the Hub does not have")
            return shard, key, cfg
        return locate_local(local)[:2] + (cfg,)
    raise WidthlabError(f"found no weights for '{repo}' on the Hub or in its offline cache "
                        f"({', '.join(WEIGHT_FILES)}); download the model or pass a local directory")


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WidthlabError(f"cannot read {path} as JSON ({type(e).__name__}); fix or remove it") from None


def locate(spec: str) -> tuple[str, str, dict]:
    if os.path.exists(spec):
        return locate_local(spec)
    if spec.startswith(("/", ".", "~")) or spec.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".json")) \
            or not HF_ID.match(spec):
        raise WidthlabError(f"{spec} does not exist; pass an existing checkpoint directory, a .safetensors file "
                            f"or a Hugging Face id such as gpt2")
    return locate_hub(spec)


def model_name(spec: str) -> str:
    """A file-name-safe label: 'EleutherAI/pythia-70m' → 'EleutherAI--pythia-70m', '/x/gpt2-s' → 'gpt2-s'."""
    if os.path.exists(spec):
        p = os.path.abspath(os.path.expanduser(spec)).rstrip(os.sep)
        stem = os.path.splitext(os.path.basename(p))[0] if os.path.isfile(p) else os.path.basename(p)
        if os.path.isfile(p) and (stem in ("model", "pytorch_model", "last", "best") or stem.startswith("model-")):
            stem = os.path.basename(os.path.dirname(p))  # a generic file name: the directory says which model
        return re.sub(r"[^\w.-]+", "_", stem)
    return spec.replace("/", "--")


# --- statistics -----------------------------------------------------------------------------------------
def analyze_one(spec: str, pairs: bool = True, block_rows: int = 8192, device: str = "cpu") -> dict:
    """One model → {"model", "name", "file", "tensor", "n", "m", "dtype", "stats": {...}, ...}."""
    file, key, cfg = locate(spec)
    W = _read(file, key)
    if W.dim() != 2:
        raise WidthlabError(f"{key} in {file} has shape {tuple(W.shape)}, not (vocab, width); "
                            f"this checkpoint's head is not a single matrix")
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
           "n": n, "m": m, "dtype": dtype, "stats": stats}
    width = next((cfg[k] for k in WIDTH_KEYS if isinstance(cfg.get(k), int)), None)
    if width is not None:
        out["hidden_size"] = width
        if width != m:  # OPT-350m: hidden 1024, projected to 512 before the tied head
            out["note"] = (f"m = {m} is the width of the head matrix itself; config hidden_size = {width} "
                           f"(a projection sits before the head, as in OPT-350m)")
    return out


def fit_series(ms: list[int], c2: list[float]) -> dict:
    """OLS of log mean_cos2 on log m with a 95 % t-interval on the slope (needs ≥ 3 models for an interval)."""
    import numpy as np
    from scipy import stats

    x, y = np.log(np.asarray(ms, float)), np.log(np.asarray(c2, float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise WidthlabError(f"--series needs models of at least 2 different widths (got m = {ms}); "
                            f"add --model+ entries of other sizes")
    r = stats.linregress(x, y)
    dof = len(x) - 2
    half = stats.t.ppf(0.975, dof) * r.stderr if dof > 0 else float("nan")
    return {"y": "log mean_cos2", "x": "log m", "n_models": len(x), "slope": float(r.slope),
            "slope_stderr": float(r.stderr) if dof > 0 else None,
            "slope_ci95": [float(r.slope - half), float(r.slope + half)] if dof > 0 else None,
            "intercept": float(r.intercept), "r2": float(r.rvalue ** 2), "guide_slope": PAPER_GUIDE_SLOPE}


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


COLUMNS = (("n", "{:>7d}"), ("m", "{:>5d}"), ("mean_cos2", "{:>10.5f}"), ("mean_abs_cos", "{:>12.5f}"),
           ("kappa", "{:>7.2f}"), ("welch_ratio", "{:>11.2f}"), ("mean_cos", "{:>9.4f}"),
           ("max_abs_cos", "{:>11.4f}"), ("erank", "{:>8.1f}"), ("stable_rank", "{:>11.2f}"),
           ("phi_half", "{:>8.3f}"), ("norm_cv", "{:>7.3f}"))


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
    lines += [f"note ({r['name']}): {r['note']}" for r in rows if "note" in r]
    return "\n".join(lines)


def analyze(*, model: list[str] | str, series: bool = False, out: str | None = None, pairs: bool = True,
            block_rows: int = 8192, device: str = "cpu") -> dict:
    """Overlap statistics of the LM head of pretrained models (Liu, Liu & Gore §3, Fig. 6a).

    One model: `--model gpt2`. Several: `--model '[gpt2, gpt2-medium]'` or `--model+ gpt2 --model+ gpt2-medium`
    (a repeated plain `--model` keeps only the last one).

    Args:
        model: Hugging Face id (e.g. gpt2, EleutherAI/pythia-160m), local checkpoint directory (config.json +
            *.safetensors, a *.safetensors.index.json or pytorch_model.bin) or a single .safetensors file.
            Several: --model+ A --model+ B, or --model '[A, B]' (a repeated plain --model keeps only the last).
        series: Fit log mean_cos2 against log m across the models (OLS slope with a 95 % CI; guide slope −1).
        out: JSON file to write ({"models": [...], "series": ...}); default runs/analyze/<name>.json for one
            model, runs/analyze/series.json (or models.json without --series) for several.
        pairs: Also run the paper's pairwise pass (mean |cos|, max |cos|, pairwise mean cos²); O(n²·m).
        block_rows: Row-block size of the pairwise pass; memory grows as block_rows².
        device: Torch device for the float64 arithmetic (cpu, cuda).

    Returns:
        {"models": [per-model dicts with "stats"], "series": fit dict or None}.
    """
    specs = [model] if isinstance(model, str) else list(model)
    if not specs:
        raise WidthlabError("no model given; pass --model gpt2 or --model '[gpt2, /path/to/ckpt]'")
    if block_rows < 1:
        raise WidthlabError(f"block_rows must be ≥ 1 (got {block_rows})")
    rows = [analyze_one(s, pairs=pairs, block_rows=block_rows, device=device) for s in specs]
    result = {"models": rows, "series": None}
    print(format_table(rows))
    if series:
        fit = fit_series([r["m"] for r in rows], [r["stats"]["mean_cos2"] for r in rows])
        result["series"] = fit
        ci = (f"[{fit['slope_ci95'][0]:.3f}, {fit['slope_ci95'][1]:.3f}] (95 % CI)" if fit["slope_ci95"]
              else "(no CI with 2 models)")
        print(f"series: log mean_cos2 = {fit['intercept']:.3f} {fit['slope']:+.3f}·log m, slope {ci}, "
              f"R² = {fit['r2']:.3f}, N = {fit['n_models']}; the paper's guide slope is {PAPER_GUIDE_SLOPE:g}")
    if out is None:
        stem = rows[0]["name"] if len(rows) == 1 else ("series" if series else "models")
        out = os.path.join("runs", "analyze", f"{stem}.json")
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return result
