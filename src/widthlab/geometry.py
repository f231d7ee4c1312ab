"""Geometry of token representations: how much the rows of a matrix W (n tokens × m dims) overlap.

Definitions. Row i is wᵢ ∈ Rᵐ; ŵᵢ = wᵢ/‖wᵢ‖ (zero rows stay zero); cos_ij = ŵᵢ·ŵⱼ; pairs are i ≠ j.

    mean_cos2     = Σ_{i≠j} cos_ij² / (n(n−1))          the paper's "mean square overlap" (Liu, Liu & Gore)
    mean_cos2_centred = mean_cos2 of the rows wᵢ − w̄ (w̄ = Σwᵢ/n), each then normalised: the packing once the
                    one shared direction is removed. Rows c + zᵢ (zᵢ isotropic, ‖zᵢ‖ ≈ 1) have mean_cos2 ≈
                    (‖c‖²/(‖c‖²+1))², set by c alone, but mean_cos2_centred ≈ 1/m
    kappa         = m · mean_cos2                        1 = random isotropic directions
    welch_ratio   = mean_cos2 / W(n,m),  W(n,m) = (n−m)/(m(n−1))   1 = unit-norm tight frame, the floor
    mean_cos      = Σ_{i≠j} cos_ij / (n(n−1))            anisotropy: > 0 means the rows share a cone
    weighted_cos2 = Σ_{i≠j} pᵢpⱼ cos_ij² / Σ_{i≠j} pᵢpⱼ  interference felt by frequent tokens (p = unigram)
    phi_half      = #{i : ‖wᵢ‖ > 1/2} / n                the paper's φ½ (Eq. 3): ≈1 strong superposition, ≈m/n weak;
                    absolute, so only meaningful where rows live at norm ~1 (the toy model), not at GPT init scale
    phi_half_rel  = #{i : ‖wᵢ‖/rms‖w‖ > 1/2} / n        the same cut relative to the RMS row norm: scale-free, for LMs
    norm_cv       = std/mean of ‖wᵢ‖ (population std)
    erank         = exp H(σ/Σσ), σ the singular values of W (Roy & Vetterli)
    stable_rank   = ‖W‖_F² / σ_max²
    D_i           = ‖wᵢ‖⁴ / Σⱼ (wᵢ·wⱼ)²                  per-token dimensionality (Elhage et al.), Σᵢ D_i ≤ m

The identity that makes all of it cheap: Σ_{i,j} (ŵᵢ·ŵⱼ)² = tr(ŴŴᵀŴŴᵀ) = tr(ŴᵀŴŴᵀŴ) = ‖ŴᵀŴ‖_F².
So the n×n matrix of cosines is never needed: the m×m Gram ŴᵀŴ gives the sum exactly in O(n·m²), and the
diagonal (i = j) terms are Σᵢ‖ŵᵢ‖⁴ (= n when no row is zero). Likewise Σᵢⱼ pᵢpⱼ cos² = ‖ŴᵀPŴ‖_F²,
Σᵢⱼ cos = ‖Σᵢŵᵢ‖², and Σⱼ (wᵢ·wⱼ)² = wᵢᵀ(WᵀW)wᵢ. The centred statistic is the same identity on the normalised
rows of W − 1w̄ᵀ (one more (n, m) copy, still never n×n). Only statistics that are not sums of squares (mean |cos|,
max |cos|, histograms) need pairs; those are chunked over row blocks and meant to run rarely.

Everything is computed in float64: cos² values are ~1/m and the identity subtracts n from ~n²/m, so float32
would lose the digits we care about. Functions are pure: tensors in, Python floats (or tensors) out.
"""
from __future__ import annotations

import math

import torch

from widthlab import WidthlabError

EPS = 1e-12  # rows with ‖w‖ < EPS count as zero (set to 0); other rows are divided by ‖w‖ exactly (no +ε)


# --- building blocks ------------------------------------------------------------------------------------
def _check(W: torch.Tensor) -> torch.Tensor:
    if W.dim() != 2:
        raise WidthlabError(f"expected a 2-D matrix (n, m), got shape {tuple(W.shape)}")
    if W.shape[0] < 2:
        raise WidthlabError(f"need at least 2 rows to form pairs, got {W.shape[0]}")
    return W


