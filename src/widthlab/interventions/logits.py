"""Logit-scale control: z-loss (PaLM) and tanh soft-capping (Gemma 2).

Sources: z-loss, Chowdhery et al. (PaLM, arXiv 2204.02311) coef 1e-4, and Wortsman et al. (arXiv 2309.14322) as a
small-scale stability fix; soft-capping, Gemma 2 (arXiv 2408.00118) cap 30 on final logits, modded-nanogpt
record #18 (cap 30 → 15). Cheap flags that should be pinned in a baseline before
comparing packing ideas, and log Z is itself a logged metric.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from widthlab import WidthlabError
from widthlab.interventions.base import Intervention
from widthlab.interventions.heads import head_flops


class ZLoss(Intervention):
    """extra_loss {"z_loss": coef · mean over tokens of (log Z)²}, log Z = logsumexp of the logits. Pushes log Z → 0
    so logits stay a calibrated, shift-free scale. (For MixtureOfSoftmaxes the head returns log-probs, log Z ≡ 0.)"""

    def __init__(self, coef: float = 1e-4):
        if not coef >= 0:
            raise WidthlabError(f"ZLoss.coef must be >= 0 (got {coef}); PaLM used 1e-4")
        self.coef = float(coef)

    def extra_loss(self, model, logits, hidden, targets) -> dict[str, torch.Tensor]:
        log_z = torch.logsumexp(logits.float(), dim=-1)  # (B, T), fp32: squares of bf16 lse lose the small coef
        return {"z_loss": self.coef * log_z.square().mean()}


class SoftcapHead(nn.Module):
    """logits' (B, T, n) = cap · tanh(inner(h) / cap): |logits'| < cap, ≈ identity for |z| ≪ cap."""

    def __init__(self, inner: nn.Module, cap: float):
        super().__init__()
        self.inner, self.cap = inner, cap  # cap a plain float: compile-safe

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self.inner, "weight", None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(self.inner(h) / self.cap)

    def flops_per_token(self) -> int:
        return head_flops(self.inner)


class LogitSoftcap(Intervention):
    """cap > 0 (Gemma 2: 30). Wraps any head that returns logits, tied or not; list it last among head changes."""

    def __init__(self, cap: float = 30.0):
        if not cap > 0:
            raise WidthlabError(f"LogitSoftcap.cap must be > 0 (got {cap}); Gemma 2 used 30")
        self.cap = float(cap)

    def build(self, model) -> None:
        if getattr(model.head, "log_probs", False):
            raise WidthlabError("LogitSoftcap caps logits but the head returns log-probabilities "
                                "(MixtureOfSoftmaxes); drop one of the two from the arm")
        model.head = SoftcapHead(model.head, self.cap)
