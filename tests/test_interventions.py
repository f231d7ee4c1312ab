"""Each built-in packing idea does what its docstring says, with numbers, and trains when hooked up the way the
LightningModule hooks it (groups → param_groups, loss + extra_loss, after_step under no_grad)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from widthlab import WidthlabError
from widthlab.interventions.bigram_hash import BigramHashEmbedding, bigram_hash
from widthlab.interventions.factorized import AdaptiveInput, FactorizedEmbedding
from widthlab.interventions.frame_penalty import FramePenalty
from widthlab.interventions.heads import MixtureOfSoftmaxes, Sigsoftmax, WideHead
from widthlab.interventions.logits import LogitSoftcap, ZLoss
from widthlab.interventions.unit_norm import CosineHead, UnitNormRows
from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT

torch.set_num_threads(1)
N, M = 64, 32


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": N, "d_model": M, "n_layer": 1, "head_dim": 16, "seq_len": 16, **kw})


def gpt(ivs=(), seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg(**kw), list(ivs))


def tokens(B=4, T=16, seed=1) -> torch.Tensor:
    return torch.randint(0, N, (B, T), generator=torch.Generator().manual_seed(seed))


def groups(model, ivs) -> list[dict]:
    """The LightningModule's layout: every nn.Embedding's params → embed, other 0/1-D → vector, head's 2-D → head,
    the rest → hidden; then each intervention's param_groups."""
    embed = {id(p) for m in model.embedding_modules() for p in m.parameters()}
    head = {id(p) for p in model.head.parameters()} - embed
    gs = {k: [] for k in ("hidden", "embed", "head", "vector")}
    for p in model.parameters():
        gs["embed" if id(p) in embed else "vector" if p.dim() < 2 else "head" if id(p) in head else "hidden"].append(p)
    spec = [{"name": k, "params": v, "weight_decay": 0.0 if k == "vector" else 0.1} for k, v in gs.items()]
    for iv in ivs:
        spec = iv.param_groups(model, spec)
    return [g for g in spec if g["params"]]


def group_of(gs, p) -> str:
    return next(g["name"] for g in gs if any(q is p for q in g["params"]))


