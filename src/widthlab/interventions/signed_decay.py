"""Signed row-wise weight decay: the superposition knob γ of Liu, Liu & Gore (2025), Eq. 2.

"Superposition Yields Robust Neural Scaling", arXiv 2505.10465 (code: liuyz0/SuperpositionScaling, exp/adamw.py).
Each row W_i of an (n, m) matrix is one feature's (token's) representation. With step size η:

    γ ≥ 0:  W_i ← (1 − ηγ) W_i                          ordinary decoupled decay: unused rows die, weak superposition
    γ < 0:  W_i ← (1 − η|γ| (1 − r₀/‖W_i‖)) W_i          a gradient step on (|γ|/2)(‖W_i‖ − r₀)²: every row is pulled
                                                          toward norm r₀ (= 1 in the paper), strong superposition

Check value (docs/paper.md, the toy model's decay): at γ = −1 a row of norm r is scaled by 1 − η(1 − 1/r). The toy model calls
`signed_row_decay_` directly; `SignedRowDecay` packages it as an `Intervention` for the GPT's embedding / head.
"""
from __future__ import annotations

import torch

from widthlab import WidthlabError
from widthlab.interventions.base import Intervention

EPS = 1e-8  # added to row norms, as in the paper's adamw.py, so an all-zero row is scaled by a finite factor


@torch.no_grad()
def signed_row_decay_(weight: torch.Tensor, lr: float, gamma: float, target_norm: float = 1.0) -> None:
    """Apply Eq. 2 in place to `weight` (n, m), row-wise. `lr` is the current step size η_t."""
    if gamma >= 0:
        weight.mul_(1.0 - lr * gamma)
    else:
        norms = weight.norm(dim=1, keepdim=True) + EPS  # (n, 1)
        weight.mul_(1.0 - lr * (-gamma) * (1.0 - target_norm / norms))


class SignedRowDecay(Intervention):
    """Eq. 2 on the GPT's embedding and/or head rows after each optimizer step.

    Args:
        gamma: γ of Eq. 2; > 0 shrinks rows (weak superposition), < 0 pulls row norms to `target_norm` (strong).
        target_norm: the row norm r₀ that γ < 0 pulls toward (1 in the paper).
        matrices: which matrices, any of "embed" (model.embed.weight) and "unembed" (model.unembedding()).
            A tied head is decayed once.
        lr: the step size η. None: use the current learning rate of the optimizer group that holds the matrix,
            captured in `param_groups` (the scheduler updates that dict in place, so `after_step` sees η_t).

    The paper applies the decay inside AdamW's step, before the Adam update, and it replaces AdamW's own decay:
    `param_groups` gives these matrices weight_decay = 0. Applying it after the step instead shifts it by one step,
    which is negligible at the paper's step counts.
    """

    KNOWN = ("embed", "unembed")

    def __init__(self, gamma: float, target_norm: float = 1.0, matrices: list[str] = ["embed", "unembed"],
                 lr: float | None = None):
        self.gamma, self.target_norm, self.matrices, self.lr = gamma, target_norm, list(matrices), lr
        self._groups: list[dict] = []

    def _weights(self, model) -> list[torch.Tensor]:
        ws: list[torch.Tensor] = []
        for name in self.matrices:
            w = model.embed.weight if name == "embed" else model.unembedding()
            if not any(w is v for v in ws):  # tied: embed.weight is the head matrix; decay it once
                ws.append(w)
        return ws

    def build(self, model) -> None:
        unknown = [k for k in self.matrices if k not in self.KNOWN]
        if unknown or not self.matrices:
            raise WidthlabError(f"SignedRowDecay: unknown matrices {unknown or '[]'}; use a subset of {list(self.KNOWN)}")
        if "unembed" in self.matrices and model.unembedding() is None:
            raise WidthlabError("SignedRowDecay: this head has no single unembedding matrix; "
                                "drop 'unembed' from matrices or use a linear head")

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        # The decay replaces AdamW's own (as in the paper's optimizer): the matrices move to a group of their own,
        # same LR as where they were, weight_decay 0. torch keeps these dicts as optimizer.param_groups, so the
        # scheduler's LR updates are visible to after_step through self._groups.
        ws = self._weights(model)
        ids = {id(w) for w in ws}
        src = next((g for g in groups if any(id(p) in ids for p in g["params"])), None)
        if src is None:
            return groups
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        mine = {**{k: v for k, v in src.items() if k != "params"}, "name": "signed_decay", "params": ws,
                "weight_decay": 0.0}
        self._groups = [mine]
        return groups + [mine]

    def current_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if not self._groups:
            raise WidthlabError("SignedRowDecay: lr is None and no optimizer group was seen; set init_args.lr")
        return float(self._groups[0]["lr"])

    def after_step(self, model) -> None:
        lr = self.current_lr()
        for w in self._weights(model):
            signed_row_decay_(w, lr, self.gamma, self.target_norm)
