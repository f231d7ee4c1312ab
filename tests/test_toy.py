"""The toy model of superposition: Eq. 2 decay, samplers, forward/backward, metrics, fits and the CLI."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.interventions.signed_decay import SignedRowDecay, signed_row_decay_
from widthlab.toy import (fit_alpha_m, fit_mask, forward_dense, forward_sparse, loss_and_grad_sparse, mean_cos2,
                          row_norm_fractions, toy, train_one)
from widthlab.toy_data import densify, frequencies, lr_at, sample_dense, sample_sparse


# ---------------------------------------------------------------------------------------------------- Eq. 2
def rows_of_norm(*norms: float) -> torch.Tensor:
    return torch.tensor([[0.6 * r, 0.8 * r] for r in norms], dtype=torch.float64)


def test_decay_positive_gamma_scales_every_row():
    W = rows_of_norm(5.0, 0.5)
    signed_row_decay_(W, lr=0.1, gamma=1.0)
    assert torch.allclose(W, rows_of_norm(5.0 * 0.9, 0.5 * 0.9))


def test_decay_negative_gamma_pulls_norms_to_target():
    # refs §7: at γ = −1 a row of norm r is scaled by 1 − η(1 − 1/r)|γ|
    W = rows_of_norm(5.0, 0.5)
    signed_row_decay_(W, lr=0.1, gamma=-1.0)
    assert torch.allclose(W, rows_of_norm(5.0 * (1 - 0.1 * (1 - 1 / 5)), 0.5 * (1 - 0.1 * (1 - 1 / 0.5))))
    W = rows_of_norm(3.0)
    signed_row_decay_(W, lr=0.2, gamma=-0.5, target_norm=2.0)
    assert torch.allclose(W, rows_of_norm(3.0 * (1 - 0.2 * 0.5 * (1 - 2 / 3))))
    W = rows_of_norm(1.0)
    signed_row_decay_(W, lr=0.5, gamma=-1.0)  # a unit row is a fixed point
    assert torch.allclose(W, rows_of_norm(1.0))


def fake_gpt(tied: bool, head: bool = True):
    embed = torch.nn.Embedding(4, 2)
    embed.weight.data = rows_of_norm(2.0, 2.0, 2.0, 2.0).float()
    U = embed.weight if tied else torch.nn.Parameter(rows_of_norm(2.0, 2.0, 2.0, 2.0).float())
    return SimpleNamespace(embed=embed, unembedding=lambda: U if head else None)


def test_intervention_decays_tied_matrix_once_and_reads_group_lr():
    model = fake_gpt(tied=True)
    iv = SignedRowDecay(gamma=-1.0)
    iv.build(model)
    groups = iv.param_groups(model, [{"name": "embed", "params": [model.embed.weight], "lr": 0.1,
                                      "weight_decay": 0.1}])
    mine = next(g for g in groups if g["name"] == "signed_decay")
    assert mine["weight_decay"] == 0.0 and mine["lr"] == 0.1 and groups[0]["params"] == []  # replaces AdamW decay
    mine["lr"] = 0.5  # a scheduler edits the dict in place
    iv.after_step(model)
    assert torch.allclose(model.embed.weight.norm(dim=1), torch.full((4,), 2.0 * (1 - 0.5 * 0.5)))


def test_intervention_untied_and_explicit_lr():
    model = fake_gpt(tied=False)
    iv = SignedRowDecay(gamma=1.0, lr=0.1, matrices=["unembed"])
    iv.build(model)
    iv.after_step(model)
    assert torch.allclose(model.unembedding().norm(dim=1), torch.full((4,), 1.8))
    assert torch.allclose(model.embed.weight.norm(dim=1), torch.full((4,), 2.0))


def test_intervention_build_errors():
    with pytest.raises(WidthlabError, match="unknown"):
        SignedRowDecay(gamma=1.0, matrices=["lm_head"]).build(fake_gpt(tied=False))
    with pytest.raises(WidthlabError, match="unembedding"):
        SignedRowDecay(gamma=1.0).build(fake_gpt(tied=False, head=False))
    with pytest.raises(WidthlabError, match="lr"):
        SignedRowDecay(gamma=1.0).after_step(fake_gpt(tied=False))


# ---------------------------------------------------------------------------------------------------- metrics
def test_phi_fractions_and_cos2_on_constructed_matrices():
    W = torch.tensor([[0.3, 0.0], [0.0, 0.6], [1.5, 0.0], [0.0, 0.9]])
    assert row_norm_fractions(W) == (0.75, 0.25)
    assert mean_cos2(W) == pytest.approx(1 / 3)  # 4 rows on 2 axes: each row has 1 parallel partner of 3
    assert mean_cos2(torch.eye(5)) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(mean_cos2(W[:1]))


# ---------------------------------------------------------------------------------------------------- data
def test_frequencies():
    for dist in ("power", "exponential", "linear"):
        p = frequencies(1000, dist, alpha=1.2, density=2.0)
        assert p.sum().item() == pytest.approx(2.0) and (p[:-1] >= p[1:]).all() and p[-1] > 0
    assert frequencies(3, "power", alpha=1.0)[0].item() == pytest.approx(1 / (1 + 1 / 2 + 1 / 3))
    with pytest.raises(WidthlabError, match="density"):
        frequencies(10, "power", alpha=2.0, density=5.0)


def test_sparse_sampler_matches_bernoulli_marginals():
    p = frequencies(40, "power", alpha=1.0, density=3.0)  # p_1 ≈ 0.70 exercises the duplicate redraw
    g = torch.Generator().manual_seed(0)
    B, reps = 2000, 10
    count_sparse, count_dense = torch.zeros(40, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)
    for _ in range(reps):
        rows, feats, vals = sample_sparse(p, B, g)
        assert torch.unique(feats * B + rows).numel() == feats.numel()  # no (sample, feature) twice
        assert 0 <= vals.min() and vals.max() <= 2
        count_sparse += torch.bincount(feats, minlength=40)
        count_dense += (sample_dense(p, B, g) > 0).sum(0)
    N = B * reps
    sigma = (p * (1 - p) / N).sqrt()
    for counts in (count_sparse, count_dense):
        z = (counts / N - p) / sigma
        assert z.abs().max() < 4.5 and (z ** 2).mean() < 2.0  # chi²/dof ≈ 1 if right
    assert vals.mean().item() == pytest.approx(1.0, abs=0.05)


def test_sparse_forward_and_grad_equal_dense():
    p = frequencies(200, "exponential", density=4.0, exp_scale=30.0)
    g = torch.Generator().manual_seed(1)
    B, (n, m) = 64, (200, 9)
    W = torch.randn(n, m, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, generator=g, requires_grad=True)
    rows, feats, vals = sample_sparse(p, B, g)
    vals = vals.double()
    x = densify(rows, feats, vals, B, n)
    y = forward_dense(W, b, x)
    assert torch.allclose(forward_sparse(W, b, rows, feats, vals, B), y)
    loss = F.mse_loss(y, x)
    loss.backward()
    gW, gb = W.grad.clone(), b.grad.clone()
    assert loss_and_grad_sparse(W, b, rows, feats, vals, B).item() == pytest.approx(loss.item())
    assert torch.allclose(W.grad, gW) and torch.allclose(b.grad, gb)


def test_lr_schedule():
    assert lr_at(1, 1e-2, 100, 10) == pytest.approx(1e-3)
    assert lr_at(10, 1e-2, 100, 10) == pytest.approx(1e-2)
    assert lr_at(100, 1e-2, 100, 10) == pytest.approx(5e-4)


# ---------------------------------------------------------------------------------------------------- training
def test_short_run_lowers_loss():
    p = frequencies(100, "power", alpha=1.5)
    kw = dict(batch_size=256, lr_w=1e-2, lr_b=1e-2, min_lr_ratio=0.05, eval_batches=4, seed=0, device="cpu")
    before = train_one(p, 10, 1.0, steps=1, warmup=1, **kw)["loss"]
    after = train_one(p, 10, 1.0, steps=400, warmup=40, **kw)
    assert after["loss"] < 0.2 * before
    assert after["loss"] < 4 / 3 * p.sum().item()  # below the "output nothing" loss ⟨v²⟩·E


def test_alpha_fit_recovers_power_law():
    ms = [8, 16, 32, 64, 128, 256]
    g = torch.Generator().manual_seed(0)
    losses = [3.0 * k ** -1.3 * math.exp(0.02 * torch.randn(1, generator=g).item()) for k in ms]
    f = fit_alpha_m(ms, losses)
    assert f["alpha_m"] == pytest.approx(1.3, abs=0.05) and f["se"] < 0.05 and f["ci_low"] < 1.3 < f["ci_high"]
    assert fit_mask(-1.0, "power", ms, "paper_large") == [False, False, True, True, True, True]
    assert fit_mask(-1.0, "exponential", ms, "paper_large") == [True] * 6
    assert fit_mask(0.1, "power", [8, 16, 32, 64, 128, 256, 512, 1024], "paper_large") == [False] * 3 + [True] * 5


TINY = """n: 60
m: [4, 8, 16]
gammas: [-1.0]
distributions: [power]
alpha: 1.0
steps: 30
batch_size: 32
warmup: 3
eval_batches: 2
log_every: 10
metric_every: 10
name: tiny
"""


def test_cli_writes_results_and_events(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY + f"out_dir: {tmp_path}\n")
    main(["toy", "--config", str(cfg)])
    out = tmp_path / "tiny"
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("gamma,distribution,m") and len(lines) == 4
    assert "alpha_m" in (out / "results.md").read_text()
    assert list((out / "power_g-1_m8").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("kw, match", [(dict(m=[10, 60]), "m < n"), (dict(distributions=["zipf"]), "unknown"),
                                       (dict(steps=-1), "steps")])
def test_bad_input_is_a_widthlab_error(tmp_path, kw, match):
    args = dict(n=60, m=[4], steps=2, batch_size=8, eval_batches=1, out_dir=str(tmp_path)) | kw
    with pytest.raises(WidthlabError, match=match):
        toy(**args)


def test_cli_exits_2_on_bad_input(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.replace("m: [4, 8, 16]", "m: [4, 80]") + f"out_dir: {tmp_path}\n")
    with pytest.raises(SystemExit) as e:
        main(["toy", "--config", str(cfg)])
    assert e.value.code == 2


def test_intervention_on_the_real_gpt():
    from widthlab.model.config import ModelConfig
    from widthlab.model.gpt import GPT
    for tied in (True, False):
        cfg = ModelConfig(vocab_size=16, d_model=8, n_layer=1, head_dim=8, seq_len=4, tie_embeddings=tied)
        iv = SignedRowDecay(gamma=-1.0, lr=1.0)  # lr = 1, γ = −1: every row lands exactly on norm 1
        model = GPT(cfg, interventions=[iv])
        assert len(iv._weights(model)) == (1 if tied else 2)
        iv.after_step(model)
        for w in (model.embed.weight, model.unembedding()):
            assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=1e-5)
