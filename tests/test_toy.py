"""The toy model of superposition: Eq. 2 decay, samplers, forward/backward, metrics, fits, the CLI, the φ₁ record,
steps sweeps, the cross-run fits table and the paper recipe."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.cli import main
from widthlab.interventions.signed_decay import SignedRowDecay, signed_row_decay_
from widthlab.toy.model import (fit_alpha_m, fit_mask, forward_dense, forward_sparse, loss_and_grad_sparse, mean_cos2,
                          row_norm_fractions, toy, train_one)
from widthlab.toy.data import densify, frequencies, lr_at, sample_dense, sample_sparse
from widthlab.toy.results import TABLE_FIELDS, record, upsert


# ---------------------------------------------------------------------------------------------------- Eq. 2
def rows_of_norm(*norms: float) -> torch.Tensor:
    return torch.tensor([[0.6 * r, 0.8 * r] for r in norms], dtype=torch.float64)


def test_decay_positive_gamma_scales_every_row():
    W = rows_of_norm(5.0, 0.5)
    signed_row_decay_(W, lr=0.1, gamma=1.0)
    assert torch.allclose(W, rows_of_norm(5.0 * 0.9, 0.5 * 0.9))


def test_decay_negative_gamma_pulls_norms_to_target():
    # docs/paper.md (the toy model's decay): at γ = −1 a row of norm r is scaled by 1 − η(1 − 1/r)|γ|
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
    traj = read_csv(out / "trajectory.csv")  # 3 widths × steps 10, 20, 30
    assert len(traj) == 9 and {r["step"] for r in traj} == {"10", "20", "30"} and float(traj[0]["phi_one"]) >= 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == 30 and cfg["gammas"] == [-1.0] and "git_commit" in cfg and "started" in cfg


@pytest.mark.parametrize("kw, match", [(dict(m=[10, 60]), "m < n"), (dict(distributions=["zipf"]), "unknown"),
                                       (dict(steps=-1), "steps"), (dict(gammas=[]), "gammas is empty"),
                                       (dict(steps_list=[]), "steps_list"), (dict(steps_list=[4, 0]), "steps_list"),
                                       (dict(warmup=2), "warmup of 2 steps"),
                                       (dict(steps_list=[1, 5], warmup=3), "does not end before 1 steps"),
                                       (dict(device="gpu"), "not a torch device"),
                                       (dict(device="cuda:7"), "cuda:7")])
def test_bad_input_is_a_widthlab_error(tmp_path, kw, match):
    args = dict(n=60, m=[4], steps=2, warmup=1, batch_size=8, eval_batches=1, out_dir=str(tmp_path)) | kw
    with pytest.raises(WidthlabError, match=match):
        toy(**args)
    assert not (tmp_path / "toy").exists()  # checked before anything is written


@pytest.mark.parametrize("extra, match", [(["--device", "cuda:7"], "cuda:7"), (["--gammas", "[]"], "gammas is empty")])
def test_cli_bad_device_and_empty_gammas_are_one_line(tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        main(["toy", "--n", "60", "--m", "[4]", "--steps", "2", "--warmup", "1", "--out_dir", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and match in err[0]


def test_cli_exits_2_on_bad_input(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.replace("m: [4, 8, 16]", "m: [4, 80]") + f"out_dir: {tmp_path}\n")
    with pytest.raises(SystemExit) as e:
        main(["toy", "--config", str(cfg)])
    assert e.value.code == 2


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


class Recorder:
    """A SummaryWriter stand-in that keeps the scalars."""
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


def test_phi_one_is_recorded_over_training():
    p = frequencies(80, "power", alpha=1.0)
    w = Recorder()
    res = train_one(p, 8, -1.0, steps=25, batch_size=32, lr_w=1e-2, lr_b=1e-2, warmup=3, min_lr_ratio=0.05,
                    eval_batches=2, seed=0, device="cpu", writer=w, log_every=10, metric_every=10)
    hist = res["history"]
    assert [h["step"] for h in hist] == [10, 20, 25]  # every metric_every steps and the last step
    assert all(0 <= h["phi_one"] <= h["phi_half"] <= 1 and h["train_loss"] > 0 for h in hist)
    assert [s for s, _ in w.scalars["geometry/phi_one"]] == [10, 20, 25]
    assert w.scalars["geometry/phi_one"][-1][1] == hist[-1]["phi_one"] == res["phi_one"]  # the final W
    assert "geometry/phi_half" in w.scalars and "train/loss_window" in w.scalars
    assert 0 < res["train_loss_last100"] < 10 * res["loss"]


def test_steps_list_fits_one_curve_per_length(tmp_path):
    toy(n=60, m=[4, 8], gammas=[-1.0], steps_list=[12, 24], warmup=0.1, batch_size=32, eval_batches=2,
        metric_every=6, name="sweep", out_dir=str(tmp_path))
    out = tmp_path / "sweep"
    fits, rows = read_csv(out / "fits.csv"), read_csv(out / "results.csv")
    assert [f["steps"] for f in fits] == ["12", "24"] and all(f["fit_ms"] == "4 8" for f in fits)
    assert sorted((r["m"], r["steps"]) for r in rows) == [("4", "12"), ("4", "24"), ("8", "12"), ("8", "24")]
    assert (out / "power_g-1_m8_s24").is_dir()
    assert max(int(t["step"]) for t in read_csv(out / "trajectory.csv") if t["steps"] == "24") == 24


def test_fits_table_records_and_replaces_a_run(tmp_path):
    table = tmp_path / "toy" / "fits.csv"
    earlier = dict.fromkeys(TABLE_FIELDS, "") | dict(n="1000", dist="power", alpha="1", gamma="-1", steps="5000",
                                                      batch="2048", alpha_m="0.87", alpha_m_se="0.06",
                                                      source="docs/results/toy.md (run dir not kept)")
    upsert(table, [earlier])
    kw = dict(n=60, m=[4, 8, 16], steps=12, warmup=2, batch_size=32, eval_batches=2, metric_every=6,
              out_dir=str(tmp_path), fits_table=str(table))
    toy(gammas=[-1.0, 1.0], name="a", **kw)
    rows = read_csv(table)
    assert list(rows[0]) == TABLE_FIELDS and len(rows) == 3
    mine = [r for r in rows if r["source"].endswith("a")]
    assert [r["gamma"] for r in mine] == ["-1", "1"] and mine[0]["fit_range"] == "4 8 16"
    assert mine[0]["n"] == "60" and mine[0]["steps"] == "12" and mine[0]["warmup"] == "2" and mine[0]["date"]
    assert all(float(r["ci_low"]) <= float(r["alpha_m"]) <= float(r["ci_high"]) for r in mine)
    toy(gammas=[-1.0], name="a", **kw)  # the same run again: its rows are replaced, the earlier row stays
    record(str(tmp_path / "a"), str(table))
    rows = read_csv(table)
    assert len(rows) == 2 and [r["alpha_m"] for r in rows if r["n"] == "1000"] == ["0.87"]
    with pytest.raises(WidthlabError, match="not a toy run"):
        record(str(tmp_path), str(table))


def test_paper_recipe_has_the_papers_settings():
    import yaml
    cfg = yaml.safe_load(open("recipes/toy_paper.yaml"))
    # docs/paper.md §1 (App. B.2, exp/exp-10.py)
    paper = dict(n=1000, m=[10, 15, 25, 39, 63, 100], distributions=["power"], alpha=1.0, density=1.0, steps=20000,
                 batch_size=2048, lr=0.01, lr_rule="constant", warmup=2000, min_lr_ratio=0.05, eval_batches=100,
                 fit_rule="all", loss_scale=1.0)
    assert {k: cfg[k] for k in paper} == paper
    widths = torch.floor(torch.exp(torch.linspace(math.log(10), math.log(100), 6))).long().tolist()
    assert cfg["m"] == widths  # the code's ladder
    assert cfg["gammas"] == pytest.approx(torch.linspace(-1, 1, 10)[1:4].tolist(), abs=1e-7)  # Fig. 5e's series


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
