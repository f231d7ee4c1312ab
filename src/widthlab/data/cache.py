"""Token cache: data/cache/<key>/{tokenizer.json, <split>-NNNNN.bin, meta.json}, keyed by a hash of everything that
determines the tokens (the source's cheap fingerprint, the tokenizer's settings or file hash, the token budget, the
document separator, the holdout rule, the format version). The key needs no text read, so `tokens:` sources and
jobs that only read a cache prepared elsewhere never load a corpus.

Crash-safe and shared: one process builds under an exclusive lock (`<key>.lock`, flock) while the others wait and
then read; the build runs in `.<key>.building/`, resumes from its finished shards after a crash (build.py), and is
renamed into place only when complete, so nothing half-written is ever used. Opening a built cache checks the
shards' sizes against meta.json (no re-reading); `verify=True` (`prepare --verify`) re-hashes every shard.

`tokens:<dir>`: your own pre-tokenised shards, used in place (see tokens.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from widthlab import WidthlabError
from widthlab.data.build import Limits, bar_interval, tokenize_source
from widthlab.data.shards import TokenView, build_lock as _lock, hash_file, token_dtype
from widthlab.data.sources import SPLITS, Holdout, open_source
from widthlab.data.tokenizer import bpe_sample, is_hub_name, load_tokenizer, separator_id, train_bpe

# 3: a special token's text inside a document (a literal <|endoftext|>) is tokenised as text, not as the token
FORMAT_VERSION = 3
log = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Everything that decides the tokens (data.* in a recipe; see TokenDataModule for each one's meaning)."""
    source: str = "ptb"
    vocab_size: int = 4096
    tokenizer_path: str | None = None
    text_column: str = "text"
    max_docs: int | None = None
    max_train_tokens: int | None = None
    doc_separator: str | None = None
    bpe_sample_bytes: int = 100_000_000
    holdout_docs: int = 1000
    holdout_every: int = 20


def _tokenizer_id(spec: DataSpec) -> str | dict:
    if spec.tokenizer_path is None:
        return {"bpe": "bytelevel-minfreq2", "vocab_size": spec.vocab_size, "sample_bytes": spec.bpe_sample_bytes}
    if os.path.isfile(spec.tokenizer_path):
        h = hash_file(spec.tokenizer_path)
    else:
        h = hashlib.blake2b(load_tokenizer(spec.tokenizer_path).to_str().encode(), digest_size=16).hexdigest()
    # "whole": documents encoded untruncated, unpadded, without template tokens (caches from before that differ)
    return {"file": h, "encode": "whole"}


