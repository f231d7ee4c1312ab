"""Softmax-bottleneck remedies: heads whose log-probabilities are not confined to a rank-m space.

Sources: Mixture of Softmaxes (Yang et al., ICLR 2018, arXiv 1711.03953); sigsoftmax (Kanai et al., NeurIPS 2018,
arXiv 1805.10829); wide heads after Godey et al. (arXiv 2404.07647: heads narrower than ~1000-2000 dims saturate).
Compare them at equal FLOPs: at small m the head dominates the cost.

Every head keeps `.weight`, the (n, ·) output matrix, so the geometry monitor can read it. MoS and WideHead replace
the linear head (so they refuse a tied model and must be listed before head wrappers); Sigsoftmax wraps any head
that returns logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.interventions.base import move_params
from widthlab.interventions.base import Intervention
from widthlab.model.gpt import LinearHead


def _plain_head(model, who: str) -> LinearHead:
    """The head a replacement may take over, with the checks every replacement needs."""
    if model.cfg.tie_embeddings:
        raise WidthlabError(f"{who} replaces the head, which would break its tie to the embedding; "
                            f"set model.tie_embeddings: false")
    if type(model.head) is not LinearHead:
        raise WidthlabError(f"{who} replaces the plain linear head but found {type(model.head).__name__}; "
                            f"use one head replacement per arm and list it before LogitSoftcap/Sigsoftmax")
    return model.head


def head_flops(mod: nn.Module) -> int:
    """Forward FLOPs per token of a head, by the same rule as GPT.flops_per_token (own method, else Linear 2·in·out)."""
    if hasattr(mod, "flops_per_token"):
        return mod.flops_per_token()
    if isinstance(mod, nn.Linear):
        return 2 * mod.weight.numel()
    return sum(head_flops(c) for c in mod.children())


class MoSHead(nn.Module):
    """log p (B, T, n) = logsumexp_k [log π_k(h) + log_softmax(mult · U tanh(P_k h))].

    U: `weight` (n, m), the old head's parameter; P: (k·m, m) stacked P_k; prior: (k, m), zero-init (uniform π).
    Returns log-probabilities, so softmax of the output is the mixture itself (log_probs = True tells wrappers).
    """
    log_probs = True

    def __init__(self, weight: nn.Parameter, k: int, d_model: int, mult: float):
        super().__init__()
        self.k, self.mult, self.weight = k, mult, weight
        self.proj = nn.Linear(d_model, k * d_model, bias=False)
        self.prior = nn.Linear(d_model, k, bias=False)
        # std 1/√m keeps P_k h at the scale of h, so tanh works in its non-linear range (μP's hidden fan-in rule)
        nn.init.normal_(self.proj.weight, 0.0, 1.0 / math.sqrt(d_model))
        nn.init.zeros_(self.prior.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hk = torch.tanh(self.proj(h)).unflatten(-1, (self.k, -1))        # (B, T, k, m)
        logp = F.log_softmax(F.linear(hk, self.weight).float() * self.mult, dim=-1)  # (B, T, k, n), fp32 for lse
        log_pi = F.log_softmax(self.prior(h).float(), dim=-1)               # (B, T, k)
        return torch.logsumexp(logp + log_pi.unsqueeze(-1), dim=-2)

    def flops_per_token(self) -> int:
        return 2 * (self.proj.weight.numel() + self.prior.weight.numel() + self.k * self.weight.numel())


class MixtureOfSoftmaxes(Intervention):
    """k: number of mixture components (≥ 1; k = 1 is a softmax of U tanh(P h)). Costs ≈ k× the head's FLOPs."""

    def __init__(self, k: int):
        if not (isinstance(k, int) and k >= 1):
            raise WidthlabError(f"MixtureOfSoftmaxes.k must be an int >= 1 (got {k!r})")
        self.k = k

    def build(self, model) -> None:
        head = _plain_head(model, "MixtureOfSoftmaxes")
        model.head = self._head = MoSHead(head.weight, self.k, model.cfg.d_model, head.mult)

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        # μP: P_k (m → m) and the prior (m → k) have width fan-in, so they take the hidden LR / width_mult;
        # U stays in "head" with its readout multiplier
        return move_params(groups, [self._head.proj.weight, self._head.prior.weight], "hidden")


class WideReadout(nn.Module):
    """logits (B, T, n) = GELU(P h) U'ᵀ, P: (d_h, m), U' = `weight` (n, d_h). d_h is fixed across a sweep, so U'
    is not a width-scaled readout and gets no μP multiplier."""

    def __init__(self, vocab_size: int, d_model: int, width: int, init_std: float):
        super().__init__()
        self.up = nn.Linear(d_model, width, bias=False)
        self.weight = nn.Parameter(torch.empty(vocab_size, width))
        nn.init.normal_(self.up.weight, 0.0, 1.0 / math.sqrt(d_model))  # GELU sees O(1) inputs, as in the MLPs
        nn.init.normal_(self.weight, 0.0, init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(F.gelu(self.up(h)), self.weight)

    def flops_per_token(self) -> int:
        return 2 * (self.up.weight.numel() + self.weight.numel())


class WideHead(Intervention):
    """width: d_h ≥ 1, the head's own width (Godey et al. suggest ≥ 1000; d_h ≤ m is allowed as a bottleneck
    control). Adds n·d_h + m·d_h parameters and 2·(n + m)·d_h forward FLOPs per token, replacing 2·n·m."""

    def __init__(self, width: int):
        if not (isinstance(width, int) and width >= 1):
            raise WidthlabError(f"WideHead.width must be an int >= 1 (got {width!r})")
        self.width = width

    def build(self, model) -> None:
        _plain_head(model, "WideHead")
        model.head = self._head = WideReadout(model.cfg.vocab_size, model.cfg.d_model, self.width, model.cfg.init_std)

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        # μP: P (m → d_h) has width fan-in: hidden LR / width_mult. U' (fan-in d_h, fixed) keeps the head's LR.
        return move_params(groups, [self._head.up.weight], "hidden")


class SigsoftmaxHead(nn.Module):
    """logits' = z + log σ(z), z = inner(h): softmax(logits') = exp(z)σ(z) / Σ exp(z)σ(z). No parameters."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def weight(self) -> torch.Tensor | None:
        return getattr(self.inner, "weight", None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.inner(h).float()  # logsigmoid of large negative bf16 logits loses the tail
        return z + F.logsigmoid(z)

    def flops_per_token(self) -> int:
        return head_flops(self.inner)


class Sigsoftmax(Intervention):
    """Wraps whatever head the model has (tied or not). Its output ≠ logits of a plain softmax, so list it after
    head replacements (UnitNormRows, WideHead) and before LogitSoftcap if you combine them."""

    def build(self, model) -> None:
        if getattr(model.head, "log_probs", False):
            raise WidthlabError("Sigsoftmax needs raw logits but the head returns log-probabilities "
                                "(MixtureOfSoftmaxes); use one of the two per arm")
        model.head = SigsoftmaxHead(model.head)
