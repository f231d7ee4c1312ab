"""scaling/fit.py against synthetic curves whose A, α, E and multipliers are known."""
import numpy as np
import pytest
from scipy import stats

from widthlab.scaling.fit import (bootstrap_scaling, effective_width, fit_loglog, fit_scaling,
                                  interpolated_equivalent, multipliers, welch_t, width_multiplier)

WIDTHS = np.array([32, 64, 128, 256, 512])
A, ALPHA, E, K = 30.0, 0.9, 3.0, 1.3


def sweep(seeds=3, k=K, widths=WIDTHS):
    """Rows of a 2-arm sweep; the 'packed' arm is the baseline at width k·m: A_arm = A·k^-α."""
    m = np.tile(np.repeat(widths, seeds), 2).astype(float)
    arm = np.repeat(["baseline", "packed"], len(widths) * seeds).astype(object)
    L = np.where(arm == "baseline", A, A * k ** -ALPHA) * m ** -ALPHA + E
    return m, L, arm


def test_exact_recovery_and_k_inversion():
    m, L, arm = sweep()
    f = fit_scaling(m, L, arm)
    assert f.alpha["baseline"] == pytest.approx(ALPHA, rel=1e-6) and f.E == pytest.approx(E, rel=1e-6)
    assert f.A["baseline"] == pytest.approx(A, rel=1e-5) and f.k["packed"] == pytest.approx(K, rel=1e-6)
    # the inversion itself is exact: the arm's curve at m is the baseline's at K·m
    L_arm = A * K ** -ALPHA * WIDTHS ** -ALPHA + E
    np.testing.assert_allclose(width_multiplier(WIDTHS, L_arm, A, ALPHA, E), K, rtol=1e-9)
    np.testing.assert_allclose(effective_width(A * WIDTHS ** -ALPHA + E, A, ALPHA, E), WIDTHS, rtol=1e-9)
    d = multipliers(f, m, L, arm)
    assert all(d[f"k_m/packed/{w}"] == pytest.approx(K, rel=1e-6) for w in WIDTHS)


def test_interpolated_equivalent_needs_no_power_law():
    # On a curve linear in log x the interpolation is exact: L = 5 − 0.3·ln x, so L − c sits at x·e^(c/0.3).
    x = np.array([64.0, 128.0, 256.0])
    L = 5 - 0.3 * np.log(x)
    for m, c in ((64.0, 0.1), (100.0, 0.05), (128.0, 0.2)):
        x_eq, kind = interpolated_equivalent(x, L, 5 - 0.3 * np.log(m) - c)
        assert kind == "" and x_eq == pytest.approx(m * np.exp(c / 0.3), rel=1e-12)
    assert interpolated_equivalent(x, L, L[1]) == (128.0, "")          # a measured point maps to itself
    assert interpolated_equivalent(x, L, L[-1] - 0.01) == (256.0, ">")  # beats the widest: a lower bound
    assert interpolated_equivalent(x, L, L[0] + 0.01) == (64.0, "<")    # worse than the narrowest: upper bound
    assert interpolated_equivalent(x, L, np.nan)[1] == "nan"
    # a non-monotone baseline (the widest trained worse) is made monotone: it defines no new loss level
    L_bad = np.array([4.8, 4.6, 4.7])
    assert interpolated_equivalent(x, L_bad, 4.7) == pytest.approx((64 * 2 ** 0.5, ""))
    assert interpolated_equivalent(x, L_bad, 4.59) == (256.0, ">")
    # order of the inputs does not matter
    assert interpolated_equivalent(x[::-1], L[::-1], L[0] - 0.1) == interpolated_equivalent(x, L, L[0] - 0.1)


def test_interpolated_multipliers_close_to_the_truth_inside_the_range():
    m, L, arm = sweep(seeds=1)
    d = multipliers(fit_scaling(m, L, arm), m, L, arm, C=6 * m ** 2)
    # the packed arm at m equals the baseline at 1.3·m: inside the range the monotone cubic is within 3 % of
    # that on a power law sampled at doublings; at the widest width only a bound exists (NaN here)
    for w in WIDTHS[:-1]:
        assert d[f"k_int/packed/{w}"] == pytest.approx(K, rel=0.03)
        assert d[f"k_intC/packed/{w}"] == pytest.approx(K ** 2, rel=0.06)  # FLOPs ∝ m²: k_C = k²
    assert np.isnan(d[f"k_int/packed/{WIDTHS[-1]}"]) and d["k_int/baseline/64"] == 1.0


def test_free_alpha_and_fixed_E():
    m, L, arm = sweep()
    L = np.where(arm == "packed", 25.0 * m ** -0.7 + E, L)  # a different exponent for the arm
    f = fit_scaling(m, L, arm, shared_alpha=False)
    assert f.alpha["packed"] == pytest.approx(0.7, rel=1e-4) and f.alpha["baseline"] == pytest.approx(ALPHA, rel=1e-4)
    assert f.rss < 1e-12
    g = fit_scaling(WIDTHS, 7.0 * WIDTHS ** -0.5, fix_E=True)
    assert g.E == 0 and g.alpha["baseline"] == pytest.approx(0.5, rel=1e-6) and g.A["baseline"] == pytest.approx(7.0)


