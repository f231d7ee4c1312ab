"""Find and read one named tensor of a checkpoint without building the model: local directories (config.json +
*.safetensors, an *.index.json, pytorch_model.bin), single files, or Hugging Face ids (only config.json, the index
and the one shard that holds the tensor are fetched). No `transformers`, no remote code.

Which tensor, unless one is named: an explicit head (`lm_head.weight`, Pythia's `embed_out.weight`, an MLM decoder),
then the input embedding of a tied decoder (OPT, Qwen ≤3B, GPT-2), then an encoder's word embeddings (BERT, MPNet,
sentence-transformers folders), to which the MLM decoder is tied. An inventory maps every tensor name to
(file holding it, shape or None when only an index names it); safetensors headers give shapes without reading data.
"""
from __future__ import annotations

import glob
import json
import os
import re

import torch

from widthlab import WidthlabError

# Preference order: an explicit head beats a (possibly tied) input embedding.
EXPLICIT_HEADS = (
    "lm_head.weight",                                            # Llama/Qwen ≥7B, OPT-66b, most untied models
    "embed_out.weight", "gpt_neox.embed_out.weight",            # Pythia (GPT-NeoX), untied
    "head.weight", "model.head.weight",                         # widthlab's GPT (model or Lightning state)
    "cls.predictions.decoder.weight", "lm_head.decoder.weight",  # BERT / RoBERTa MLM decoders, when saved
)
TIED_EMBEDDINGS = (
    "model.decoder.embed_tokens.weight", "decoder.embed_tokens.weight",  # OPT ≤30B, tied
    "model.embed_tokens.weight",                                # Qwen2.5 ≤3B, tied
    "transformer.wte.weight", "wte.weight",                     # GPT-2, tied
    "embed.weight", "model.embed.weight",                       # widthlab's GPT, tied
)
HEAD_KEYS = EXPLICIT_HEADS + TIED_EMBEDDINGS
# BERT, MPNet, RoBERTa, with or without the model prefix (sentence-transformers folders drop it)
ENCODER_EMBED = re.compile(r"^(\w+\.)?embeddings\.word_embeddings\.weight$")
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


def pick_head_key(keys) -> str | None:
    keys = set(keys)
    return next((k for k in HEAD_KEYS if k in keys), None) or \
        min((k for k in keys if ENCODER_EMBED.match(k)), key=len, default=None)


def tensor_role(key: str, chosen: bool, cfg: dict) -> str:
    """What the analysed matrix is, in words, for the table and the JSON."""
    if chosen:
        return "chosen with --tensor"
    if key in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
        return "MLM decoder (tied to the word embeddings)"
    if key in EXPLICIT_HEADS:
        return "LM head"
    if ENCODER_EMBED.match(key):
        return "encoder word embeddings (the MLM decoder is tied to them)"
    if cfg.get("tie_word_embeddings") is False:
        return "input embedding (config says the head is untied, but no head tensor was found)"
    return "input embedding, tied to the LM head"


def candidates(inv: dict) -> str:
    """The 2-D tensors, biggest first (a vocabulary matrix tops the list), then weights of unknown shape (named
    only by an index whose shard is not here)."""
    known = sorted(((k, s) for k, (_, s) in inv.items() if s is not None and len(s) == 2),
                   key=lambda ks: (-ks[1][0] * ks[1][1], ks[0]))
    names = [f"{k} ({s[0]}×{s[1]})" for k, s in known] + \
        sorted(f"{k} (shape ?)" for k, (_, s) in inv.items() if s is None and k.endswith("weight"))
    more = f", … ({len(names) - 8} more)" if len(names) > 8 else ""
    return ", ".join(names[:8]) + more if names else "none"


def choose(inv: dict, where: str, tensor: str | None) -> str:
    if tensor is not None:
        if tensor not in inv:
            raise WidthlabError(f"no tensor '{tensor}' in {where}; its 2-D tensors: {candidates(inv)}")
        return tensor
    key = pick_head_key(inv)
    if key is None:
        raise WidthlabError(f"no LM-head or word-embedding tensor in {where}; pass --tensor NAME with one of its "
                            f"2-D tensors: {candidates(inv)}")
    return key