def train(ivs, steps=25, lr=1e-2, **kw) -> tuple[float, float, GPT]:
    """A few AdamW steps on one fixed batch of random tokens, hooks called like the module calls them."""
    model = gpt(ivs, **kw)
    gs = groups(model, ivs)
    ids = [id(p) for g in gs for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()), "each parameter in exactly one group"
    opt = torch.optim.AdamW(gs, lr=lr, weight_decay=0.0)
    x = tokens()
    losses = []
    for _ in range(steps):
        logits, hidden = model(x[:, :-1])
        y = x[:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss = ce + sum((v for iv in ivs for v in iv.extra_loss(model, logits, hidden, y).values()),
                        torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for iv in ivs:
                iv.after_step(model)
        losses.append(ce.item())
    return losses[0], losses[-1], model


def unigram() -> torch.Tensor:
    return 1.0 / torch.arange(1, N + 1).float()[torch.randperm(N, generator=torch.Generator().manual_seed(3))]


# ---------------------------------------------------------------- every built-in trains
@pytest.mark.parametrize("make", [
    lambda: [UnitNormRows()],
    lambda: [FramePenalty(0.1)],
    lambda: [BigramHashEmbedding(5 * N)],
    lambda: [FactorizedEmbedding(8)],
    lambda: [AdaptiveInput([8, 24])],
    lambda: [MixtureOfSoftmaxes(3)],
    lambda: [WideHead(48)],
    lambda: [Sigsoftmax()],
    lambda: [ZLoss(1e-3)],
    lambda: [LogitSoftcap(5.0)],
    lambda: [BigramHashEmbedding(128), UnitNormRows(["unembed"]), FramePenalty(0.1), ZLoss(), LogitSoftcap(15.0)],
], ids=["unit_norm", "frame", "bigram", "factorized", "adaptive", "mos", "wide", "sigsoftmax", "zloss", "softcap",
        "combined"])
def test_trains_and_lowers_loss(make):
    ivs = make()
    for iv in ivs:
        if hasattr(iv, "set_unigram"):
            iv.set_unigram(unigram())
    first, last, _ = train(ivs)
    assert math.isfinite(last) and last < first - 0.5, (first, last)


# ---------------------------------------------------------------- A2/C1 unit-norm rows
def test_unit_norm_rows_stay_on_sphere_and_head_is_scaled_cosine():
    iv = UnitNormRows()
    model = gpt([iv])
    assert isinstance(model.head, CosineHead) and model.unembedding() is model.head.weight
    assert torch.allclose(model.embed.weight.norm(dim=1), torch.ones(N), atol=1e-6)  # projected at build
    assert model.head.scale.item() == pytest.approx(math.sqrt(M))  # default init √m
    _, _, model = train([iv], steps=3, lr=0.1)
    for w in (model.embed.weight, model.head.weight):
        assert torch.allclose(w.norm(dim=1), torch.ones(N), atol=1e-5)
    assert model.head.scale.item() != pytest.approx(math.sqrt(M))  # s learned
    logits, _ = model(tokens())
    assert logits.abs().max() <= model.head.scale.abs().item() + 1e-4  # |s·cos| ≤ |s|


def test_unit_norm_rows_options_and_errors():
    model = gpt([UnitNormRows(["unembed"], learn_scale=False, init_scale=10.0)])
    assert "head.scale" not in dict(model.named_parameters()) and model.head.scale.item() == 10.0
    tied = gpt([UnitNormRows()], tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight  # the tie survives the head swap
    for bad in (dict(matrices=["E"]), dict(matrices=[]), dict(init_scale=0.0)):
        with pytest.raises(WidthlabError):
            UnitNormRows(**bad)
    with pytest.raises(WidthlabError, match="computed"):
        gpt([FactorizedEmbedding(4), UnitNormRows(["embed"])])
    with pytest.raises(WidthlabError, match="before head wrappers"):
        gpt([LogitSoftcap(), UnitNormRows(["unembed"])])


# ---------------------------------------------------------------- B1/B2 frame penalty
def brute_frame(W, p):
    cos2 = (F.normalize(W.double(), dim=1) @ F.normalize(W.double(), dim=1).T) ** 2  # (n, n)
    return (p[:, None] * p[None, :] * cos2).sum() - 1.0 / W.shape[1]


def test_frame_penalty_matches_brute_force_uniform_and_weighted():
    model = gpt([uni := FramePenalty(2.0)])
    U = model.head.weight
    val = uni.extra_loss(model, None, None, None)["frame_penalty"]
    assert val.item() == pytest.approx(2.0 * brute_frame(U, torch.full((N,), 1.0 / N)).item(), rel=1e-4)
    # the stated normalisation: ‖ŴᵀŴ − (n/m)I‖²_F / n²
    Wh = F.normalize(U.double(), dim=1)
    assert val.item() / 2 == pytest.approx(((Wh.T @ Wh - N / M * torch.eye(M)).square().sum() / N**2).item(), rel=1e-4)
    p = unigram()
    wtd = FramePenalty(1.0, matrix="embed", frequency_weighted=True)
    model = gpt([wtd])
    wtd.set_unigram(p * 7)  # counts are fine: renormalised
    val = wtd.extra_loss(model, None, None, None)["frame_penalty"]
    assert val.item() == pytest.approx(brute_frame(model.embed.weight, p / p.sum()).item(), rel=1e-4)
    val.backward()
    assert model.embed.weight.grad.abs().sum() > 0


def test_frame_penalty_zero_for_tight_frame_and_real_vocab_only():
    torch.manual_seed(0)
    Q = torch.cat([torch.linalg.qr(torch.randn(M, M))[0] for _ in range(N // M)])  # N unit rows, ŴᵀŴ = (N/M)·I
    iv = FramePenalty(1.0)
    model = gpt([iv], real_vocab_size=N - 8, vocab_size=N + 0)
    with torch.no_grad():
        model.head.weight[: N - 8].copy_(Q[: N - 8])
    random_val = iv.extra_loss(model, None, None, None)["frame_penalty"].item()
    model = gpt([iv])
    with torch.no_grad():
        model.head.weight.copy_(Q * torch.rand(N, 1) * 3)  # norms do not matter: rows are normalised
    assert iv.extra_loss(model, None, None, None)["frame_penalty"].item() < 1e-10
    assert random_val > 1e-3  # a strict subset of a tight frame is not tight: the padding rows were excluded


def test_frame_penalty_errors():
    for bad in (dict(weight=-1.0), dict(weight=1.0, matrix="U")):
        with pytest.raises(WidthlabError):
            FramePenalty(**bad)
    iv = FramePenalty(1.0, frequency_weighted=True)
    model = gpt([iv])
    with pytest.raises(WidthlabError, match="set_unigram"):
        iv.extra_loss(model, None, None, None)
    with pytest.raises(WidthlabError):
        iv.set_unigram(-torch.ones(N))


# ---------------------------------------------------------------- E2 bigram hash
def test_bigram_hash_zero_init_is_baseline_and_uses_only_previous_token():
    x = tokens()
    base, _ = gpt()(x)
    iv = BigramHashEmbedding(200)
    model = gpt([iv])
    assert torch.equal(model(x)[0], base)  # zero init: identical output
    assert model.embed.weight is model.embed.token.weight  # geometry still reads E
    assert model.num_params(non_embedding=True) == gpt().num_params(non_embedding=True)
    assert model.num_params() - gpt().num_params() == 200 * M
    torch.nn.init.normal_(model.embed.bigram.weight)
    extra = lambda idx: model.embed(idx) - model.embed.token(idx)  # noqa: E731  the bigram term alone
    a = torch.tensor([[5, 9, 3, 7]])
    b = torch.tensor([[1, 9, 3, 2]])  # same (prev, cur) at position 2 only, different elsewhere
    ea, eb = extra(a), extra(b)
    assert torch.allclose(ea[0, 2], eb[0, 2], atol=1e-6) and not torch.allclose(ea[0, 1], eb[0, 1])
    assert torch.allclose(ea[0, 0], model.embed.bigram.weight[199], atol=1e-6)  # position 0: the reserved row
    assert torch.allclose(ea[0, 0], eb[0, 0], atol=1e-6)  # ... whatever the first token
    h = bigram_hash(torch.randint(0, 10_000, (8, 64)), 200)
    assert h[:, 1:].max() < 199 and h.min() >= 0


def test_bigram_hash_groups_errors_and_tied():
    iv = BigramHashEmbedding(100)
    model = gpt([iv], tie_embeddings=True)
    assert model.head.weight is model.embed.weight
    assert group_of(groups(model, [iv]), model.embed.bigram.weight) == "embed"  # a table: embedding LR
    for bad in (dict(table_size=-5), dict(table_size=1), dict(table_size=64, init="ones")):
        with pytest.raises(WidthlabError):
            BigramHashEmbedding(**bad)


# ---------------------------------------------------------------- E4 factorised / adaptive input
def test_factorized_embedding_params_flops_and_weight():
    r = 8
    model, base = gpt([FactorizedEmbedding(r)]), gpt()
    emb = model.embed
    assert sum(p.numel() for p in emb.parameters()) == N * r + r * M
    assert model.num_params(non_embedding=True) == base.num_params(non_embedding=True)  # all of it is lookup
    assert model.flops_per_token() - base.flops_per_token() == 3 * 2 * r * M
    x = tokens()
    assert torch.allclose(emb(x), emb.weight[x], atol=1e-6) and emb.weight.shape == (N, M)
    assert emb.weight.std().item() == pytest.approx(0.02, rel=0.3)  # baseline scale at init
    for bad in (0, -1, 2.5):
        with pytest.raises(WidthlabError):
            FactorizedEmbedding(bad)
    with pytest.raises(WidthlabError, match="< d_model"):
        gpt([FactorizedEmbedding(M)])
    with pytest.raises(WidthlabError, match="tie_embeddings: false"):
        gpt([FactorizedEmbedding(4)], tie_embeddings=True)


def test_adaptive_input_bands_by_frequency_rank():
    iv = AdaptiveInput([8, 24], div=4)
    model = gpt([iv])
    emb = model.embed
    assert emb.dims == [M, M // 4, M // 16]
    n_params = 8 * M + 16 * 8 + 40 * 2 + 8 * M + 2 * M  # tables + projections
    assert sum(p.numel() for p in emb.parameters()) == n_params
    p = unigram()
    iv.set_unigram(p)
    top = int(p.argmax())
    assert emb.rank[top] == 0
    x = tokens()
    assert torch.allclose(emb(x), emb.weight[x], atol=1e-6)
    # the most frequent token reads band 0's full-width row; the rarest reads the m/16 band through its projection
    assert torch.equal(emb.weight[top], emb.tables[0].weight[0])
    rare = int(p.argmin())
    assert torch.allclose(emb.weight[rare], emb.tables[2].weight[N - 1 - 24] @ emb.projs[1].weight)
    assert model.flops_per_token() - gpt().flops_per_token() == 3 * 2 * 8 * M
    gs = groups(model, [iv])
    assert group_of(gs, emb.tables[2].weight) == "embed" and group_of(gs, emb.projs[0].weight) == "hidden"
    assert model.num_params(non_embedding=True) == gpt().num_params(non_embedding=True)
    for bad in (dict(cutoffs=[]), dict(cutoffs=[8, 8]), dict(cutoffs=[-1]), dict(cutoffs=[8], div=0.5)):
        with pytest.raises(WidthlabError):
            AdaptiveInput(**bad)
    with pytest.raises(WidthlabError):
        gpt([AdaptiveInput([8, N])])
    with pytest.raises(WidthlabError, match="tie_embeddings"):
        gpt([AdaptiveInput([8])], tie_embeddings=True)


# ---------------------------------------------------------------- D heads
def test_mos_is_a_distribution_reduces_to_softmax_and_counts_flops():
    h = torch.randn(2, 5, M)
    model = gpt([iv := MixtureOfSoftmaxes(3)])
    gs = groups(model, [iv])  # μP: P_k and the prior take the hidden LR, U stays a head
    assert [group_of(gs, p) for p in (model.head.proj.weight, model.head.prior.weight, model.head.weight)] == \
        ["hidden", "hidden", "head"]
    torch.nn.init.normal_(model.head.prior.weight)  # non-uniform mixture weights
    logp = model.head(h)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    one = gpt([MixtureOfSoftmaxes(1)]).head
    ref = F.log_softmax(torch.tanh(one.proj(h)) @ one.weight.T * one.mult, dim=-1)
    assert torch.allclose(one(h), ref, atol=1e-5)
    base = gpt()
    extra = 2 * (3 * M * M + 3 * M + 3 * N * M) - 2 * N * M
    assert model.flops_per_token() - base.flops_per_token() == 3 * extra
    assert model.unembedding() is model.head.weight and model.head.weight.shape == (N, M)
    for bad in (0, -2, 1.5):
        with pytest.raises(WidthlabError):
            MixtureOfSoftmaxes(bad)
    with pytest.raises(WidthlabError, match="tie_embeddings: false"):
        gpt([MixtureOfSoftmaxes(2)], tie_embeddings=True)
    with pytest.raises(WidthlabError):
        gpt([MixtureOfSoftmaxes(2), Sigsoftmax()])
    with pytest.raises(WidthlabError):
        gpt([MixtureOfSoftmaxes(2), LogitSoftcap()])


def test_wide_head_shape_and_flops():
    model, base = gpt([iv := WideHead(96)]), gpt()
    gs = groups(model, [iv])
    assert group_of(gs, model.head.up.weight) == "hidden" and group_of(gs, model.head.weight) == "head"
    assert model.unembedding().shape == (N, 96)
    assert model.flops_per_token() - base.flops_per_token() == 3 * (2 * (M * 96 + N * 96) - 2 * N * M)
    assert model.num_params() - base.num_params() == M * 96 + N * 96 - N * M
    with pytest.raises(WidthlabError):
        WideHead(0)
    with pytest.raises(WidthlabError, match="tie_embeddings: false"):
        gpt([WideHead(64)], tie_embeddings=True)


def test_sigsoftmax_matches_definition_and_wraps_tied_head():
    model = gpt([Sigsoftmax()], tie_embeddings=True)
    h = torch.randn(2, 3, M) * 5
    z = model.head.inner(h).double()
    ref = z.exp() * torch.sigmoid(z) / (z.exp() * torch.sigmoid(z)).sum(-1, keepdim=True)
    assert torch.allclose(F.softmax(model.head(h).double(), -1), ref, atol=1e-6)
    assert model.unembedding() is model.embed.weight
    assert model.flops_per_token() == gpt(tie_embeddings=True).flops_per_token()


# ---------------------------------------------------------------- C4 z-loss / softcap
def test_zloss_value():
    logits = torch.zeros(2, 3, N)
    logits[0, 0, 0] = 100.0  # log Z ≈ 100 at one position, log N elsewhere
    out = ZLoss(1e-4).extra_loss(None, logits, None, None)["z_loss"]
    expected = 1e-4 * (torch.logsumexp(logits[0, 0], 0) ** 2 + 5 * math.log(N) ** 2) / 6
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.item() == pytest.approx(1e-4 * (100.0**2 + 5 * math.log(N) ** 2) / 6, rel=1e-3)
    with pytest.raises(WidthlabError):
        ZLoss(-1.0)


def test_softcap_bounds_logits():
    model = gpt([LogitSoftcap(3.0)])
    with torch.no_grad():
        model.head.inner.weight.mul_(1000)
    logits, _ = model(tokens())
    assert logits.abs().max() <= 3.0 and logits.abs().max() > 2.9
    small = torch.randn(4) * 0.01
    assert torch.allclose(model.head.cap * torch.tanh(small / model.head.cap), small, atol=1e-7)
    assert model.unembedding() is model.head.inner.weight
    assert gpt([LogitSoftcap()], tie_embeddings=True).unembedding() is not None
    for bad in (0.0, -30.0):
        with pytest.raises(WidthlabError):
            LogitSoftcap(bad)
