"""Cheaper input embeddings: a low-rank factorisation (ALBERT) and frequency-banded adaptive input.

Sources: ALBERT (Lan et al., arXiv 1909.11942): E = A·B with A ∈ R^{n×r}, B ∈ R^{r×m}, r ≪ m. Adaptive input
representations (Baevski & Auli, arXiv 1809.10853): tokens sorted by frequency are cut into bands; band b has
width m/div^b and a projection up to m, so rare tokens cost few parameters. Both
give frequent tokens more of the input capacity than rare ones.

Bookkeeping: every table, including the "atoms" B (r rows in R^m) and the band projections, is an nn.Embedding,
so parameter counts treat the whole input map as embedding parameters (it is still a per-token lookup) and the
LightningModule files them in the "embed" optimizer group, except AdaptiveInput's projections, which μP treats as
hidden matrices. The matmuls are reported by the module's `flops_per_token()`. Both replace E, so both refuse a
tied model.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from widthlab import WidthlabError
from widthlab.interventions.base import move_params
from widthlab.interventions.base import Intervention


class Atoms(nn.Embedding):
    """(r, m): r vectors in R^m that a low-dimensional code is multiplied into (code (…, r) @ atoms.weight)."""


def _refuse_tied(model, who: str) -> None:
    if model.cfg.tie_embeddings:
        raise WidthlabError(f"{who} replaces the input embedding, which would silently untie the head; "
                            f"set model.tie_embeddings: false")


class FactorizedTokenEmbedding(nn.Module):
    """forward(idx (B, T)) → (B, T, m) = A[idx] @ B. `weight` is the product A·B (n, m), for geometry."""

    def __init__(self, vocab_size: int, rank: int, d_model: int, init_std: float):
        super().__init__()
        self.A, self.B = nn.Embedding(vocab_size, rank), Atoms(rank, d_model)
        # balanced init: both factors get the same std so Adam moves them at comparable relative rates,
        # and the product's entries have the baseline's std (σ_A σ_B √r = init_std)
        s = math.sqrt(init_std / math.sqrt(rank))
        nn.init.normal_(self.A.weight, 0.0, s)
        nn.init.normal_(self.B.weight, 0.0, s)

    @property
    def weight(self) -> torch.Tensor:
        return self.A.weight @ self.B.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.A(idx) @ self.B.weight

    def flops_per_token(self) -> int:
        return 2 * self.B.weight.numel()


class FactorizedEmbedding(Intervention):
    """rank: r, with 1 ≤ r < d_model (checked at build). Embedding params become n·r + r·m instead of n·m."""

    def __init__(self, rank: int):
        if not (isinstance(rank, int) and rank >= 1):
            raise WidthlabError(f"FactorizedEmbedding.rank must be an int >= 1 (got {rank!r})")
        self.rank = rank

    def build(self, model) -> None:
        _refuse_tied(model, "FactorizedEmbedding")
        if self.rank >= model.cfg.d_model:
            raise WidthlabError(f"FactorizedEmbedding.rank={self.rank} must be < d_model={model.cfg.d_model} "
                                f"(otherwise it costs more than the full table); lower the rank")
        model.embed = FactorizedTokenEmbedding(model.cfg.vocab_size, self.rank, model.cfg.d_model, model.cfg.init_std)


class AdaptiveTokenEmbedding(nn.Module):
    """Frequency bands [0, c₁), [c₁, c₂), …, [c_k, n) of token *rank*; band b: table (n_b, d_b) then
    projection (d_b, m), with d_b = max(1, round(m / div^b)); band 0 has d_0 = m and no projection.

    `rank` (n,) is a buffer mapping token id → frequency rank (identity until `set_rank`), saved in checkpoints.
    forward(idx (B, T)) → (B, T, m). `weight` (n, m) assembles every token's vector, for geometry.
    """

    def __init__(self, vocab_size: int, d_model: int, cutoffs: list[int], div: float, init_std: float):
        super().__init__()
        self.d_model, self.edges = d_model, [0, *cutoffs, vocab_size]
        self.dims = [d_model] + [max(1, round(d_model / div ** b)) for b in range(1, len(self.edges) - 1)]
        self.tables = nn.ModuleList(nn.Embedding(hi - lo, d) for lo, hi, d in
                                    zip(self.edges[:-1], self.edges[1:], self.dims))
        self.projs = nn.ModuleList(Atoms(d, d_model) for d in self.dims[1:])
        for t in self.tables:
            nn.init.normal_(t.weight, 0.0, init_std)
        for p, d in zip(self.projs, self.dims[1:]):
            nn.init.normal_(p.weight, 0.0, 1.0 / math.sqrt(d))  # keeps a projected row at the table's scale
        self.register_buffer("rank", torch.arange(vocab_size))

    def set_rank(self, rank: torch.Tensor) -> None:
        self.rank.copy_(rank.to(self.rank.device))

    def _band(self, b: int, rows: torch.Tensor) -> torch.Tensor:
        e = self.tables[b](rows)
        return e if b == 0 else e @ self.projs[b - 1].weight

    @property
    def weight(self) -> torch.Tensor:
        by_rank = torch.cat([self._band(b, torch.arange(hi - lo, device=self.rank.device))
                             for b, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:]))])
        return by_rank[self.rank]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        r = self.rank[idx]
        out = torch.zeros(*idx.shape, self.d_model, device=idx.device, dtype=self.tables[0].weight.dtype)
        for b, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            sel = (r >= lo) & (r < hi)
            out = out.index_put((sel,), self._band(b, r[sel] - lo).to(out.dtype))
        return out

    def flops_per_token(self) -> int:
        # worst case (a token of the widest projected band); the unigram-weighted mean is lower
        return max([0] + [2 * p.weight.numel() for p in self.projs])


class AdaptiveInput(Intervention):
    """cutoffs: increasing frequency-rank boundaries, e.g. [512, 2048] for n = 8192 → bands of width m, m/div,
    m/div². div: width ratio between bands (≥ 1; Baevski & Auli use 4).

    The lead's BPE ids are not frequency-sorted, so bands are taken over frequency *rank*: the LightningModule
    should call `set_unigram(p)` (counts or probabilities, shape (vocab_size,) or fewer; missing ids rank last)
    before training. Without it the bands follow token id order, which is only right for a frequency-sorted vocab.
    """

    def __init__(self, cutoffs: list[int], div: float = 4.0):
        cutoffs = list(cutoffs)
        if not cutoffs or any(not isinstance(c, int) or c <= 0 for c in cutoffs) or sorted(set(cutoffs)) != cutoffs:
            raise WidthlabError(f"AdaptiveInput.cutoffs must be strictly increasing positive ints (got {cutoffs})")
        if not div >= 1:
            raise WidthlabError(f"AdaptiveInput.div must be >= 1 (got {div})")
        self.cutoffs, self.div = cutoffs, float(div)
        self._module: AdaptiveTokenEmbedding | None = None
        self._p: torch.Tensor | None = None

    def build(self, model) -> None:
        _refuse_tied(model, "AdaptiveInput")
        n = model.cfg.vocab_size
        if self.cutoffs[-1] >= n:
            raise WidthlabError(f"AdaptiveInput.cutoffs {self.cutoffs} must all be < vocab_size={n}")
        model.embed = self._module = AdaptiveTokenEmbedding(n, model.cfg.d_model, self.cutoffs, self.div,
                                                           model.cfg.init_std)
        self._apply_rank()

    def set_unigram(self, p: torch.Tensor) -> None:
        """p: (≤ vocab_size,) counts/probabilities → token id → frequency rank (0 = most frequent). Call it before
        the first step: re-ranking a trained model would scramble which rows belong to which token."""
        p = torch.as_tensor(p, dtype=torch.float64).flatten()
        if (p < 0).any():
            raise WidthlabError("AdaptiveInput.set_unigram needs non-negative counts")
        self._p = p
        self._apply_rank()

    def _apply_rank(self) -> None:
        if self._module is None or self._p is None:
            return
        n = self._module.rank.numel()
        if self._p.numel() > n:
            raise WidthlabError(f"AdaptiveInput.set_unigram got {self._p.numel()} counts for vocab_size={n}")
        full = torch.full((n,), -1.0, dtype=torch.float64)  # ids without a count (padding) rank last
        full[: self._p.numel()] = self._p
        rank = torch.empty(n, dtype=torch.long)
        rank[torch.argsort(full, descending=True, stable=True)] = torch.arange(n)
        self._module.set_rank(rank)

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        # μP: a projection maps width m/div^b → m, both growing with m, so it is a hidden matrix (LR / width_mult)
        # even though the counts file it with the embedding
        return move_params(groups, list(self._module.projs.parameters()), "hidden")
