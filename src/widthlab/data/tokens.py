"""`tokens:<dir>`: your own pre-tokenised shards, used in place (no corpus, no tokenizer training).

The directory holds flat token files and a small `tokens.json`:

    my_tokens/
      tokens.json         {"vocab_size": 50257, "dtype": "uint16",               # required
                           "bytes_per_token": {"train": 4.2, "valid": 4.2, "test": 4.2}}   # optional: enables bpb
      train-00000.bin     raw little-endian token ids (nanoGPT's train.bin), an llm.c shard, or .npy
      train-00001.bin
      valid.bin           the files of a split are the ones whose name starts with train / valid (or val) / test,
      test.bin            taken in natural order (train-2 before train-10)
      tokenizer.json      optional: decoding and `analyze` use it when present

widthlab indexes the files (sizes, unigram counts of train, one pass in bounded memory) into
`data/cache/<key>/meta.json` and reads them where they are. The key hashes tokens.json and every file's path,
size and mtime, so a changed file is re-indexed. Bad input (no tokens.json, an empty file, a size that is not a
multiple of the dtype, a token id ≥ vocab_size) is a one-line error.

llm.c's shards (karpathy/llm.c, dev/data/data_common.py) start with a header of 256 int32: a magic number
(20240520 for GPT-2's uint16 tokens, 20240801 for Llama 3's uint32), a version and the token count. A .bin file
that starts with one is read after the header; its dtype must agree with tokens.json, and a count that
disagrees with the file's size is an error (a truncated download). llm.c's names (fineweb_train_000001.bin)
are matched by their '_train_' / '_val_' part.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np

from widthlab import WidthlabError
from widthlab.data.shards import build_lock as _lock, hash_file

_PREFIX = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}


def _natural(name: str) -> list:
    """Sort key: numbers by value, so train-2.bin comes before train-10.bin."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _split_of(name: str) -> list[str]:
    """The splits a file name names: it starts with the split's word (train-00000.bin, val.bin) or has it as a
    '_'-separated part (llm.c's fineweb_train_000001.bin, tinyshakespeare_val.bin)."""
    parts = re.split(r"[_.-]", name)
    return [s for s, words in _PREFIX.items() if name.startswith(words) or any(p in words for p in parts[1:-1])]


def _files(d: str) -> dict[str, list[str]]:
    names = sorted((f for f in os.listdir(d) if f.endswith((".bin", ".npy"))), key=_natural)
    if two := [f for f in names if len(_split_of(f)) > 1]:
        raise WidthlabError(f"tokens:{d}: the file name {two[0]} names two splits ({_split_of(two[0])}); rename it")
    out = {split: [os.path.join(d, f) for f in names if _split_of(f) == [split]] for split in _PREFIX}
    for split, fs in out.items():
        if not fs:
            raise WidthlabError(f"tokens:{d} has no {split} files; name them {split}*.bin or .npy (train, valid and "
                                "test are all needed, and widthlab never reuses one as another: llm.c writes no "
                                "test split, so give it one, e.g. a val shard of its own named test_000000.bin)")
    return out


LLMC_MAGIC = {20240520: np.dtype(np.uint16), 20240801: np.dtype(np.uint32)}
LLMC_HEADER = 256 * 4


def _llmc_offset(fn: str) -> tuple[int, np.dtype] | None:
    """(1024, dtype) for an llm.c shard (a 256-int32 header whose magic is known), else None: a headerless
    file. A header whose count disagrees with the file's size is a truncated shard: an error."""
    size = os.path.getsize(fn)
    if size < LLMC_HEADER:
        return None
    head = np.fromfile(fn, dtype="<i4", count=3)
    dt = LLMC_MAGIC.get(int(head[0]))
    if dt is None:
        return None
    if (size - LLMC_HEADER) != int(head[2]) * dt.itemsize:
        raise WidthlabError(f"{fn} has an llm.c header that counts {int(head[2]):,} tokens, but the file holds "
                            f"{(size - LLMC_HEADER) / dt.itemsize:,.1f}: it is truncated (download it again)")
    return LLMC_HEADER, dt


