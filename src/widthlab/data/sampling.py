"""Deterministic sampling: which training windows a step sees is a pure function of (seed, micro-step, rank).

Sample id = (micro_step · world_size + rank) · batch_size + j, and its window start is a splitmix64 hash of
(seed, id) modulo the number of windows. No RNG state exists, so a resumed run sees exactly the batches the
uninterrupted run would have, and ranks never draw the same sample id.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 (wraps mod 2^64 by design)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_starts(seed: int, sample_ids: np.ndarray, n_windows: int) -> np.ndarray:
    h = splitmix64(sample_ids.astype(np.uint64) ^ splitmix64(np.array([seed], dtype=np.uint64)))
    return (h % np.uint64(n_windows)).astype(np.int64)


class TrainWindows(torch.utils.data.Dataset):
    """`ds[micro_step]` → (x, y) int64 tensors (batch_size, seq_len) for this rank."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.tokens, self.T, self.B, self.seed = tokens, seq_len, batch_size, seed
        self.rank, self.world = rank, world_size
        self.n_windows = len(tokens) - seq_len - 1
        self._offsets = np.arange(seq_len + 1)

    def sample_ids(self, micro_step: int) -> np.ndarray:
        return (micro_step * self.world + self.rank) * self.B + np.arange(self.B, dtype=np.int64)

    def __getitem__(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = window_starts(self.seed, self.sample_ids(micro_step), self.n_windows)
        if hasattr(self.tokens, "windows"):  # a TokenView over shards: windows may cross a shard boundary
            w = torch.from_numpy(self.tokens.windows(starts, self.T + 1).astype(np.int64))
        else:
            w = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        return w[:, :-1], w[:, 1:]


class StepSampler(torch.utils.data.Sampler):
    """Yields micro-step numbers from `start_fn()` (read at iteration time, i.e. after a checkpoint restore)."""

    def __init__(self, total: int, start_fn: Callable[[], int]):
        self.total, self.start_fn = total, start_fn

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start_fn(), self.total))

    def __len__(self) -> int:
        return self.total


class EvalWindows(torch.utils.data.Dataset):
    """Contiguous windows with stride seq_len: every token but the first is predicted exactly once.
    The last window is padded with target -100 (ignored). Windows are dealt round-robin to ranks."""

    def __init__(self, tokens: np.ndarray, seq_len: int, max_tokens: int | None = None,
                 rank: int = 0, world_size: int = 1):
        n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
        self.tokens, self.T, self.n = tokens, seq_len, n
        total = (n - 2) // seq_len + 1
        self.index = list(range(rank, total, world_size))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.index[i] * self.T
        chunk = torch.from_numpy(self.tokens[s:min(s + self.T + 1, self.n)].astype(np.int64))
        x = torch.zeros(self.T, dtype=torch.long)
        y = torch.full((self.T,), -100, dtype=torch.long)
        x[:len(chunk) - 1], y[:len(chunk) - 1] = chunk[:-1], chunk[1:]
        return x, y
