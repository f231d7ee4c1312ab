"""The curve-free verdict at equal width: seedtests.pooled_delta's interval against its coverage on synthetic sweeps
with known truth, its invariances, and its place in `compare`'s report."""
import numpy as np
import pytest

from test_compare import make_sweep
from widthlab.scaling.report import compare
from widthlab.scaling.seedtests import pooled_delta

WIDTHS = [8, 16, 24, 32, 48]
SD = dict(zip(WIDTHS, [0.009, 0.0015, 0.002, 0.005, 0.002]))  # stage-2 PTB seed sds: 6× apart across widths
DELTA = np.array([0.03, 0.01, -0.01, 0.0, 0.02])               # per-width truth; the target is its mean


def draw(rng, arm_scale=1.0, own_seed=0.0, base_seeds=(0, 1, 2), arm_seeds=(0, 1)):
    shared = rng.normal(0, 0.004, 3)      # what a seed's init and data order do, in both arms
    own = rng.normal(0, own_seed, 3)      # what it does only in the arm
    curve = {w: 4 - 0.3 * np.log(w) for w in WIDTHS}
    base = {w: {s: curve[w] + shared[s] + rng.normal(0, SD[w]) for s in base_seeds} for w in WIDTHS}
    arm = {w: {s: curve[w] + DELTA[i] + shared[s] + own[s] + rng.normal(0, arm_scale * SD[w]) for s in arm_seeds}
           for i, w in enumerate(WIDTHS)}
    return arm, base


@pytest.mark.parametrize("arm_scale,own_seed,lo", [(1.0, 0.0, 0.93), (2.0, 0.0, 0.92), (1.0, 0.002, 0.90)])
def test_pooled_interval_covers_the_mean_difference(arm_scale, own_seed, lo):
    # 2 arm seeds against 3 baseline seeds at 5 widths, seed sd 6× apart across widths, a shared seed effect;
    # an arm twice as noisy as the baseline; an arm-only seed effect half the shared one. 95 % nominal.
    rng = np.random.default_rng(7)
    reps, hit = 400, 0
    for _ in range(reps):
        r = pooled_delta(*draw(rng, arm_scale, own_seed))
        hit += r.lo <= DELTA.mean() <= r.hi
    assert lo <= hit / reps <= 0.985, hit / reps


def test_pooled_has_more_power_than_one_width():
    # A 0.01-nat improvement at every width with seed sd 0.005: found by the pooled test, not by a single width's
    # paired t on 1 dof.
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(100):
        arm, base = draw(rng)
        arm = {w: {s: v - DELTA[i] - 0.01 for s, v in arm[w].items()} for i, w in enumerate(WIDTHS)}
        r = pooled_delta(arm, base)
        found += r.p < 0.05 and r.diff < 0
    assert found >= 80


def test_pooled_invariances():
    rng = np.random.default_rng(0)
    arm, base = draw(rng)
    r = pooled_delta(arm, base)
    # a constant added to every run of the arm moves the estimate by exactly that constant, the interval with it
    r2 = pooled_delta({w: {s: v + 0.1 for s, v in c.items()} for w, c in arm.items()}, base)
    assert r2.diff == pytest.approx(r.diff + 0.1, abs=1e-12) and r2.hi - r2.lo == pytest.approx(r.hi - r.lo)
    # a seed's shift common to both arms and all widths is what the model removes: nothing changes
    shift = {0: 0.05, 1: -0.02, 2: 0.01}
    sh = lambda cells: {w: {s: v + shift[s] for s, v in c.items()} for w, c in cells.items()}  # noqa: E731
    r3 = pooled_delta(sh(arm), sh(base))
    assert r3.diff == pytest.approx(r.diff, abs=1e-12) and r3.lo == pytest.approx(r.lo, abs=1e-12)
    # with no seed effect and equal seeds on both sides the estimate is the plain mean of cell-mean differences
    arm, base = draw(np.random.default_rng(1), base_seeds=(0, 1), arm_seeds=(0, 1))
    plain = np.mean([np.mean(list(arm[w].values())) - np.mean(list(base[w].values())) for w in WIDTHS])
    assert pooled_delta(arm, base).diff == pytest.approx(plain, abs=1e-12)
    # no residual dof on a side: no test
    assert pooled_delta({8: {0: 1.0}}, {8: {0: 1.0, 1: 1.1}}) is None


def test_compare_gives_the_pooled_verdict(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")  # "packed" is the baseline at 1.3× the width: lower loss everywhere
    res = compare(str(sweep), n_boot=10)
    v = res["pooled"]["packed"]
    assert v["word"] == "lowers" and v["hi"] < 0 and v["widths"] == [32, 64, 128, 256]
    assert v["same_cost"]  # make_sweep gives both arms the same params and FLOPs
    assert "at equal width (m = 32/64/128/256) it lowers the loss" in (sweep / "report.md").read_text()
