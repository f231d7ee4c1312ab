"""Hashed bigram input embedding: a second lookup table indexed by hash(previous token, current token).

Sources: modded-nanogpt PR #201 "BigramHash" (table of 5·n rows, xor of two multiplicative hashes, zero init,
position 0 mapped to a reserved row); Over-Encoding (Huang et al., arXiv 2501.16975: hashed n-gram input
vocabularies, loss falls log-linearly in input-vocabulary size).

    x_t = E[idx_t] + H[hash(idx_{t−1}, idx_t)]        hash(a, b) = (36313·b xor 27191·a) mod (S − 1)

with S = table_size and row S − 1 reserved for t = 0 (no previous token). It adds input capacity without width:
≈ 0 FLOPs (a gather and an add), S·m parameters, all counted as embedding parameters (the table is an
nn.Embedding). Zero init makes the model's output at init identical to the baseline's. Works with tied models:
the token table E (and so the tie to the head) is kept as is.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from widthlab import WidthlabError
from widthlab.interventions.base import Intervention

_MUL_CUR, _MUL_PREV = 36313, 27191  # modded-nanogpt's constants: spread (prev, cur) over the int32 range


def bigram_hash(idx: torch.Tensor, table_size: int) -> torch.Tensor:
    """idx: (B, T) token ids → (B, T) rows in [0, table_size); position 0 gets the reserved row table_size − 1."""
    mod = table_size - 1
    x = idx.to(torch.int64)  # int64: the products cannot overflow, and % is then non-negative
    out = torch.full_like(x, mod)
    out[:, 1:] = torch.bitwise_xor(_MUL_CUR * x[:, 1:], _MUL_PREV * x[:, :-1]) % mod
    return out


class BigramTable(nn.Embedding):
    """H: (table_size, m). An nn.Embedding so parameter counts file it with the lookup tables."""


class BigramHashInput(nn.Module):
    """Wraps the token embedding: forward(idx (B, T)) → (B, T, m) = token(idx) + bigram(hash(idx)).
    `weight` returns the token table E, so geometry (and a tied head) still see E."""

    def __init__(self, token: nn.Module, table_size: int, d_model: int):
        super().__init__()
        self.token, self.table_size = token, table_size
        self.bigram = BigramTable(table_size, d_model)

    @property
    def weight(self) -> torch.Tensor:
        return self.token.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.token(idx) + self.bigram(bigram_hash(idx, self.table_size))


class BigramHashEmbedding(Intervention):
    """table_size: rows S of the hashed table (modded-nanogpt used 5·vocab_size). init: "zero" (output unchanged at
    init, as in PR #201) or "normal" (N(0, init_std²), like E)."""

    def __init__(self, table_size: int, init: str = "zero"):
        if not (isinstance(table_size, int) and table_size >= 2):
            raise WidthlabError(f"BigramHashEmbedding.table_size must be an int >= 2 (got {table_size!r}); "
                                f"modded-nanogpt used 5 × vocab_size")
        if init not in ("zero", "normal"):
            raise WidthlabError(f"BigramHashEmbedding.init must be 'zero' or 'normal' (got {init!r})")
        self.table_size, self.init = table_size, init

    def build(self, model) -> None:
        if isinstance(model.embed, BigramHashInput):
            raise WidthlabError("BigramHashEmbedding is listed twice in model.interventions; keep one")
        model.embed = BigramHashInput(model.embed, self.table_size, model.cfg.d_model)
        with torch.no_grad():  # the optimizer files the table with "embed": it is an nn.Embedding
            if self.init == "zero":
                model.embed.bigram.weight.zero_()
            else:
                model.embed.bigram.weight.normal_(0.0, model.cfg.init_std)

