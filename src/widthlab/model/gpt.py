"""A decoder-only GPT in one file, written so that packing ideas can reach into it.

Token embedding E (n×m) → n_layer pre-norm blocks (causal SDPA attention, 4× MLP) → final norm → head U (n×m).
`model.embed` and `model.head` are ordinary modules that an intervention may replace at build time; the head maps
hidden states to logits (anything whose softmax is the predictive distribution), so mixtures and sigsoftmax fit.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from widthlab.model.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        # SDPA dispatches to flash / memory-efficient kernels on GPU; head_dim is fixed across widths,
        # so the usual 1/sqrt(head_dim) scale is already width-consistent.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), CausalSelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TokenEmbedding(nn.Embedding):
    """E: (n, m). Its `weight` is what the overlap monitor calls `embed`."""


class LinearHead(nn.Module):
    """U: (n, m), logits = h Uᵀ · mult. `mult` is μP's readout multiplier (a plain float, compile-safe)."""

    def __init__(self, d_in: int, vocab_size: int, mult: float = 1.0, weight: nn.Parameter | None = None):
        super().__init__()
        self.mult = mult
        self.weight = weight if weight is not None else nn.Parameter(torch.empty(vocab_size, d_in))
        self.tied = weight is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = F.linear(h, self.weight)
        return logits * self.mult if self.mult != 1.0 else logits

    def flops_per_token(self) -> int:
        return 2 * self.weight.numel()


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, interventions: list | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = LinearHead(cfg.d_model, cfg.vocab_size, mult=1.0 / cfg.width_mult,
                               weight=self.embed.weight if cfg.tie_embeddings else None)
        self.reset_parameters()
        # Interventions see a fully initialised model and may swap `embed`/`head` for their own modules.
        for iv in interventions or []:
            iv.build(self)

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        hidden_std = std / math.sqrt(self.cfg.width_mult)  # μP: hidden fan-in init ∝ 1/sqrt(width)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # LayerNorm weights/biases keep their defaults
            if name.startswith("blocks."):
                s = hidden_std
                if name.endswith("proj.weight"):  # GPT-2: residual projections scaled down by depth
                    s = s / math.sqrt(2 * self.cfg.n_layer)
                nn.init.normal_(p, 0.0, s)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx: (B, T) token ids → (logits (B, T, n), hidden (B, T, m) after the final norm)."""
        T = idx.shape[1]
        x = self.drop(self.embed(idx) + self.pos.weight[:T])
        for block in self.blocks:
            x = block(x)
        h = self.norm(x)
        return self.head(h), h

    # --- bookkeeping: counts include whatever interventions added -------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters; non_embedding drops the lookup tables (token, position, and any table an
        intervention registered via `embedding_modules`) but keeps an untied head, as in Kaplan et al."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            for mod in self.embedding_modules():
                for p in mod.parameters():
                    params.pop(id(p), None)
            if self.cfg.tie_embeddings:  # a tied head still costs its matmul: count it once
                params[id(self.embed.weight)] = self.embed.weight
        return sum(p.numel() for p in params.values())

    def embedding_modules(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 3 × (2 × matmul weights + attention scores/values), head included.
        Modules may report their own forward cost via a `flops_per_token()` method."""
        fwd = 0

        def walk(mod: nn.Module) -> None:
            nonlocal fwd
            for child in mod.children():
                if hasattr(child, "flops_per_token"):
                    fwd += child.flops_per_token()
                elif isinstance(child, nn.Linear):
                    fwd += 2 * child.weight.numel()
                else:
                    walk(child)

        walk(self)
        fwd += self.cfg.n_layer * 4 * self.cfg.seq_len * self.cfg.d_model  # QKᵀ and AV, full (not causal-halved)
        return 3 * fwd

    def unembedding(self) -> torch.Tensor | None:
        """U (n, ·) of the head if it has one, for geometry; None for heads without a single matrix."""
        w = getattr(self.head, "weight", None)
        return w if isinstance(w, torch.Tensor) else None
