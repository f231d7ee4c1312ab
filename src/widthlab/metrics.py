"""Validation metrics as a torchmetrics Metric, so sums are reduced across ranks before the ratio is taken."""
from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class TokenNLL(Metric):
    """Sums of next-token NLL (nats) overall and per target-frequency decile; `compute` returns the means."""

    full_state_update = False

    def __init__(self, n_buckets: int = 10):
        super().__init__()
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bucket_nll", torch.zeros(n_buckets, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bucket_count", torch.zeros(n_buckets, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, targets: torch.Tensor, buckets: torch.Tensor) -> None:
        """nll, targets: (N,) per-token NLL and ids, ignored positions already removed; buckets: (vocab,)."""
        nll = nll.double()
        self.nll += nll.sum()
        self.count += nll.numel()
        b = buckets[targets]
        self.bucket_nll.index_add_(0, b, nll)
        self.bucket_count.index_add_(0, b, torch.ones_like(nll))

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": self.nll / self.count.clamp(min=1),
                "bucket_loss": self.bucket_nll / self.bucket_count.clamp(min=1),
                "count": self.count}


def derived(loss: float, bytes_per_token: float | None, words_per_token: float | None) -> dict[str, float]:
    """Bits per byte and per-word perplexity from nats/token and the split's bytes/words per token (either is
    None for pre-tokenised shards that do not say how much text they came from: then it is not reported)."""
    out = {}
    if bytes_per_token:
        out["bpb"] = loss / math.log(2) / bytes_per_token
    if words_per_token:
        out["word_ppl"] = math.exp(min(loss / words_per_token, 700.0))
    return out
