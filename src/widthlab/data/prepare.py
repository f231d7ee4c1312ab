"""`python -m train prepare --config recipes/X.yaml`: build the token cache a recipe needs, then exit.

A cluster sweep prepares once, on one node, before its jobs start; the jobs then find the cache and can run
offline (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1). `--config` takes a fit recipe or a sweep recipe (every distinct
data setting of its recipe, overrides and arms is prepared); `--data.<key> <value>` overrides the recipe's data
section as `fit` would; `--verify true` re-hashes every shard of an existing cache against meta.json.
"""
from __future__ import annotations

import os
import sys

import yaml

from widthlab import WidthlabError


def _data_settings(config: str) -> list[dict]:
    """The data sections a recipe (fit or sweep) trains on."""
    if not os.path.isfile(config):
        raise WidthlabError(f"recipe {config} does not exist; give a fit or sweep recipe from recipes/")
    with open(config) as f:
        cfg = yaml.safe_load(f) or {}
    if "recipe" not in cfg:  # a fit recipe
        return [dict(cfg.get("data") or {})]
    base = _data_settings(cfg["recipe"])[0]
    common = {k[5:]: v for k, v in (cfg.get("overrides") or {}).items() if k.startswith("data.")}
    out = []
    for arm in (cfg.get("arms") or {"baseline": {}}).values():
        d = {**base, **common, **{k[5:]: v for k, v in (arm or {}).items() if k.startswith("data.")}}
        if d not in out:
            out.append(d)
    return out


def _parse(argv: list[str]) -> tuple[str, dict, bool]:
    config, overrides, verify = None, {}, False
    it = iter(argv)
    for a in it:
        key, eq, val = a.partition("=")
        if not eq:
            val = next(it, None)
            if val is None and key not in ("-h", "--help"):
                raise WidthlabError(f"{key} needs a value (python -m train prepare --help)")
        if key in ("-h", "--help"):
            print(__doc__.strip())
            sys.exit(0)
        elif key == "--config":
            config = val
        elif key == "--verify":
            verify = yaml.safe_load(val) is True
        elif key.startswith("--data."):
            overrides[key[7:]] = yaml.safe_load(val)
        else:
            raise WidthlabError(f"unknown option {key}; prepare takes --config, --data.<key> <value> and "
                                "--verify true (python -m train prepare --help)")
    if config is None:
        raise WidthlabError("give the recipe: python -m train prepare --config recipes/<recipe>.yaml")
    return config, overrides, verify


def prepare(argv: list[str]) -> list[str]:
    """Build (or verify) every token cache the recipe needs; print one line per cache; return their paths."""
    import inspect

    from widthlab.data.cache import build_or_load, read_meta
    from widthlab.data.datamodule import TokenDataModule

    config, overrides, verify = _parse(argv)
    known = set(inspect.signature(TokenDataModule.__init__).parameters) - {"self"}
    paths = []
    for data in _data_settings(config):
        data = {**data, **overrides}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WidthlabError(f"unknown data setting data.{unknown[0]} in {config}; the data settings are "
                                f"{', '.join(sorted(known))}")
        hp = {**{k: p.default for k, p in inspect.signature(TokenDataModule.__init__).parameters.items()
                 if k != "self"}, **data}
        path = build_or_load(hp["source"], hp["vocab_size"], hp["tokenizer_path"], hp["text_column"],
                             hp["max_docs"], hp["cache_dir"], verify=verify,
                             max_train_tokens=hp["max_train_tokens"], doc_separator=hp["doc_separator"],
                             bpe_sample_bytes=hp["bpe_sample_bytes"], holdout_docs=hp["holdout_docs"],
                             holdout_every=hp["holdout_every"])
        meta = read_meta(path)
        sizes = ", ".join(f"{s} {meta['splits'][s]['tokens']:,}" for s in ("train", "valid", "test"))
        print(f"ready{' (verified)' if verify else ''}: {path} ({meta['source']}; tokens: {sizes}; "
              f"vocab {meta['vocab_size']})")
        paths.append(path)
    return paths