def _safetensors_inventory(path: str) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return {k: (path, tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # header unreadable: truncated download, not safetensors, ...
        raise WidthlabError(f"cannot read {path} as safetensors ({type(e).__name__}); re-download it") from None


def read_tensor(path: str, key: str) -> torch.Tensor:
    """One tensor from a .safetensors (reads only its bytes) or a torch pickle (weights_only, mmap'd)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(key)
        except Exception as e:
            raise WidthlabError(f"cannot read {key} from {path} ({type(e).__name__}); re-download the file") from None
    return _torch_state(path)[key]


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


def _file_inventory(path: str) -> dict:
    if path.endswith(".safetensors"):
        return _safetensors_inventory(path)
    return {k: (path, tuple(v.shape)) for k, v in _torch_state(path).items()}


def _index_inventory(index_path: str, base: str) -> dict:
    """Names from an *.index.json weight map; shapes from the headers of the safetensors shards present."""
    with open(index_path) as f:
        wmap = json.load(f).get("weight_map", {})
    inv = {k: (os.path.join(base, shard), None) for k, shard in wmap.items()}
    for shard in {v for v, _ in inv.values() if v.endswith(".safetensors") and os.path.isfile(v)}:
        inv.update({k: v for k, v in _safetensors_inventory(shard).items() if k in inv})
    return inv


def locate_local(path: str, tensor: str | None = None) -> tuple[str, str, dict, dict]:
    """A local directory or file → (file holding the tensor, its name, config.json contents or {}, inventory)."""
    base = os.path.dirname(path) if os.path.isfile(path) else path
    cfg = _json(os.path.join(base, "config.json")) if os.path.isfile(os.path.join(base, "config.json")) else {}
    if os.path.isfile(path):
        inv, where = _file_inventory(path), path
    elif idx := sorted(glob.glob(os.path.join(path, "*.safetensors.index.json"))):
        inv, where = _index_inventory(idx[0], path), idx[0]
    elif shards := sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        inv, where = {k: v for s in shards for k, v in _safetensors_inventory(s).items()}, path
    elif os.path.isfile(where := os.path.join(path, "pytorch_model.bin.index.json")):
        inv = _index_inventory(where, path)
    else:
        single = [os.path.join(path, f) for f in ("pytorch_model.bin", "model.bin", "model.pt")]
        where = next((f for f in single if os.path.isfile(f)), None)
        if where is None:
            raise WidthlabError(f"no weights in {path}: expected *.safetensors (or an *.index.json) or "
                                f"pytorch_model.bin")
        inv = _file_inventory(where)
    key = choose(inv, where, tensor)
    if not os.path.isfile(inv[key][0]):
        raise WidthlabError(f"{where} puts {key} in {os.path.basename(inv[key][0])}, which is missing; "
                            f"download that shard into {path}")
    return inv[key][0], key, cfg, inv


def locate_hub(repo: str, tensor: str | None = None) -> tuple[str, str, dict, dict]:
    """A Hugging Face model id → the same tuple, downloading config.json, the index and only the shard that
    holds the tensor (from the local cache when offline)."""
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
            inv = {k: (shard, None) for k, shard in wmap.items()}  # shapes unknown until a shard is fetched
            key = choose(inv, f"{repo}/{name}", tensor)
            shard = get(wmap[key])
            if shard is None:
                raise WidthlabError(f"{repo}/{name} names shard {wmap[key]}, which the Hub does not have")
            return shard, key, cfg, inv
        file, key, _, inv = locate_local(local, tensor)
        return file, key, cfg, inv
    raise WidthlabError(f"found no weights for '{repo}' on the Hub or in its offline cache "
                        f"({', '.join(WEIGHT_FILES)}); download the model or pass a local directory")


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WidthlabError(f"cannot read {path} as JSON ({type(e).__name__}); fix or remove it") from None


def locate(spec: str, tensor: str | None = None) -> tuple[str, str, dict, dict]:
    if os.path.exists(spec):
        return locate_local(spec, tensor)
    if spec.startswith(("/", ".", "~")) or spec.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".json")) \
            or not HF_ID.match(spec):
        raise WidthlabError(f"{spec} does not exist; pass an existing checkpoint directory, a .safetensors file "
                            f"or a Hugging Face id such as gpt2")
    return locate_hub(spec, tensor)


def model_name(spec: str) -> str:
    """A file-name-safe label: 'EleutherAI/pythia-70m' → 'EleutherAI--pythia-70m', '/x/gpt2-s' → 'gpt2-s'."""
    if os.path.exists(spec):
        p = os.path.abspath(os.path.expanduser(spec)).rstrip(os.sep)
        stem = os.path.splitext(os.path.basename(p))[0] if os.path.isfile(p) else os.path.basename(p)
        if os.path.isfile(p) and (stem in ("model", "pytorch_model", "last", "best") or stem.startswith("model-")):
            stem = os.path.basename(os.path.dirname(p))  # a generic file name: the directory says which model
        return re.sub(r"[^\w.-]+", "_", stem)
    return spec.replace("/", "--")
