"""Token cache: data/cache/<key>/{tokenizer.json, <split>.bin, meta.json}, keyed by a hash of everything that
determines the tokens (source fingerprint, tokenizer settings or file hash, cache format version).

Built in a temporary directory and renamed into place, so a crash never leaves a half-written cache; every load
checks sizes and checksums, and a stale or corrupt cache is rebuilt, never silently reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from widthlab import WidthlabError
from widthlab.data.corpora import SPLITS, load_corpus
from widthlab.data.tokenizer import load_tokenizer, train_bpe

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


def _file_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(source: str, vocab_size: int, tokenizer_path: str | None, text_column: str,
              max_docs: int | None, fingerprint: str) -> str:
    spec = {"v": FORMAT_VERSION, "source": source, "fingerprint": fingerprint, "text_column": text_column,
            "max_docs": max_docs, "vocab_size": None if tokenizer_path else vocab_size,
            "tokenizer": _file_hash(tokenizer_path) if tokenizer_path else "bpe-bytelevel-minfreq2"}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _valid(path: str) -> bool:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        for s in SPLITS:
            fn = os.path.join(path, f"{s}.bin")
            info = meta["splits"][s]
            if os.path.getsize(fn) != info["tokens"] * np.dtype(meta["dtype"]).itemsize:
                return False
            if _file_hash(fn) != info["checksum"]:
                return False
        return os.path.isfile(os.path.join(path, "tokenizer.json"))
    except (OSError, KeyError, ValueError, TypeError):
        return False


def build_or_load(source: str = "ptb", vocab_size: int = 4096, tokenizer_path: str | None = None,
                  text_column: str = "text", max_docs: int | None = None, cache_dir: str = "data/cache") -> str:
    """Return the directory of a valid cache for these settings, building it if needed."""
    corpus = load_corpus(source, text_column, max_docs)
    key = cache_key(source, vocab_size, tokenizer_path, text_column, max_docs, corpus.fingerprint)
    path = os.path.join(cache_dir, key)
    if os.path.isdir(path):
        if _valid(path):
            return path
        log.warning("token cache %s is corrupt or incomplete; rebuilding it", path)
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir)
    try:
        _build(corpus, vocab_size, tokenizer_path, tmp)
        os.replace(tmp, path) if not os.path.exists(path) else shutil.rmtree(tmp)  # another rank may have won
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _build(corpus, vocab_size: int, tokenizer_path: str | None, out: str) -> None:
    tok = load_tokenizer(tokenizer_path) if tokenizer_path else train_bpe(corpus.docs["train"], vocab_size)
    tok.save(os.path.join(out, "tokenizer.json"))
    n_vocab = tok.get_vocab_size()
    dtype = np.uint16 if n_vocab <= 1 << 16 else np.uint32
    meta = {"version": FORMAT_VERSION, "source": corpus.source, "fingerprint": corpus.fingerprint,
            "vocab_size": n_vocab, "dtype": np.dtype(dtype).name, "splits": {}}
    for split in SPLITS:
        ids = np.concatenate([np.asarray(e.ids, dtype=dtype) for e in tok.encode_batch(corpus.docs[split])])
        fn = os.path.join(out, f"{split}.bin")
        ids.tofile(fn)
        st = corpus.stats(split)
        meta["splits"][split] = {"tokens": int(ids.size), "checksum": _file_hash(fn), **st,
                                 "bytes_per_token": st["bytes"] / max(ids.size, 1),
                                 "words_per_token": st["words"] / max(ids.size, 1)}
        if split == "train":
            meta["unigram_counts"] = np.bincount(ids, minlength=n_vocab).tolist()
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f)


def load_split(path: str, split: str) -> np.ndarray:
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    return np.memmap(os.path.join(path, f"{split}.bin"), dtype=meta["dtype"], mode="r")


def read_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def raise_if_short(tokens: int, seq_len: int, split: str) -> None:
    if tokens < seq_len + 2:
        raise WidthlabError(f"the {split} split has {tokens} tokens, fewer than seq_len+2={seq_len + 2}; "
                            "lower data.seq_len or use a larger corpus")
