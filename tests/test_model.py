import pytest
import torch

from widthlab import WidthlabError
from widthlab.model import GPT, ModelConfig
from widthlab.module import LitGPT


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, d_model=64, n_layer=2, seq_len=16)).eval()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 97, (2, 6))
    la, _ = model(x)
    lb, _ = model(y)
    assert torch.allclose(la[:, :10], lb[:, :10], atol=1e-6)
    assert not torch.allclose(la[:, 10:], lb[:, 10:])


@pytest.mark.parametrize("tied", [False, True])
def test_param_and_flop_counts_match_hand_counts(tied):
    V, d, L, T = 512, 64, 3, 32
    model = GPT(ModelConfig(vocab_size=V, d_model=d, n_layer=L, seq_len=T, tie_embeddings=tied))
    block = 2 * 2 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d  # two LayerNorms, qkv, proj, fc, proj
    total = V * d + T * d + L * block + 2 * d + (0 if tied else V * d)
    assert model.num_params() == total
    # non-embedding drops E and the positions but keeps the head (counted once when tied)
    assert model.num_params(non_embedding=True) == L * block + 2 * d + V * d
    fwd = 2 * (L * 12 * d * d + V * d) + L * 4 * T * d
    assert model.flops_per_token() == 3 * fwd


def test_width_must_divide_by_head_dim():
    with pytest.raises(WidthlabError, match="head_dim"):
        ModelConfig(d_model=48, head_dim=32)


def test_mup_scales_hidden_lr_and_readout():
    m = LitGPT(d_model=128, head_dim=32, vocab_size=256, seq_len=16, lr=1e-3, mup_base_d_model=32)
    assert m.model.head.mult == pytest.approx(32 / 128)
    # configure_optimizers needs a trainer only for the schedule length; fake the bits it reads
    m.trainer = type("T", (), {"max_steps": 10, "estimated_stepping_batches": 10})()
    opt = m.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["initial_lr"] for g in opt.param_groups}  # before the warmup factor
    assert lrs["hidden"] == pytest.approx(1e-3 / 4) and lrs["embed"] == pytest.approx(1e-3)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["vector"] == 0.0
