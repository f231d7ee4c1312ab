"""Each Gram-trick statistic against its brute-force n×n definition, and on geometries whose answer is known."""
import math

import pytest
import torch

from widthlab import WidthlabError
from widthlab import geometry as G

RTOL = 1e-9


def brute(W: torch.Tensor, p: torch.Tensor | None = None) -> dict[str, float]:
    """Definitions straight from the formulas, building the full n×n cosine matrix."""
    W = W.double()
    n, m = W.shape
    norms = W.norm(dim=1)
    Wh = W / norms.clamp_min(G.EPS)[:, None]
    C = Wh @ Wh.T
    off = ~torch.eye(n, dtype=torch.bool)
    out = {
        "mean_cos2": C[off].square().mean().item(),
        "mean_cos": C[off].mean().item(),
        "mean_abs_cos": C[off].abs().mean().item(),
        "max_abs_cos": C[off].abs().max().item(),
    }
    out["kappa"] = m * out["mean_cos2"]
    out["welch_ratio"] = out["mean_cos2"] / ((n - m) / (m * (n - 1)))
    Z = W - W.mean(0, keepdim=True)  # centred: subtract the mean row, then normalise, then the same n×n mean
    Zh = Z / Z.norm(dim=1).clamp_min(G.EPS)[:, None]
    out["mean_cos2_centred"] = (Zh @ Zh.T)[off].square().mean().item()
    rms = math.sqrt((norms ** 2).mean().item())
    out["phi_half"] = sum(1 for r in norms.tolist() if r > 0.5) / n
    out["phi_half_rel"] = sum(1 for r in norms.tolist() if r / rms > 0.5) / n
    out["norm_cv"] = (norms.std(unbiased=False) / norms.mean()).item()
    s = torch.linalg.svdvals(W)
    q = s / s.sum()
    out["erank"] = math.exp(-sum(x * math.log(x) for x in q.tolist() if x > 0))
    out["stable_rank"] = (W.square().sum() / s.max() ** 2).item()
    if p is not None:
        pp = p.double()[:, None] * p.double()[None, :]
        out["weighted_cos2"] = ((pp * C.square())[off].sum() / pp[off].sum()).item()
    dots2 = (W @ W.T).square().sum(1)
    out["D"] = torch.where(dots2 > 0, norms ** 4 / dots2, torch.zeros_like(dots2))
    return out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.fixture(params=[(300, 16, 0), (257, 40, 1), (120, 7, 2)])
def random_W(request):
    n, m, seed = request.param
    g = torch.Generator().manual_seed(seed)
    # anisotropic, with spread-out norms, so no statistic is trivially at its isotropic value
    W = torch.randn(n, m, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, m, dtype=torch.float64)
    W = W * torch.rand(n, 1, generator=g, dtype=torch.float64).mul(2).add(0.05) + 0.3
    return W


