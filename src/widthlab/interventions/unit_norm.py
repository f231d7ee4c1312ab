"""Unit-norm rows with a learned logit scale: the cosine head of nGPT, applied to E and/or U.

Sources: nGPT (Loshchilov et al., arXiv 2410.01131; NVIDIA/ngpt `model.py`: rows renormalised after every optimizer
step, a learned logit scale `sz`); the Ψ-paradox workshop paper (UnitNorm projection of embedding rows matches most
of the gain of ETF regularisers). It is the γ → −∞ limit of Liu et al.'s signed decay.

    logits = s · ĥ · ŵᵢ      ĥ = h/‖h‖, ŵᵢ = wᵢ/‖wᵢ‖, s a learned scalar (init √m unless `init_scale` is given)

Choice: h is normalised too, so a logit is exactly s·cos(h, wᵢ) ∈ [−s, s] as in nGPT, and the softmax temperature is
the one learned number s (not the hidden norm, which a LayerNorm gain could otherwise grow). Init s = √m puts the
initial logits at the O(1) scale of a random cosine (cos ~ 1/√m) times √m. The μP readout multiplier is dropped:
a cosine is already width-free, and s is learned. Rows are projected to unit norm at build and after every step.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.interventions.base import Intervention
from widthlab.model.gpt import LinearHead

_MATRICES = ("embed", "unembed")


class CosineHead(nn.Module):
    """logits (B, T, n) = s · normalize(h) · normalize(W)ᵀ. `weight` is U (n, m), shared with the old head (same
    Parameter, so a tied head stays tied and the optimizer group "head" still holds it)."""

    def __init__(self, weight: nn.Parameter, init_scale: float, learn_scale: bool):
        super().__init__()
        self.weight = weight
        scale = torch.tensor(float(init_scale))
        if learn_scale:
            self.scale = nn.Parameter(scale)  # 0-D: the module files it with the vectors (no weight decay)
        else:
            self.register_buffer("scale", scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Normalising W in the forward too keeps the logit a true cosine between projections (Adam moves rows
        # off the sphere within a step); after_step puts them back so the stored U is what geometry reads.
        return self.scale * F.linear(F.normalize(h, dim=-1), F.normalize(self.weight, dim=-1))

    def flops_per_token(self) -> int:
        return 2 * self.weight.numel()


class UnitNormRows(Intervention):
    """Keep the rows of E and/or U on the unit sphere; the head becomes a CosineHead with a learned scale.

    matrices: any of "embed", "unembed". learn_scale: s is a parameter (else a fixed buffer).
    init_scale: initial s; None → √d_model. Only the cosine head uses s; "embed" alone is a pure projection.
    """

    def __init__(self, matrices: list[str] = ["embed", "unembed"], learn_scale: bool = True,
                 init_scale: float | None = None):
        self.matrices = list(matrices)
        bad = [x for x in self.matrices if x not in _MATRICES]
        if not self.matrices or bad:
            raise WidthlabError(f"UnitNormRows.matrices must be a non-empty subset of {list(_MATRICES)} "
                                f"(got {self.matrices})")
        if init_scale is not None and not init_scale > 0:
            raise WidthlabError(f"UnitNormRows.init_scale must be > 0 or null for √d_model (got {init_scale})")
        self.learn_scale, self.init_scale = learn_scale, init_scale

    def build(self, model) -> None:
        if "unembed" in self.matrices:
            if type(model.head) is not LinearHead:
                raise WidthlabError(f"UnitNormRows('unembed') replaces the plain linear head but found "
                                    f"{type(model.head).__name__}; list UnitNormRows before head wrappers "
                                    f"(LogitSoftcap, Sigsoftmax) and drop other head replacements")
            s = self.init_scale if self.init_scale is not None else math.sqrt(model.cfg.d_model)
            model.head = CosineHead(model.head.weight, s, self.learn_scale)
        for w in self._weights(model):
            if not isinstance(w, nn.Parameter):
                raise WidthlabError("UnitNormRows needs a stored matrix to project, but the embedding's weight is "
                                    "computed (e.g. FactorizedEmbedding/AdaptiveInput); drop 'embed' from matrices")
        self.after_step(model)

    def _weights(self, model) -> list[torch.Tensor]:
        ws = []
        if "embed" in self.matrices:
            ws.append(model.embed.weight)
        if "unembed" in self.matrices:
            ws.append(model.head.weight)
        return list({id(w): w for w in ws}.values())  # a tied model lists E = U once

    @torch.no_grad()
    def after_step(self, model) -> None:
        for w in self._weights(model):
            w.copy_(F.normalize(w.float(), dim=-1).to(w.dtype))