def _f64(W: torch.Tensor) -> torch.Tensor:
    return _check(W).detach().to(torch.float64)


def normalize_rows(W: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """W: (n, m) → Ŵ: (n, m) float64 with unit rows; zero rows stay zero (so they contribute cos = 0)."""
    return _normalize(W, eps)[0]


def _normalize(W: torch.Tensor, eps: float = EPS, centre: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (Ŵ (n, m) float64, ‖ŵᵢ‖² (n,): 1 for real rows, 0 for zero rows). One float64 copy, scaled in place
    (for a 50257×768 head this halves the time outside the Gram matmul). centre=True subtracts the mean row
    first (in float64, so the rows' small differences survive a large shared component); a centred row shorter
    than EPS × the longest row is cancellation noise and counts as zero."""
    X = W.detach().to(torch.float64, copy=True)
    if centre:
        eps = max(eps, EPS * X.norm(dim=1).max().item())
        X.sub_(X.mean(0))
    r = X.norm(dim=1)
    real = r >= eps
    X.mul_(torch.where(real, 1.0 / r.clamp_min(eps), 0.0)[:, None])  # rows under eps become exactly zero
    return X, real.to(X.dtype)


def row_norms(W: torch.Tensor) -> torch.Tensor:
    """W: (n, m) → (n,) float64 Euclidean row norms."""
    return W.detach().to(torch.float64).norm(dim=1)


def welch_bound(n: int, m: int) -> float:
    """Mean-square Welch bound W(n,m) = (n−m)/(m(n−1)): the least possible mean cos² of n unit vectors in Rᵐ."""
    return max(n - m, 0) / (m * (n - 1))


def welch_max_bound(n: int, m: int) -> float:
    """Welch bound on coherence: max_{i≠j} |cos_ij| ≥ sqrt((n−m)/(m(n−1)))."""
    return math.sqrt(welch_bound(n, m))


def _cos2_from_normalized(Wh: torch.Tensor, sq: torch.Tensor) -> float:
    n = Wh.shape[0]
    G = Wh.T @ Wh                                   # (m, m): the only O(n·m²) step
    return ((G.square().sum() - sq.square().sum()) / (n * (n - 1))).item()  # minus Σᵢ‖ŵᵢ‖⁴, the i = j terms


def _cos_from_normalized(Wh: torch.Tensor, sq: torch.Tensor) -> float:
    n = Wh.shape[0]
    s = Wh.sum(0)
    return ((s @ s - sq.sum()) / (n * (n - 1))).item()


def _weighted_cos2_from_normalized(Wh: torch.Tensor, sq: torch.Tensor, p: torch.Tensor) -> float:
    p = p.detach().to(Wh)
    if p.shape != (Wh.shape[0],):
        raise WidthlabError(f"weights p have shape {tuple(p.shape)} but W has {Wh.shape[0]} rows; "
                            f"pass one weight per (real, unpadded) row")
    Ws = Wh * p.sqrt()[:, None]                     # ŴᵀPŴ = (P^½Ŵ)ᵀ(P^½Ŵ), p ≥ 0
    G = Ws.T @ Ws
    diag = (p * sq).square().sum()                  # Σᵢ pᵢ² ‖ŵᵢ‖⁴
    den = p.sum().square() - p.square().sum()       # Σ_{i≠j} pᵢpⱼ
    return ((G.square().sum() - diag) / den).item()


def _singular_values(W: torch.Tensor) -> torch.Tensor:
    # σ² are the eigenvalues of the m×m Gram: O(n·m²) and ~2× cheaper than an SVD of the tall matrix. Their
    # absolute error is ~eps·σ_max², so a zero σ would come back as ~1e-8·σ_max and inflate erank of a
    # rank-deficient W; eigenvalues under the usual rank tolerance (max(n, m)·eps, as numpy's matrix_rank,
    # here on σ²) are set to exactly zero. Returns (m,) in descending order.
    G = W.T @ W
    if G.device.type == "cpu":  # MKL's threaded eigensolver on a small m×m matrix, with the cores busy, ran
        n_threads = torch.get_num_threads()  # ~2000× slower than one thread (1.15 s vs 0.5 ms, m = 128)
        torch.set_num_threads(1)
        try:
            lam = torch.linalg.eigvalsh(G).flip(0)
        finally:
            torch.set_num_threads(n_threads)
    else:
        lam = torch.linalg.eigvalsh(G).flip(0)
    tol = lam[0] * max(W.shape) * torch.finfo(W.dtype).eps
    return torch.where(lam > tol, lam, torch.zeros_like(lam)).sqrt()


def _erank_from_sv(s: torch.Tensor) -> float:
    q = s / s.sum()
    q = q[q > 0]
    return math.exp(-(q * q.log()).sum().item())


# --- public scalars (W: (n, m), any dtype/device; computed in float64) ----------------------------------
def mean_cos2(W: torch.Tensor) -> float:
    """Mean of cos² over the n(n−1) ordered pairs i ≠ j, exact via ‖ŴᵀŴ‖_F²."""
    return _cos2_from_normalized(*_normalize(_check(W)))


def mean_cos2_centred(W: torch.Tensor) -> float:
    """mean_cos2 of the rows after subtracting the mean row, then normalising; exact via the Gram identity.
    A row equal to the mean becomes zero and counts cos = 0, like a zero row in mean_cos2."""
    return _cos2_from_normalized(*_normalize(_check(W), centre=True))


def kappa(W: torch.Tensor) -> float:
    """m · mean_cos2: 1 for random isotropic rows, m·W(n,m) < 1 for a tight frame."""
    return W.shape[1] * mean_cos2(W)


def welch_ratio(W: torch.Tensor) -> float:
    """mean_cos2 / W(n,m): 1 = tight frame, the least interference possible. NaN when n ≤ m (floor is 0)."""
    n, m = W.shape
    wb = welch_bound(n, m)
    return mean_cos2(W) / wb if wb > 0 else float("nan")


def mean_cos(W: torch.Tensor) -> float:
    """Mean signed cosine over pairs i ≠ j, (‖Σŵᵢ‖² − n)/(n(n−1)); 1 when all rows point the same way."""
    return _cos_from_normalized(*_normalize(_check(W)))


def weighted_cos2(W: torch.Tensor, p: torch.Tensor) -> float:
    """Σ_{i≠j} pᵢpⱼ cos² / Σ_{i≠j} pᵢpⱼ, p: (n,) non-negative weights (need not sum to 1)."""
    return _weighted_cos2_from_normalized(*_normalize(_check(W)), p)


def phi_half(W: torch.Tensor) -> float:
    """Fraction of rows with ‖wᵢ‖ > 1/2: Liu, Liu & Gore's φ½ (Eq. 3), absolute threshold as in the paper."""
    return (row_norms(_f64(W)) > 0.5).double().mean().item()


def phi_half_rel(W: torch.Tensor) -> float:
    """Fraction of rows whose norm exceeds half the RMS row norm: φ½ made scale-free, for LM matrices whose
    norms are set by the init scale, not by a decay that pulls rows to norm 1."""
    r = row_norms(_f64(W))
    return (r > 0.5 * r.square().mean().sqrt()).double().mean().item()


def norm_cv(W: torch.Tensor) -> float:
    """Coefficient of variation of the row norms, std/mean (population std)."""
    r = row_norms(_f64(W))
    return (r.std(unbiased=False) / r.mean()).item()


def erank(W: torch.Tensor) -> float:
    """Effective rank exp(entropy of σ/Σσ): between 1 and min(n, m)."""
    return _erank_from_sv(_singular_values(_f64(W)))


def stable_rank(W: torch.Tensor) -> float:
    """‖W‖_F² / σ_max²: a smooth lower bound on the rank."""
    W = _f64(W)
    s = _singular_values(W)
    return (W.square().sum() / s[0].square()).item()


# --- per-token and pairwise statistics ------------------------------------------------------------------
def token_dimensionality(W: torch.Tensor, block_rows: int = 8192) -> torch.Tensor:
    """D_i = ‖wᵢ‖⁴ / Σⱼ (wᵢ·wⱼ)² for each row, W: (n, m) → (n,) float64 (0 for zero rows).

    Uses Σⱼ (wᵢ·wⱼ)² = wᵢᵀ(WᵀW)wᵢ, so it is exact in O(n·m²); rows are processed in blocks only to bound
    the (block, m) temporary. Σᵢ D_i ≤ rank(W), with equality for orthogonal rows of equal norm."""
    W = _f64(W)
    G = W.T @ W
    out = torch.empty(W.shape[0], dtype=torch.float64, device=W.device)
    for a in range(0, W.shape[0], block_rows):
        Wa = W[a:a + block_rows]
        den = ((Wa @ G) * Wa).sum(1)
        num = (Wa * Wa).sum(1).square()
        out[a:a + block_rows] = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
    return out


def pair_stats(W: torch.Tensor, block_rows: int = 8192) -> dict[str, float]:
    """Over all n(n−1)/2 pairs i < j, in row blocks (the paper's `overlap-0.py` method, float64 throughout):
    mean |cos| (the paper's statistic), mean cos² (to check against the Gram value) and max |cos| (coherence).
    Cost O(n²·m) time, O(block_rows²) memory: call it rarely."""
    Wh = normalize_rows(_check(W))
    n = Wh.shape[0]
    s_abs = s_sq = 0.0
    mx = 0.0
    for a in range(0, n, block_rows):
        A = Wh[a:a + block_rows]
        for b in range(a, n, block_rows):
            C = A @ Wh[b:b + block_rows].T
            half = 1.0
            if a == b:  # diagonal block is symmetric: zero the i = j terms and count each pair once
                C.fill_diagonal_(0.0)
                half = 0.5
            Ca = C.abs()
            s_abs += half * Ca.sum().item()
            s_sq += half * C.square().sum().item()
            mx = max(mx, Ca.max().item())
    npairs = n * (n - 1) / 2
    return {"mean_abs_cos": s_abs / npairs, "mean_cos2": s_sq / npairs, "max_abs_cos": mx}


def cos_sample(W: torch.Tensor, n_pairs: int = 20000, seed: int = 0) -> torch.Tensor:
    """cos_ij of n_pairs random ordered pairs i ≠ j (uniform, with replacement), for histograms: (n_pairs,).
    Seeded with its own generator so successive histograms compare the same pairs."""
    Wh = normalize_rows(_f64(W))
    n = Wh.shape[0]
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (n_pairs,), generator=g)
    j = (i + torch.randint(1, n, (n_pairs,), generator=g)) % n  # offset in [1, n) makes j ≠ i, still uniform
    i, j = i.to(Wh.device), j.to(Wh.device)
    return (Wh[i] * Wh[j]).sum(1)


# --- everything at once, sharing the normalisation, the Gram and the spectrum ---------------------------
def summary(W: torch.Tensor, p: torch.Tensor | None = None, pairs: bool = False,
            block_rows: int = 8192) -> dict[str, float]:
    """All scalar statistics of W: (n, m) as {name: float}, names as in the table at the top of this module.

    Always: mean_cos2, mean_cos2_centred, kappa, welch_ratio, mean_cos, phi_half, phi_half_rel, norm_cv, erank,
    stable_rank.
    weighted_cos2 only when weights p: (n,) are given (with uniform p it would just repeat mean_cos2).
    pairs=True adds mean_abs_cos, max_abs_cos and welch_max_bound (O(n²·m), chunked)."""
    W = _f64(W)
    n, m = W.shape
    Wh, sq = _normalize(W)
    c2 = _cos2_from_normalized(Wh, sq)
    wb = welch_bound(n, m)
    r = W.norm(dim=1)
    s = _singular_values(W)
    out = {
        "mean_cos2": c2,
        "mean_cos2_centred": _cos2_from_normalized(*_normalize(W, centre=True)),
        "kappa": m * c2,
        "welch_ratio": c2 / wb if wb > 0 else float("nan"),
        "mean_cos": _cos_from_normalized(Wh, sq),
        "phi_half": (r > 0.5).double().mean().item(),
        "phi_half_rel": (r > 0.5 * r.square().mean().sqrt()).double().mean().item(),
        "norm_cv": (r.std(unbiased=False) / r.mean()).item(),
        "erank": _erank_from_sv(s),
        "stable_rank": (W.square().sum() / s[0].square()).item(),
    }
    if p is not None:
        out["weighted_cos2"] = _weighted_cos2_from_normalized(Wh, sq, p)
    if pairs:
        ps = pair_stats(W, block_rows)
        out.update(mean_abs_cos=ps["mean_abs_cos"], max_abs_cos=ps["max_abs_cos"],
                   welch_max_bound=welch_max_bound(n, m))
    return out