def test_noisy_fit_within_ci():
    m, L, arm = sweep()
    Ln = L + np.random.default_rng(1).normal(0, 0.01, len(L))
    b = bootstrap_scaling(m, Ln, arm, n_boot=200, seed=1)
    assert b.method == "cases" and b.n_ok == 200
    for key, truth in (("alpha", ALPHA), ("E", E), ("A/baseline", A), ("k/packed", K)):
        lo, hi = b.ci[key]
        assert lo <= truth <= hi, (key, b.est[key], lo, hi)
    assert abs(b.est["alpha"] - ALPHA) < 0.1 and abs(b.est["k/packed"] - K) < 0.05


def test_bootstrap_coverage():
    """90 % CIs cover the truth at roughly the nominal rate (few seeds make them a little narrow)."""
    m, L, arm = sweep(seeds=4, widths=WIDTHS[:4])
    hits, R = {"alpha": 0, "E": 0, "k/packed": 0}, 40
    truth = {"alpha": ALPHA, "E": E, "k/packed": K}
    for r in range(R):
        Ln = L + np.random.default_rng(100 + r).normal(0, 0.02, len(L))
        b = bootstrap_scaling(m, Ln, arm, n_boot=60, ci=0.9, seed=r)
        for key in hits:
            hits[key] += b.ci[key][0] <= truth[key] <= b.ci[key][1]
    for key, h in hits.items():
        assert 0.7 <= h / R <= 1.0, (key, h / R)


def test_single_seed_uses_residual_bootstrap():
    m, L, arm = sweep(seeds=1)
    b = bootstrap_scaling(m, L + np.random.default_rng(2).normal(0, 0.01, len(L)), arm, n_boot=50)
    assert b.method == "residuals" and b.ci["alpha"][1] > b.ci["alpha"][0]
    # measured-point multipliers are resampled about the measured losses, not the fitted curve, so their CIs are
    # centred on their own point estimates even where the curve misses a point (here the baseline at m = 128)
    L2 = np.where((arm == "baseline") & (m == 128), L + 0.05, L)
    b = bootstrap_scaling(m, L2, arm, n_boot=200)
    k, (lo, hi) = b.est["k_int/packed/32"], b.ci["k_int/packed/32"]
    assert abs(np.log(k) - (np.log(lo) + np.log(hi)) / 2) < 0.25 * (np.log(hi) - np.log(lo))


def test_k_N_k_C_and_loss_below_floor():
    m, L, arm = sweep()
    N = 100.0 * m ** 2            # the arm costs the same at each width, so k_N = (k·m)²/m² = k²
    C = 6 * N * 20 * N
    f = fit_scaling(m, L, arm)
    d = multipliers(f, m, L, arm, N=N, C=C)
    assert d["k_N/packed"] == pytest.approx(K ** 2, rel=1e-4) and d["k_C/packed"] == pytest.approx(K ** 4, rel=1e-4)
    # an arm that reaches below the fitted floor E: infinite multiplier, no crash
    L2 = np.where((arm == "packed") & (m == 512), E - 0.1, L)
    d2 = multipliers(f, m, L2, arm, N=N, C=C)
    assert np.isinf(d2["k_m/packed/512"]) and np.isinf(d2["k_C/packed"]) and np.isinf(d2["k_N/packed/512"])
    assert np.isinf(effective_width(E, A, ALPHA, E)) and np.isnan(effective_width(np.nan, A, ALPHA, E))
    b = bootstrap_scaling(m, L2, arm, N=N, C=C, n_boot=30)
    assert b.ci["k_C/packed"][1] == np.inf


def test_fit_loglog_recovers_slope():
    x = np.array([32, 64, 128, 256, 512.0])
    y = 1.2 * x ** -1.0 * np.exp(np.random.default_rng(3).normal(0, 0.03, len(x)))
    f = fit_loglog(x, y, n_boot=300, seed=0)
    assert abs(f.slope + 1) < 0.1 and f.ci[0] <= -1 <= f.ci[1] and f.stderr > 0 and f.n == 5
    exact = fit_loglog(x, 2 * x ** -0.5, n_boot=10)
    assert exact.slope == pytest.approx(-0.5) and exact.intercept == pytest.approx(np.log(2))


def test_welch_matches_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(3.0, 0.01, 3), rng.normal(3.02, 0.03, 5)
    w, ref = welch_t(a, b), stats.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic) and w.p == pytest.approx(ref.pvalue) and w.dof == pytest.approx(ref.df)
    assert w.diff == pytest.approx(a.mean() - b.mean())
    assert np.isnan(welch_t([1.0], b).p) and np.isnan(welch_t([1.0, 1.0], [2.0, 2.0]).t)


def test_bad_input():
    with pytest.raises(ValueError, match=">= 3 distinct"):
        fit_scaling([32, 64, 32], [4.0, 3.5, 4.1])
    with pytest.raises(ValueError, match="not among"):
        fit_scaling(WIDTHS, WIDTHS ** -1.0, ["a"] * 5)
