"""Data for the toy model of superposition (Liu, Liu & Gore 2025, Eq. 1): x_i = Bernoulli(p_i) · U(0, 2).

Features are ordered by frequency, i = 1…n, and Σ p_i = E (the activation density; E = 1 in the paper).
Frequency laws (`frequencies`):

    power        p_i ∝ i^(−α)        α in the PAPER's convention. The paper's code writes 1/i**(1+alpha), i.e.
                                     code alpha = paper α − 1; recipes here always give the paper's α.
    exponential  p_i ∝ exp(−i/s)      s = 400 is the large model's `exponential1`
    linear       p_i ∝ (n − i)/n      i counted from 0, as in the code, so p_n > 0

Two samplers with the same law. `sample_dense` is the paper's code: two (B, n) random tensors per batch, which is
what makes it slow (37 ms/step at n = 1000, 0.9 s at n = 10240 on this CPU). `sample_sparse` draws only the
≈ B·E active entries, exactly: per feature, the number of active samples is Binomial(B, p_i), and which samples is
a uniform subset of that size (drawn with replacement, duplicates redrawn until none are left; the process is
symmetric under permuting the batch, so the subset is uniform). That is the same joint law as independent
Bernoulli(p_i) per (sample, feature), not only the same marginals.
"""
from __future__ import annotations

import math

import torch

from widthlab import WidthlabError

DISTRIBUTIONS = ("power", "exponential", "linear")


def frequencies(n: int, distribution: str, alpha: float = 1.0, density: float = 1.0,
                exp_scale: float = 400.0) -> torch.Tensor:
    """p: (n,) float64, decreasing, Σp = density."""
    i = torch.arange(1, n + 1, dtype=torch.float64)
    if distribution == "power":
        w = i ** (-alpha)
    elif distribution == "exponential":
        w = torch.exp(-i / exp_scale)
    elif distribution == "linear":
        w = (n - (i - 1)) / n
    else:
        raise WidthlabError(f"unknown distribution {distribution!r}; use one of {list(DISTRIBUTIONS)}")
    p = density * w / w.sum()
    if p.max() > 1:
        raise WidthlabError(f"density {density} makes p_1 = {p.max():.3g} > 1 for {distribution}; lower density")
    return p


def sample_dense(p: torch.Tensor, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's sampler. Returns x: (B, n) float32."""
    p = p.float()
    u = torch.rand(batch_size, p.numel(), generator=generator) < p
    return u.float() * torch.rand(batch_size, p.numel(), generator=generator) * 2


def sample_sparse(p: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Active entries of x (B, n): x[rows, feats] = vals, (rows, feats) distinct. Each of shape (T,), T ≈ B·Σp."""
    B, n = batch_size, p.numel()
    counts = torch.binomial(torch.full((n,), float(B), dtype=torch.float64), p.double(), generator=generator).long()
    feats = torch.repeat_interleave(torch.arange(n), counts)
    rows = torch.randint(B, (feats.numel(),), generator=generator)
    while feats.numel():
        key, order = (feats * B + rows).sort()
        dup = order[1:][key[1:] == key[:-1]]  # all but one of each repeated (feature, sample) pair
        if dup.numel() == 0:
            break
        rows[dup] = torch.randint(B, (dup.numel(),), generator=generator)
    vals = torch.rand(feats.numel(), generator=generator) * 2
    return rows, feats, vals


def densify(rows: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor, batch_size: int, n: int) -> torch.Tensor:
    """x: (B, n) from active entries."""
    x = torch.zeros(batch_size, n, dtype=vals.dtype, device=vals.device)
    x[rows, feats] = vals
    return x


def ideal_weak_loss(p: torch.Tensor, m: int) -> float:
    """Paper units: the loss with the top-m features perfect and the rest at the optimal bias b_i = ⟨x_i⟩ (Eq. 4)."""
    tail = p[m:].double()
    return float((4.0 / 3.0 * tail - tail ** 2).sum())  # ⟨v²⟩p − ⟨v⟩²p², ⟨v⟩ = 1, ⟨v²⟩ = 4/3


def lr_at(step: int, peak: float, steps: int, warmup: int, min_ratio: float = 0.05) -> float:
    """The paper's get_lr: linear warm-up (step counted from 1), then cosine from peak to min_ratio·peak at `steps`."""
    if step <= warmup:
        return peak * step / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