@pytest.mark.parametrize("split", [False, True])
def test_summary_matches_brute_force(random_W, split):
    # split: rescaled so that the absolute φ½ cut (‖w‖ = 1/2) falls inside the norm distribution
    W = random_W * (0.6 / random_W.norm(dim=1).median().item() if split else 1.0)
    p = torch.rand(W.shape[0], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    got = G.summary(W, p=p, pairs=True, block_rows=64)  # small blocks exercise the off-diagonal path
    want = brute(W, p)
    for k in ("mean_cos2", "mean_cos2_centred", "kappa", "welch_ratio", "mean_cos", "weighted_cos2", "phi_half",
              "phi_half_rel", "norm_cv", "erank", "stable_rank", "mean_abs_cos", "max_abs_cos"):
        assert rel(got[k], want[k]) <= RTOL or (want[k] == 0 and got[k] == 0), (k, got[k], want[k])
    if split:
        assert 0.3 < got["phi_half"] < 0.8 and got["phi_half"] != got["phi_half_rel"]
    n, m = W.shape
    assert got["welch_max_bound"] == pytest.approx(math.sqrt((n - m) / (m * (n - 1))), rel=1e-12)


def test_individual_functions_match_summary(random_W):
    W = random_W.float()  # float32 input is promoted to float64 inside
    s = G.summary(W)
    for name in ("mean_cos2", "mean_cos2_centred", "kappa", "welch_ratio", "mean_cos", "phi_half", "phi_half_rel",
                 "norm_cv", "erank", "stable_rank"):
        assert rel(getattr(G, name)(W), s[name]) <= 1e-12, name
    p = torch.full((W.shape[0],), 0.5)
    assert rel(G.weighted_cos2(W, p), s["mean_cos2"]) <= 1e-12  # uniform weights reduce to the plain mean


def test_pair_stats_and_dimensionality_match_brute_force(random_W):
    W = random_W
    want = brute(W)
    ps = G.pair_stats(W, block_rows=50)
    assert rel(ps["mean_cos2"], want["mean_cos2"]) <= RTOL
    assert rel(ps["mean_abs_cos"], want["mean_abs_cos"]) <= RTOL
    assert rel(ps["max_abs_cos"], want["max_abs_cos"]) <= RTOL
    D = G.token_dimensionality(W, block_rows=37)
    assert torch.allclose(D, want["D"], rtol=RTOL, atol=0)


def test_zero_rows_are_safe():
    W = torch.randn(50, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    W[[3, 17, 40]] = 0.0  # e.g. padding rows that were never trained
    s = G.summary(W, p=torch.rand(50, dtype=torch.float64), pairs=True)
    assert all(math.isfinite(v) for v in s.values())
    want = brute(W)  # zero rows contribute cos = 0 to every pair
    assert rel(s["mean_cos2"], want["mean_cos2"]) <= RTOL and rel(s["mean_cos"], want["mean_cos"]) <= RTOL
    assert rel(s["mean_cos2_centred"], want["mean_cos2_centred"]) <= RTOL  # zero rows centre to −w̄
    D = G.token_dimensionality(W)
    assert D[[3, 17, 40]].abs().max() == 0 and torch.allclose(D, want["D"], rtol=RTOL)
    # and excluding them (what the monitor does with padding rows) is a plain slice that changes the answer
    keep = torch.ones(50, dtype=torch.bool)
    keep[[3, 17, 40]] = False
    assert rel(G.mean_cos2(W[keep]), brute(W[keep])["mean_cos2"]) <= RTOL
    assert G.mean_cos2(W[keep]) > s["mean_cos2"]


def test_gaussian_rows_are_isotropic():
    # E[cos²] = 1/m exactly for isotropic directions; with n = 4000 the sample kappa has relative sd ≈ 1/n·sqrt(m)
    # plus the pair-average noise sqrt(2/(n²)); 2 % is > 10 sd at these sizes.
    for m in (16, 64):
        W = torch.randn(4000, m, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
        s = G.summary(W)
        assert abs(s["kappa"] - 1) < 0.02, s["kappa"]
        assert abs(s["mean_cos"]) < 1e-3
        assert s["phi_half"] > 0.99


def test_orthonormal_rows():
    Q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    W = Q[:20] * 3.0  # 20 orthogonal rows of equal norm in R^32
    s = G.summary(W, pairs=True)
    assert abs(s["mean_cos2"]) < 1e-14 and abs(s["mean_cos"]) < 1e-14 and s["max_abs_cos"] < 1e-12
    assert s["erank"] == pytest.approx(20, rel=1e-12) and s["stable_rank"] == pytest.approx(20, rel=1e-12)
    assert s["norm_cv"] < 1e-12 and s["phi_half"] == 1.0
    D = G.token_dimensionality(W)
    assert torch.allclose(D, torch.ones(20, dtype=torch.float64), rtol=1e-12)
    assert D.sum().item() == pytest.approx(20, rel=1e-12)  # Σ D_i = rank


def test_tight_frames_reach_the_welch_floor():
    # (a) a random orthonormal basis repeated r times: ŴᵀŴ = r·I = (n/m)·I
    m, r = 12, 5
    Q, _ = torch.linalg.qr(torch.randn(m, m, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    W = Q.repeat(r, 1) * torch.linspace(0.5, 2, r * m, dtype=torch.float64)[:, None]  # norms don't matter
    assert G.welch_ratio(W) == pytest.approx(1.0, rel=1e-12)
    # (b) the harmonic frame: rows (cos 2πjk/n, sin 2πjk/n)_{k=1..m/2}·sqrt(2/m), tight whenever n > m
    n, m = 97, 16
    j = torch.arange(n, dtype=torch.float64)[:, None]
    k = torch.arange(1, m // 2 + 1, dtype=torch.float64)[None, :]
    W = torch.cat([torch.cos(2 * math.pi * j * k / n), torch.sin(2 * math.pi * j * k / n)], 1) * math.sqrt(2 / m)
    s = G.summary(W, pairs=True)
    assert s["welch_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert s["kappa"] == pytest.approx(m * (n - m) / (m * (n - 1)), rel=1e-12)
    assert s["max_abs_cos"] >= s["welch_max_bound"] - 1e-12  # coherence can't beat the Welch max bound
    # and random directions sit above the floor by 1/W(n,m)/m = (n−1)/(n−m)
    R = torch.randn(2000, m, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert G.welch_ratio(R) == pytest.approx((2000 - 1) / (2000 - m), rel=0.03)


def test_centring_removes_a_shared_direction():
    # rows = c·u + z, z isotropic with ‖z‖ ≈ 1: the raw overlap is set by c alone, ≈ (c²/(c²+1))² = 0.81 at c = 3,
    # whatever m is; after centring the rows are isotropic again and m·mean_cos2_centred ≈ 1 (as kappa above)
    for m in (32, 64):
        g = torch.Generator().manual_seed(m)
        u = torch.randn(m, generator=g, dtype=torch.float64)
        W = 3.0 * u / u.norm() + torch.randn(4000, m, generator=g, dtype=torch.float64) / math.sqrt(m)
        s = G.summary(W)
        assert abs(s["mean_cos2"] - 0.81) < 0.02 and s["mean_cos"] > 0.85
        assert abs(m * s["mean_cos2_centred"] - 1) < 0.02, m * s["mean_cos2_centred"]
    # without a shared direction centring changes (almost) nothing
    R = torch.randn(4000, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert G.mean_cos2_centred(R) == pytest.approx(G.mean_cos2(R), rel=0.02)


def test_centring_a_shifted_tight_frame_gives_back_the_frame():
    # the harmonic frame's rows sum to zero (Σ_j cos(2πjk/n) = 0 for 0 < k < n), so centring W + 1vᵀ returns
    # exactly the frame, whose mean cos² is the Welch floor; the raw statistic of the shifted rows is far above it
    n, m = 97, 16
    j = torch.arange(n, dtype=torch.float64)[:, None]
    k = torch.arange(1, m // 2 + 1, dtype=torch.float64)[None, :]
    F = torch.cat([torch.cos(2 * math.pi * j * k / n), torch.sin(2 * math.pi * j * k / n)], 1) * math.sqrt(2 / m)
    v = torch.randn(m, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    W = F + 2.0 * v / v.norm()
    floor = G.welch_bound(n, m)
    assert G.mean_cos2(F) == pytest.approx(floor, rel=1e-12)
    assert G.mean_cos2_centred(W) == pytest.approx(floor, rel=1e-10)
    assert G.mean_cos2_centred(F) == pytest.approx(floor, rel=1e-10)
    assert G.mean_cos2(W) > 5 * floor


def test_phi_half_is_absolute_and_phi_half_rel_is_scale_free():
    # norms 0.1 (20 rows), 0.45 (10), 0.55 (30), 2.0 (40): φ½ counts ‖w‖ > 1/2 → 70/100; rms = sqrt(1.785...)
    norms = torch.tensor([0.1] * 20 + [0.45] * 10 + [0.55] * 30 + [2.0] * 40, dtype=torch.float64)
    dirs = torch.randn(100, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    W = dirs / dirs.norm(dim=1, keepdim=True) * norms[:, None]
    rms = norms.square().mean().sqrt().item()  # ≈ 1.34: only the 2.0 rows exceed rms/2 ≈ 0.67
    assert rms / 2 > 0.55
    assert G.phi_half(W) == pytest.approx(0.70, abs=1e-15) and G.phi_half_rel(W) == pytest.approx(0.40, abs=1e-15)
    s = G.summary(W)
    assert (s["phi_half"], s["phi_half_rel"]) == (G.phi_half(W), G.phi_half_rel(W))
    # a GPT-like init (std 0.02, m = 64: ‖w‖ ≈ 0.16) has no row past 1/2, but every row near the RMS norm
    E = 0.02 * torch.randn(1000, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert G.phi_half(E) == 0.0 and G.phi_half_rel(E) == 1.0
    assert G.phi_half(10 * E) == 1.0 and G.phi_half_rel(10 * E) == 1.0
    assert G.phi_half_rel(0.01 * W) == G.phi_half_rel(W) and G.phi_half(0.01 * W) == 0.0


def test_identical_and_antipodal_rows():
    v = torch.randn(1, 10, dtype=torch.float64)
    W = v.repeat(30, 1) * torch.arange(1, 31, dtype=torch.float64)[:, None]
    s = G.summary(W, pairs=True)
    assert s["mean_cos"] == pytest.approx(1.0, rel=1e-12) and s["mean_cos2"] == pytest.approx(1.0, rel=1e-12)
    assert s["erank"] == pytest.approx(1.0, rel=1e-9) and s["max_abs_cos"] == pytest.approx(1.0, rel=1e-12)
    assert G.token_dimensionality(W).sum().item() == pytest.approx(1.0, rel=1e-12)  # rank 1
    assert s["mean_cos2_centred"] == pytest.approx(1.0, rel=1e-12)  # centred rows v·(k − 15.5): still collinear
    assert G.mean_cos2_centred(v.repeat(30, 1)) == 0.0  # identical rows centre to zero rows: cos = 0, not NaN
    W2 = torch.cat([v, -v])
    assert G.mean_cos(W2) == pytest.approx(-1.0, rel=1e-12) and G.mean_cos2(W2) == pytest.approx(1.0, rel=1e-12)


def test_weighted_cos2_concentrates_on_heavy_tokens():
    # rows 0,1 orthogonal and heavy; rows 2,3 equal and light → the weighted mean is dominated by the 0/1 pair
    W = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]], dtype=torch.float64)
    p = torch.tensor([0.49, 0.49, 0.01, 0.01], dtype=torch.float64)
    assert G.weighted_cos2(W, p) == pytest.approx(2 * 0.01 * 0.01 / (1 - (p ** 2).sum().item()), rel=1e-12)
    assert G.mean_cos2(W) == pytest.approx(2 / 12, rel=1e-12)


def test_cos_sample_is_seeded_and_in_range():
    W = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
    a, b = G.cos_sample(W, 500, seed=1), G.cos_sample(W, 500, seed=1)
    assert torch.equal(a, b) and a.shape == (500,)
    assert a.abs().max() <= 1 + 1e-12 and (a.abs() < 1 - 1e-9).all()  # i ≠ j for every pair (no self-cosines)
    # its mean estimates mean_cos
    big = G.cos_sample(W, 200_000, seed=2)
    assert abs(big.mean().item() - G.mean_cos(W)) < 0.01


def test_bad_shapes():
    with pytest.raises(WidthlabError):
        G.mean_cos2(torch.randn(5))
    with pytest.raises(WidthlabError):
        G.summary(torch.randn(1, 4))
    with pytest.raises(WidthlabError):
        G.weighted_cos2(torch.randn(5, 3), torch.rand(4))
    assert math.isnan(G.welch_ratio(torch.randn(4, 8)))  # n ≤ m: the floor is 0, the ratio undefined
