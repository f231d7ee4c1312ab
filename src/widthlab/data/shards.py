"""Token shards on disk: flat little-endian uint16/uint32 files, written by appending, read as one memory map view.

A split is a list of shards (`train-00000.bin`, …), each a raw array of token ids with no header: its size and
checksum live in meta.json, so numpy, nanoGPT-style loaders and `np.memmap` read them as they are. A shard is
written to `<name>.tmp`, hashed as it is written, and renamed when closed, so a file with a final name is
always complete.

`TokenView` puts a split's shards end to end. It opens the memory maps lazily and drops them when pickled, so a
DataLoader worker reopens the files instead of receiving a copy of the tokens.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from contextlib import contextmanager

import numpy as np

from widthlab import WidthlabError


def hash_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size > 1 << 32:
        raise WidthlabError(f"a vocabulary of {vocab_size} tokens does not fit uint32 token files; "
                            "use a tokenizer with at most 2^32 tokens")
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class ShardWriter:
    """Appends token arrays to `<dir>/<split>-NNNNN.bin`; the caller decides when a shard is full and closes it
    (at a document boundary, so a shard never ends inside a document and a resumed build can skip whole ones)."""

    def __init__(self, out: str, split: str, dtype: np.dtype, first_index: int = 0):
        self.out, self.split, self.dtype = out, split, np.dtype(dtype)
        self.index, self.closed = first_index, []   # closed: [{"file", "tokens", "checksum"}]
        self._f = self._hash = None
        self.size = 0   # tokens in the open shard

    def _name(self) -> str:
        return f"{self.split}-{self.index:05d}.bin"

    def write(self, ids: np.ndarray) -> None:
        if self._f is None:
            self._f = open(os.path.join(self.out, self._name() + ".tmp"), "wb")
            self._hash, self.size = hashlib.blake2b(digest_size=16), 0
        b = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._f.write(b)
        self._hash.update(b)
        self.size += len(b) // self.dtype.itemsize

    def close(self) -> None:
        """Finish the open shard (if any): flush, fsync, rename into place."""
        if self._f is None:
            return
        if self.size == 0:  # nothing was written: no empty shard
            self._f.close()
            os.remove(os.path.join(self.out, self._name() + ".tmp"))
            self._f = None
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(os.path.join(self.out, self._name() + ".tmp"), os.path.join(self.out, self._name()))
        self.closed.append({"file": self._name(), "tokens": self.size, "checksum": self._hash.hexdigest()})
        self.index += 1
        self._f, self.size = None, 0


def _open(path: str, dtype: np.dtype, offset: int = 0) -> np.ndarray:
    size = os.path.getsize(path) - offset
    if size % dtype.itemsize:
        raise WidthlabError(f"token file {path} has {size} bytes, not a multiple of its dtype's {dtype.itemsize}; "
                            "it is truncated or not a token file")
    if size == 0:
        raise WidthlabError(f"token file {path} is empty; remove it or rebuild the cache")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset)


class TokenView:
    """A split's shards as one read-only 1-D sequence: len(), integer/slice indexing and `windows(starts, n)`."""

    def __init__(self, files: list[str], dtype, sizes: list[int] | None = None, offsets: list[int] | None = None):
        if not files:
            raise WidthlabError("a token split needs at least one shard file")
        self.files, self.dtype = list(files), np.dtype(dtype)
        self.offsets = list(offsets or [0] * len(self.files))   # .npy files: the header's length
        if sizes is None:
            sizes = [len(_open(f, self.dtype, o)) for f, o in zip(self.files, self.offsets)]
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(self.sizes)])
        self._maps: list[np.ndarray] | None = None

    # memmaps are reopened in each process, never pickled with the object
    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    @property
    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [_open(f, self.dtype, o) for f, o in zip(self.files, self.offsets)]
        return self._maps

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("TokenView slices must be contiguous")
            return self._range(start, stop)
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"token index {int(key)} out of range for {len(self)} tokens")
            s = int(np.searchsorted(self.bounds, k, side="right")) - 1
            return self.maps[s][k - self.bounds[s]]
        raise TypeError(f"TokenView indices are ints or slices, not {type(key).__name__}")

    def _range(self, start: int, stop: int) -> np.ndarray:
        if len(self.files) == 1:
            return self.maps[0][start:stop]
        stop = min(stop, len(self))
        out, s = [], int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < stop:  # a window crossing a shard boundary is stitched from the two shards
            lo, hi = start - self.bounds[s], min(stop, self.bounds[s + 1]) - self.bounds[s]
            out.append(self.maps[s][lo:hi])
            start, s = self.bounds[s] + hi, s + 1
        return np.concatenate(out) if len(out) > 1 else out[0] if out else self.maps[0][:0]

    def windows(self, starts: np.ndarray, n: int) -> np.ndarray:
        """(len(starts), n) array of the tokens [start, start + n) for each start."""
        if len(starts) and (starts.min() < 0 or starts.max() + n > len(self)):
            raise IndexError(f"windows of {n} tokens from {starts.min()}..{starts.max()} out of range for "
                             f"{len(self)} tokens")
        if len(self.files) == 1:
            return self.maps[0][starts[:, None] + np.arange(n)]
        return np.stack([self._range(int(s), int(s) + n) for s in starts])

    def to_array(self) -> np.ndarray:
        return self._range(0, len(self))

    def __array__(self, dtype=None, copy=None):
        a = self.to_array()
        return a.astype(dtype) if dtype is not None else a


@contextmanager
def build_lock(path: str):
    """Exclusive flock on <path>.lock: concurrent sweep points, DDP ranks and SLURM jobs wait for one builder.
    A builder that fails on bad input removes the lock file while others may wait on it; a lock on a removed
    file excludes no one, so a waiter that wakes to find it gone (or replaced) locks the file now at the path."""
    waited = False
    while True:
        f = open(path + ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                print(f"waiting for another process that is building the token cache {path} ...",
                      file=sys.stderr, flush=True)
                waited = True
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path + ".lock")):
                break
        except FileNotFoundError:
            pass
        f.close()  # closing drops the lock on the removed file
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
