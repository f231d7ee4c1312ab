"""ModelConfig: every shape and scale of the GPT, with d_model as the one dial of a width sweep."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from widthlab import WidthlabError


@dataclass
class ModelConfig:
    vocab_size: int = 4096        # rows of E and U; may include padding rows past real_vocab_size
    d_model: int = 64             # m, the width being scaled
    n_layer: int = 2
    head_dim: int = 32            # fixed across a sweep, so n_head = d_model / head_dim grows with width
    seq_len: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02
    # μP: when set, multipliers are derived from d_model / mup_base_d_model here, never stored on tensors,
    # so the model stays torch.compile- and checkpoint-friendly.
    mup_base_d_model: int | None = None
    real_vocab_size: int | None = None  # tokens the tokenizer can emit; rows past it are padding

    def __post_init__(self) -> None:
        if self.d_model <= 0 or self.n_layer <= 0 or self.seq_len <= 0:
            raise WidthlabError(f"d_model, n_layer and seq_len must be positive (got {self.d_model}, "
                                f"{self.n_layer}, {self.seq_len})")
        if self.d_model % self.head_dim:
            raise WidthlabError(f"d_model={self.d_model} is not divisible by head_dim={self.head_dim}; "
                                f"choose a multiple of {self.head_dim} or change model.head_dim")
        if not 0.0 <= self.dropout < 1.0:
            raise WidthlabError(f"dropout must be in [0, 1) (got {self.dropout}); PTB recipes use 0.1")
        if self.mup_base_d_model is not None and self.mup_base_d_model <= 0:
            raise WidthlabError(f"mup_base_d_model must be a positive width (got {self.mup_base_d_model}) or null")
        if self.real_vocab_size is None:
            self.real_vocab_size = self.vocab_size
        if self.real_vocab_size > self.vocab_size:
            raise WidthlabError(f"real_vocab_size={self.real_vocab_size} exceeds vocab_size={self.vocab_size}")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_dim

    @property
    def width_mult(self) -> float:
        """d_model / base width under μP, 1.0 otherwise."""
        return self.d_model / self.mup_base_d_model if self.mup_base_d_model else 1.0

    def to_dict(self) -> dict:
        return asdict(self)
