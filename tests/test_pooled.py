"""The curve-free verdict at equal width: seedtests.pooled_delta's interval against its coverage on synthetic sweeps
with known truth (under the seed structures a two-way model gets wrong), its invariances and refusals, and its place
in `compare`'s report."""
import numpy as np
import pytest

from test_compare import make_sweep
from widthlab.scaling.report import compare
from widthlab.scaling.seedtests import pooled_delta

WIDTHS = [8, 16, 24, 32, 48]
SD = dict(zip(WIDTHS, [0.009, 0.0015, 0.002, 0.005, 0.002]))  # stage-2 PTB seed sds: 6× apart across widths
DELTA = np.array([0.03, 0.01, -0.01, 0.0, 0.02])               # per-width truth; the target is its mean


def draw(rng, arm_scale=1.0, own_seed=0.0, base_seeds=(0, 1, 2), arm_seeds=(0, 1), per_width=False):
    """Stage-2-like sweeps: a seed's effect shared by both sides (sd 0.004; drawn afresh at each width when
    per_width), an effect only the arm's runs of a seed have (sd own_seed), per-width noise 6× apart."""
    shared = rng.normal(0, 0.004, (len(WIDTHS), 3)) if per_width else np.tile(rng.normal(0, 0.004, 3), (5, 1))
    own = rng.normal(0, own_seed, 3)
    curve = {w: 4 - 0.3 * np.log(w) for w in WIDTHS}
    base = {w: {s: curve[w] + shared[i, s] + rng.normal(0, SD[w]) for s in base_seeds} for i, w in enumerate(WIDTHS)}
    arm = {w: {s: curve[w] + DELTA[i] + shared[i, s] + own[s] + rng.normal(0, arm_scale * SD[w]) for s in arm_seeds}
           for i, w in enumerate(WIDTHS)}
    return arm, base


@pytest.mark.parametrize("kw", [{}, {"arm_scale": 2.0}, {"own_seed": 0.004}, {"own_seed": 0.02},
                                {"per_width": True}, {"arm_seeds": (0, 1, 2)}])
def test_pooled_interval_covers_the_mean_difference(kw):
    # 2 arm seeds against 3 baseline seeds at 5 widths, seed sd 6× apart across widths; an arm twice as noisy as
    # the baseline; an arm-only seed effect as large as the shared one, and 5× larger; seed effects that differ by
    # width; 3 arm seeds. The interval is exact in every case (a referee found a two-way model's 0.83–0.90 in the
    # third). 95 % nominal; 600 sweeps: MC se 0.009.
    rng = np.random.default_rng(7)
    reps, hit = 600, 0
    for _ in range(reps):
        r = pooled_delta(*draw(rng, **kw))
        hit += r.lo <= DELTA.mean() <= r.hi
    assert 0.925 <= hit / reps <= 0.975, hit / reps


def test_pooled_finds_a_real_effect():
    # 0.05 nats at every width, two seeds: found nearly always; 0.01 with three seeds: found most of the time.
    rng = np.random.default_rng(3)
    found = {2: 0, 3: 0}
    for _ in range(200):
        for n, eff in ((2, 0.05), (3, 0.01)):
            arm, base = draw(rng, arm_seeds=tuple(range(n)))
            arm = {w: {s: v - DELTA[i] - eff for s, v in arm[w].items()} for i, w in enumerate(WIDTHS)}
            r = pooled_delta(arm, base)
            found[n] += r.p < 0.05 and r.diff < 0
    assert found[2] >= 170 and found[3] >= 120, found


def test_pooled_invariances_and_refusals():
    rng = np.random.default_rng(0)
    arm, base = draw(rng)
    r = pooled_delta(arm, base)
    assert r.seeds == [0, 1] and r.dof == 1 and r.widths == WIDTHS
    # a constant added to every run of the arm moves the estimate by exactly that constant, the interval with it
    r2 = pooled_delta({w: {s: v + 0.1 for s, v in c.items()} for w, c in arm.items()}, base)
    assert r2.diff == pytest.approx(r.diff + 0.1, abs=1e-12) and r2.hi - r2.lo == pytest.approx(r.hi - r.lo)
    # a seed's shift common to both sides, whether or not it differs by width, cancels: nothing changes
    shift = {w: {0: 0.05 * i, 1: -0.02, 2: 0.01} for i, w in enumerate(WIDTHS)}
    sh = lambda cells: {w: {s: v + shift[w][s] for s, v in c.items()} for w, c in cells.items()}  # noqa: E731
    r3 = pooled_delta(sh(arm), sh(base))
    assert r3.diff == pytest.approx(r.diff, abs=1e-12) and r3.lo == pytest.approx(r.lo, abs=1e-12)
    # with the same seeds on both sides the estimate is the plain mean of cell-mean differences
    arm2, base2 = draw(np.random.default_rng(1), base_seeds=(0, 1), arm_seeds=(0, 1))
    plain = np.mean([np.mean(list(arm2[w].values())) - np.mean(list(base2[w].values())) for w in WIDTHS])
    assert pooled_delta(arm2, base2).diff == pytest.approx(plain, abs=1e-12)
    # fewer than two seeds run by both sides at every shared width: no test (disjoint seeds, or one missing cell)
    assert pooled_delta({8: {3: 1.0, 4: 1.1}}, {8: {0: 1.0, 1: 1.1, 2: 1.2}}) is None
    gap = {w: dict(c) for w, c in arm.items()}
    del gap[16][1]
    assert pooled_delta(gap, base) is None
    # a third seed at some widths only (a sweep part-way through adding it): the test keeps to the seeds run at
    # every shared width, so the extra runs change nothing until they cover all widths
    part = {w: {**c, 2: c[0] + 0.5} if w in (8, 16) else dict(c) for w, c in arm.items()}
    rp = pooled_delta(part, base)
    assert rp.seeds == [0, 1] and rp.dof == 1 and (rp.diff, rp.lo, rp.hi) == pytest.approx((r.diff, r.lo, r.hi))
    # ... and likewise a baseline that lacks one of those seeds at one width drops that seed everywhere
    thin = {w: {s: v for s, v in c.items() if not (w == 24 and s == 2)} for w, c in base.items()}
    full3, _ = draw(np.random.default_rng(2), arm_seeds=(0, 1, 2))
    assert pooled_delta(full3, base).seeds == [0, 1, 2] and pooled_delta(full3, thin).seeds == [0, 1]
    # identical runs but for a constant: no scale to test on, so no p-value (not a 1e-127 "raises")
    same = pooled_delta({w: {s: v + 0.01 for s, v in c.items() if s < 2} for w, c in base.items()}, base)
    assert same.diff == pytest.approx(0.01) and np.isnan(same.p)


def test_compare_gives_the_pooled_verdict(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")  # "packed" is the baseline at 1.3× the width: lower loss everywhere
    res = compare(str(sweep), n_boot=10)
    v = res["pooled"]["packed"]
    assert v["word"] == "lowers" and v["hi"] < 0 and v["widths"] == [32, 64, 128, 256]
    assert v["same_cost"]  # make_sweep gives both arms the same params and FLOPs
    assert "at equal width (m = 32/64/128/256) it lowers the loss" in (sweep / "report.md").read_text()