def _settings_hash(spec: DataSpec) -> str:
    """The key's inputs less the source fingerprint: names the latest cache of these settings, for offline use."""
    d = {k: v for k, v in asdict(spec).items() if k != "vocab_size" or spec.tokenizer_path is None}
    return hashlib.sha256(json.dumps({"v": FORMAT_VERSION, **d}, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(spec: DataSpec, fingerprint: str) -> str:
    d = {"v": FORMAT_VERSION, **asdict(spec), "fingerprint": fingerprint, "tokenizer": _tokenizer_id(spec)}
    if spec.tokenizer_path is not None:
        d.pop("vocab_size"), d.pop("bpe_sample_bytes")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def read_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _complete(path: str, verify: bool = False) -> bool:
    """A finished cache: meta.json of this format and every shard at its recorded size (and checksum, if asked)."""
    try:
        meta = read_meta(path)
        if meta.get("version") != FORMAT_VERSION:
            return False
        item = np.dtype(meta["dtype"]).itemsize
        for s in SPLITS:
            for sh in meta["splits"][s]["shards"]:
                fn = os.path.join(path, sh["file"])
                if os.path.getsize(fn) != sh["tokens"] * item + sh.get("offset", 0):
                    return False
                if verify and sh.get("checksum") and hash_file(fn) != sh["checksum"]:
                    log.warning("token shard %s fails its checksum", fn)
                    return False
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False


def _fingerprint(spec: DataSpec, cache_dir: str):
    """(key, None, source) from the source's fingerprint and the tokenizer. Offline, an hf: source or a hub
    tokenizer that cannot be reached falls back to the cache last prepared with these settings (recorded by
    _remember), so jobs can run offline after `prepare` — (key, note, None)."""
    latest = os.path.join(cache_dir, "latest", _settings_hash(spec))

    def fallback(what: str):
        key = open(latest).read().strip()
        return key, f"{what} is unreachable; using the cache prepared for it earlier ({key})", None
    try:
        source = open_source(spec.source, spec.text_column, spec.holdout_docs, spec.holdout_every)
    except WidthlabError:
        if spec.source.startswith("hf:") and os.path.isfile(latest):
            return fallback(spec.source)
        raise
    try:
        return cache_key(spec, source.fingerprint), None, source
    except WidthlabError:  # a hub tokenizer's name is hashed through its JSON, which needs the hub (or its cache)
        hub = not os.path.isfile(spec.tokenizer_path or "") and is_hub_name(spec.tokenizer_path or "")
        if spec.tokenizer_path and hub and os.path.isfile(latest):
            return fallback(f"the tokenizer {spec.tokenizer_path}")
        raise


def _remember(spec: DataSpec, cache_dir: str, key: str) -> None:
    fn = os.path.join(cache_dir, "latest", _settings_hash(spec))
    if os.path.isfile(fn) and open(fn).read().strip() == key:
        return
    os.makedirs(os.path.join(cache_dir, "latest"), exist_ok=True)
    tmp = os.path.join(cache_dir, "latest", f".{key}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(key)
    os.replace(tmp, os.path.join(cache_dir, "latest", _settings_hash(spec)))


def build_or_load(source: str = "ptb", vocab_size: int = 4096, tokenizer_path: str | None = None,
                  text_column: str = "text", max_docs: int | None = None, cache_dir: str = "data/cache",
                  verify: bool = False, progress: bool = True, shard_tokens: int = 100_000_000,
                  batch_bytes: int = 1 << 21, **settings) -> str:
    """Return the directory of a complete cache for these settings (DataSpec's fields), building it if needed."""
    spec = DataSpec(source, vocab_size, tokenizer_path, text_column, max_docs, **settings)
    if spec.source.startswith("tokens:"):
        from widthlab.data.tokens import index_tokens
        return index_tokens(spec.source[7:], cache_dir, verify)
    key, note, src = _fingerprint(spec, cache_dir)
    path = os.path.join(cache_dir, key)
    if note:
        print(note, file=sys.stderr)
    if _complete(path, verify):
        if src is not None:  # also a cache built elsewhere or by an older version: offline jobs can find it
            _remember(spec, cache_dir, key)
        return path
    if src is None:
        raise WidthlabError(f"the token cache {path} prepared for {spec.source} is gone or incomplete and the "
                            "source cannot be reached; go online and run `python -m train prepare` again")
    os.makedirs(cache_dir, exist_ok=True)
    with _lock(path):
        if _complete(path, verify):  # another process built it while we waited
            return path
        if os.path.isdir(path):
            log.warning("token cache %s is corrupt or incomplete; rebuilding it", path)
            shutil.rmtree(path)
        work = os.path.join(cache_dir, f".{key}.building")
        os.makedirs(work, exist_ok=True)
        try:
            if not _complete(work):  # complete: finished, then killed before this rename
                _build(spec, src, work, Limits(max_docs, spec.max_train_tokens, spec.holdout_docs,
                                               spec.holdout_every, shard_tokens, batch_bytes), progress)
        except WidthlabError:  # bad input: nothing is left behind (a crash or kill keeps the shards to resume)
            shutil.rmtree(work, ignore_errors=True)
            # every builder of these settings fails the same way; _lock copes with a waiter's file being removed
            os.remove(path + ".lock")
            raise
        os.replace(work, path)
    _remember(spec, cache_dir, key)
    return path


def _tokenizer(spec: DataSpec, source, work: str, progress: bool):
    fn = os.path.join(work, "tokenizer.json")
    if os.path.isfile(fn):  # a resumed build keeps the tokenizer its shards were made with
        return load_tokenizer(fn)
    if spec.tokenizer_path is not None:
        tok = load_tokenizer(spec.tokenizer_path)
        tok.no_truncation()  # a tokenizer.json made for a model's inputs may cut or pad them: documents stay whole
        tok.no_padding()
    else:
        from tqdm import tqdm

        from widthlab.data.tokenizer import MIN_VOCAB
        special = [spec.doc_separator] if spec.doc_separator else []
        if spec.vocab_size < MIN_VOCAB + len(special):  # before any text is read
            train_bpe([], spec.vocab_size, special_tokens=special)
        train = next(s for s in source.streams if s.split == "train")
        with tqdm(desc="BPE sample", unit="B", unit_scale=True, file=sys.stderr, mininterval=bar_interval(),
                  disable=not progress,
                  total=min(spec.bpe_sample_bytes, train.nbytes or spec.bpe_sample_bytes), dynamic_ncols=True) as bar:
            docs = bpe_sample(_train_only(train, spec), spec.bpe_sample_bytes, on_doc=lambda d: bar.update(len(d)))
            if source.spec == "ptb":  # PTB is 5 MB: one list, exactly as earlier versions trained on it
                docs = list(docs)
            tok = train_bpe(docs, spec.vocab_size, special_tokens=special, show_progress=progress)
    separator_id(tok, spec.doc_separator)  # a separator the tokenizer lacks is an error before any tokenising
    tok.save(fn + ".tmp")
    os.replace(fn + ".tmp", fn)
    return tok


def _train_only(train, spec: DataSpec):
    """The train stream's documents less those held out for valid/test (routed as the build routes them), so
    the BPE never sees held-out text."""
    if not train.holdout:
        yield from train.open(0)
        return
    route = Holdout(train.holdout, spec.holdout_docs, spec.holdout_every)
    for i, d in enumerate(train.open(0)):
        if route.route(i)[0] == "train":
            yield d


def _build(spec: DataSpec, source, work: str, limits: Limits, progress: bool) -> None:
    t0 = time.time()
    tok = _tokenizer(spec, source, work, progress)
    t_tok = time.time()
    state = tokenize_source(source, tok, work, limits, separator_id(tok, spec.doc_separator), progress)
    splits = {}
    for s in SPLITS:
        st = state["stats"][s]
        if st["tokens"] == 0:
            raise WidthlabError(f"corpus {spec.source} has an empty {s} split; give it more text")
        splits[s] = {**st, "shards": state["shards"][s], "bytes_per_token": st["bytes"] / st["tokens"],
                     "words_per_token": st["words"] / st["tokens"]}
    meta = {"version": FORMAT_VERSION, "source": spec.source, "fingerprint": source.fingerprint,
            "spec": asdict(spec), "vocab_size": tok.get_vocab_size(), "dtype": token_dtype(tok.get_vocab_size()).name,
            "splits": splits, "unigram_counts": state["unigram"], "notes": source.notes,
            "build_seconds": round(time.time() - t0, 1), "tokenizer_seconds": round(t_tok - t0, 1)}
    with open(os.path.join(work, "meta.json"), "w") as f:
        json.dump(meta, f)
    os.remove(os.path.join(work, "state.json"))
    if progress:
        mb = sum(splits[s]["bytes"] for s in SPLITS) / 1e6
        parts = ", ".join(f"{s} {splits[s]['tokens'] / 1e6:.2f}M tokens ({len(splits[s]['shards'])} shard"
                          f"{'s' * (len(splits[s]['shards']) > 1)})" for s in SPLITS)
        dt = time.time() - t0
        print(f"token cache built: {parts}; {mb:.0f} MB of text in {dt:.0f} s ({mb / max(dt, 1e-9):.1f} MB/s)",
              file=sys.stderr)
    for n in source.notes:
        print(f"note: {n}", file=sys.stderr)


def load_split(path: str, split: str) -> TokenView:
    """A split's tokens as one read-only sequence over its shards (memory-mapped, opened lazily per process)."""
    meta = read_meta(path)
    shards = meta["splits"][split]["shards"]
    return TokenView([os.path.join(path, sh["file"]) for sh in shards], meta["dtype"],
                     [sh["tokens"] for sh in shards], [sh.get("offset", 0) for sh in shards])


def raise_if_short(tokens: int, seq_len: int, split: str) -> None:
    if tokens < seq_len + 2:
        raise WidthlabError(f"the {split} split has {tokens} tokens, fewer than seq_len+2={seq_len + 2}; "
                            "lower data.seq_len or use a larger corpus")