def _npy_offset(fn: str) -> tuple[int, np.dtype]:
    """Where a .npy file's data starts (after its header), and its dtype, from numpy's own reader."""
    try:
        arr = np.load(fn, mmap_mode="r")
    except ValueError as e:
        raise WidthlabError(f"{fn} is not a readable .npy file ({e})") from None
    if arr.ndim != 1:
        raise WidthlabError(f"{fn} holds an array of shape {arr.shape}; token files are 1-D")
    return int(arr.offset), arr.dtype


def index_tokens(d: str, cache_dir: str, verify: bool = False) -> str:
    d = os.path.abspath(d)
    fn = os.path.join(d, "tokens.json")
    if not os.path.isfile(fn):
        raise WidthlabError(f"tokens:{d} needs a tokens.json with vocab_size and dtype (see widthlab.data.tokens)")
    try:
        spec = json.load(open(fn))
        vocab, dtype = int(spec["vocab_size"]), np.dtype(spec["dtype"])
    except (ValueError, KeyError, TypeError) as e:
        raise WidthlabError(f"{fn} must give vocab_size (an int) and dtype (uint16 or uint32): {e}") from None
    if dtype not in (np.uint16, np.uint32) or vocab > np.iinfo(dtype).max + 1:
        raise WidthlabError(f"{fn}: dtype {dtype} cannot hold a vocabulary of {vocab}; use uint16 (≤ 65536) "
                            "or uint32 (≤ 2^32)")
    files = _files(d)
    stamp = ["tokens index v2 (llm.c headers)", json.dumps(spec, sort_keys=True)] + [
        f"{f}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for s in files for f in files[s]]
    key = "tokens-" + hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, key)
    if os.path.isfile(os.path.join(path, "meta.json")) and not verify:
        return path
    os.makedirs(cache_dir, exist_ok=True)
    with _lock(path):  # one indexer at a time; the others wait, then read its meta.json
        if os.path.isfile(os.path.join(path, "meta.json")) and not verify:
            return path
        try:
            _index(d, files, spec, vocab, dtype, key, path)
        except WidthlabError:  # bad input leaves nothing behind (every indexer of these files fails the same way)
            os.remove(path + ".lock")
            raise
    return path


def _index(d: str, files: dict, spec: dict, vocab: int, dtype: np.dtype, key: str, path: str) -> None:
    """Sizes, train unigram counts and checksums of every file into <path>/meta.json (bounded memory)."""
    splits, unigram = {}, np.zeros(vocab, dtype=np.int64)
    for split, fs in files.items():
        shards = []
        for f in fs:
            offset = 0
            if head := _npy_offset(f) if f.endswith(".npy") else _llmc_offset(f):  # None: a headerless .bin
                offset, fdt = head
                if fdt != dtype:
                    raise WidthlabError(f"{f} holds {fdt}, but tokens.json says {dtype}")
            size = os.path.getsize(f) - offset
            if size == 0:
                raise WidthlabError(f"token file {f} is empty; remove it or write its tokens")
            if size % dtype.itemsize:
                raise WidthlabError(f"token file {f} has {size} bytes, not a multiple of {dtype}'s "
                                    f"{dtype.itemsize}; it is truncated or of another dtype")
            arr = np.memmap(f, dtype=dtype, mode="r", offset=offset)
            top = 0
            for i in range(0, len(arr), 1 << 24):  # bounded memory: 16M tokens at a time
                chunk = arr[i:i + (1 << 24)]
                top = max(top, int(chunk.max()))
                if split == "train":
                    unigram += np.bincount(chunk, minlength=vocab)[:vocab]
            if top >= vocab:
                raise WidthlabError(f"{f} holds token id {top}, not below vocab_size={vocab} of tokens.json")
            shards.append({"file": f, "tokens": len(arr), "offset": offset, "checksum": hash_file(f)})
        n = sum(sh["tokens"] for sh in shards)
        bpt = (spec.get("bytes_per_token") or {}).get(split)
        splits[split] = {"tokens": n, "shards": shards, "bytes_per_token": bpt, "words_per_token": None,
                         "bytes": bpt * n if bpt else None, "words": None, "docs": None}
    meta = {"version": 2, "source": f"tokens:{d}", "fingerprint": key, "vocab_size": vocab, "dtype": dtype.name,
            "splits": splits, "unigram_counts": unigram.tolist(), "notes": []}
    tmp = path + f".tmp-{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    if os.path.isfile(os.path.join(d, "tokenizer.json")):
        shutil.copy(os.path.join(d, "tokenizer.json"), os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
