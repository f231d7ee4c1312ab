"""Tight-frame penalty on the row-normalised head (or embedding), uniform or unigram-weighted.

Sources: frame potential / unit-norm tight frames (Benedetto & Fickus 2003; Casazza, Fickus & Mixon,
arXiv 1009.5562); soft orthogonality (Bansal et al., arXiv 1810.09102); the weighted form is "Zipfian isotropy",
motivated by Zipfian whitening (Yokoi et al., arXiv 2411.00680).

With Ŵ (n, m) the real-vocabulary rows normalised to unit length and p a distribution over those rows:

    G = Ŵᵀ diag(p) Ŵ  (m, m)          penalty = weight · ‖G − I/m‖_F²  =  weight · (Σᵢⱼ pᵢpⱼ cos²ᵢⱼ − 1/m)

(the identity holds because tr G = Σp = 1). Uniform p = 1/n gives the B1 penalty ‖ŴᵀŴ − (n/m)I‖_F² / n², i.e. the
mean of cos² over all n² ordered pairs (diagonal included) minus its floor 1/m: 0 exactly for a unit-norm tight
frame, 1 − 1/m for all rows parallel. p = unigram gives B2; its floor is > 0 when some pᵢ > 1/m (those tokens
want dedicated dimensions). Cost O(n·m²) per step; the n×n Gram is never formed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.interventions.base import Intervention


def frame_penalty(W: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """W: (n, m) rows (any norms), p: (n,) weights summing to 1 or None for uniform → scalar ‖ŴᵀPŴ − I/m‖_F²."""
    n, m = W.shape
    Wh = F.normalize(W.float(), dim=-1)
    G = Wh.T @ (Wh * p[:, None]) if p is not None else (Wh.T @ Wh) / n
    return (G - torch.eye(m, device=W.device, dtype=G.dtype) / m).square().sum()


class FramePenalty(Intervention):
    """extra_loss {"frame_penalty": weight · ‖ŴᵀPŴ − I/m‖_F²} on U ("unembed") or E ("embed").

    frequency_weighted: use P = diag(unigram p). The LightningModule calls `set_unigram(p)` (counts or probabilities
    over the vocabulary, shape (vocab_size,) or (real_vocab_size,)) before training; without it the first training
    step raises rather than silently falling back to the uniform penalty.
    """

    def __init__(self, weight: float, matrix: str = "unembed", frequency_weighted: bool = False):
        if not weight >= 0:
            raise WidthlabError(f"FramePenalty.weight must be >= 0 (got {weight})")
        if matrix not in ("embed", "unembed"):
            raise WidthlabError(f"FramePenalty.matrix must be 'embed' or 'unembed' (got {matrix!r})")
        self.weight, self.matrix, self.frequency_weighted = float(weight), matrix, frequency_weighted
        self._p: torch.Tensor | None = None

    def set_unigram(self, p: torch.Tensor) -> None:
        """p: (vocab_size,) or (real_vocab_size,) non-negative counts or probabilities; renormalised on use."""
        p = torch.as_tensor(p, dtype=torch.float32).flatten()
        if p.numel() == 0 or (p < 0).any() or not p.sum() > 0:
            raise WidthlabError("FramePenalty.set_unigram needs non-negative counts with a positive sum")
        self._p = p

    def build(self, model) -> None:
        W = self._matrix(model)
        if W is None or W.dim() != 2:
            raise WidthlabError(f"FramePenalty(matrix={self.matrix!r}): the model's head has no single (n, ·) "
                                f"matrix to penalise; use matrix: embed or another head")

    def _matrix(self, model) -> torch.Tensor | None:
        W = model.unembedding() if self.matrix == "unembed" else model.embed.weight
        return None if W is None else W[: model.cfg.real_vocab_size]  # padding rows are never predicted

    def extra_loss(self, model, logits, hidden, targets) -> dict[str, torch.Tensor]:
        W = self._matrix(model)
        p = None
        if self.frequency_weighted:
            if self._p is None:
                raise WidthlabError("FramePenalty(frequency_weighted=true) has no unigram distribution: the "
                                    "LightningModule must call set_unigram(p) before training, or set "
                                    "frequency_weighted: false")
            p = self._p[: W.shape[0]].to(W.device)
            if p.numel() != W.shape[0]:
                raise WidthlabError(f"FramePenalty: unigram has {self._p.numel()} entries but the matrix has "
                                    f"{W.shape[0]} real-vocabulary rows; pass counts for the model's vocabulary")
            p = p / p.sum()
        # float32 regardless of autocast: the penalty is a small difference of O(1) sums
        with torch.autocast(device_type=W.device.type, enabled=False):
            return {"frame_penalty": self.weight * frame_penalty(W, p)}
