"""Statistics that know about selection: on synthetic sweeps with a known null (every grid value of an idea has the
baseline's true loss at every width), selecting a value on a tuning seed and judging it on fresh confirmation seeds
keeps compare's false "lowers" rate at its level; a confirmation that reuses the tuning seed, or judging the runs
that chose the value, does not.

Runs are keyed by seed as real ones are: a seed fixes the initialisation and data order, so its effect is shared by
every arm at that seed and width, and a configuration (arm, width, seed) is one deterministic run — a confirmation
that lists the tuning seed re-runs, i.e. reproduces, the very runs that chose the winner. (A referee's finding,
session 9: the first version drew the confirmation runs independently of the tuning runs, so no leak could show.)
The rule is selection_rule.select_idea's and the verdict seedtests.pooled_verdicts' (seedtests.pooled_delta's paired t over
seeds, Holm over arms, the lowers/raises words): the level tests use a vectorised copy of both, checked equal to the
code's own on every draw of test_the_simulation_uses_the_codes_own_rule_and_verdict. The false rate does not depend
on the noise sizes (a seed's effect cancels in the selection and in the paired difference; the rest scales), so
0.01 nats stands for the committed ≈ 0.004–0.006."""
import math

import numpy as np
import pytest
from scipy import stats

from widthlab import WidthlabError
from widthlab.scaling.inference import Design
from widthlab.scaling.seedtests import pooled_verdicts as _pooled
from widthlab.scaling.selection import selections
from widthlab.selection_rule import select_idea
from widthlab.tuning import grid_points

WIDTHS = [8, 16, 24, 32, 48]
TUNING_W = [0, 2]                                   # indices of d = 8 and 24, the tuning widths
TUNING, FRESH = [10], [20, 21, 22]                  # recipes/ptb_narrow_tune.yaml's seed, ptb_narrow_confirm.yaml's
MU = np.array([5.00, 4.70, 4.55, 4.45, 4.30])       # every arm's true loss: the null
SEED_SD, RUN_SD = 0.01, 0.01                        # a seed's effect shared by arms (data order), and a run's own
IDEA = {"model.interventions": [{"class_path": "widthlab.interventions.signed_decay.SignedRowDecay",
                                 "init_args": {"gamma": -1.0}}],
        "grid": {"model.interventions.0.init_args.gamma": [-0.1, -0.3, -1.0, -3.0]}}


def null_sweeps(n: int, values: int, seeds: list[int], rng) -> tuple[np.ndarray, np.ndarray]:
    """n sweeps' runs at every width for `seeds` (in that order): the baseline's (n, S, W) and each grid value's
    (n, values, S, W)."""
    shared = rng.normal(0, SEED_SD, (n, len(seeds), len(WIDTHS)))
    base = MU + shared + rng.normal(0, RUN_SD, shared.shape)
    return base, MU + shared[:, None] + rng.normal(0, RUN_SD, (n, values, len(seeds), len(WIDTHS)))


def winners(vals: np.ndarray, seeds: list[int]) -> np.ndarray:
    """The rule: the value with the lowest mean over the tuning widths of each width's mean over the tuning seeds."""
    return vals[:, :, [seeds.index(s) for s in TUNING]][..., TUNING_W].mean(axis=(2, 3)).argmin(axis=1)


def lowers(arm: np.ndarray, base: np.ndarray) -> np.ndarray:
    """compare's curve-free verdict "lowers" for one arm, (n, S, W) each: a paired t over seeds of the mean over
    widths, two-sided p < 0.05 (Holm over one arm is the p itself) and a negative mean."""
    d = (arm - base).mean(axis=-1)
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]))
    return (2 * stats.t.sf(np.abs(t), d.shape[1] - 1) < 0.05) & (t < 0)


def false_lowers(n: int, confirm: list[int], rng, same_runs: bool = False, values: int = 4) -> float:
    """The fraction of n null sweeps in which the selected value is called "lowers" on the `confirm` seeds.
    same_runs: the value is chosen by its mean over the very runs it is then judged on."""
    seeds = sorted(set(TUNING) | set(confirm))
    base, vals = null_sweeps(n, values, seeds, rng)
    ic = [seeds.index(s) for s in confirm]
    won = vals[:, :, ic].mean(axis=(2, 3)).argmin(axis=1) if same_runs else winners(vals, seeds)
    return float(lowers(vals[np.arange(n), won][:, ic], base[:, ic]).mean())


def test_the_simulation_uses_the_codes_own_rule_and_verdict():
    rng = np.random.default_rng(9)
    seeds = TUNING + FRESH
    base, vals = null_sweeps(300, 4, seeds, rng)
    vals += rng.uniform(-0.02, 0.02, (300, 1, 1, 1))  # some real effects, so both verdicts occur
    names = [name for name, _, _ in grid_points("decay", IDEA)]
    won = winners(vals, seeds)
    ic = [seeds.index(s) for s in FRESH]
    ours = lowers(vals[np.arange(300), won][:, ic], base[:, ic])
    rule = {"widths": [WIDTHS[j] for j in TUNING_W], "tie": 0.0, "loss": "val_loss_best", "from": "sim"}
    for i in range(300):
        cells = {(a, w): {s: float(vals[i, k, seeds.index(s), j]) for s in TUNING}
                 for k, a in enumerate(names) for j, w in enumerate(WIDTHS)}
        got = select_idea("decay", IDEA, {"seeds": TUNING}, cells, rule, {})
        assert got["winner"] == names[won[i]]
        judged = {(arm, float(w)): {s: float(x[seeds.index(s), j]) for s in FRESH}
                  for arm, x in (("baseline", base[i]), ("tuned", vals[i, won[i]])) for j, w in enumerate(WIDTHS)}
        assert (_pooled(Design("baseline", ["baseline", "tuned"], judged, {}))["tuned"]["word"] == "lowers") == ours[i]
    assert 0 < ours.sum() < 300
    # A baseline on other seeds than the winner (not paired) gives no curve-free verdict at all, never a false one.
    unpaired = {**{("baseline", float(w)): {s: 4.0 + 0.01 * s for s in (0, 1, 2)} for w in WIDTHS},
                **{("tuned", float(w)): {s: 3.0 + 0.01 * s for s in FRESH} for w in WIDTHS}}
    assert "tuned" not in _pooled(Design("baseline", ["baseline", "tuned"], unpaired, {}))


@pytest.mark.parametrize("seeds", [2, 3])
def test_selection_then_confirmation_keeps_the_false_lowers_rate(seeds):
    n = 40_000
    rng = np.random.default_rng(26 + seeds)
    se = np.sqrt(0.025 * 0.975 / n)  # Monte-Carlo error at the nominal rate, 0.0008
    # A two-sided test at 0.05 says "lowers" falsely 2.5 % of the time (exact: the D_s are normal). Fresh seeds keep
    # it: measured 0.0247 with 2 seeds, 0.0255 with 3 (± 0.0008).
    confirmed = false_lowers(n, FRESH[:seeds], rng)
    assert abs(confirmed - 0.025) <= 4 * se
    # The leak the confirmation refuses: one of its seeds is the tuning seed, so its runs of the winner at d = 8 and
    # 24 are the very runs that chose it. Measured 0.0375 with 2 seeds, 0.0359 with 3: 14–16 Monte-Carlo errors up.
    leaked = false_lowers(n, TUNING + FRESH[:seeds - 1], rng)
    assert leaked >= 0.025 + 6 * se
    # Judging the runs that chose the value: the best of four looks better than it is (measured 0.0511, 0.0578).
    same = false_lowers(n, FRESH[:seeds], rng, same_runs=True)
    assert same >= 0.045 and same >= leaked + 6 * se


def test_compare_never_judges_tuning_runs(tmp_path):
    (tmp_path / "sweep.json").write_text('{"arms": {"z": {"grid": {"model.lr": [0.01, 0.02]}}}}')
    with pytest.raises(WidthlabError, match="is a tuning sweep"):
        selections([str(tmp_path)])
    with pytest.raises(WidthlabError, match="is a tuning sweep"):  # with the confirmation beside it, too
        selections(["docs/results/ptb_id_lr_scan", str(tmp_path / "results.csv")])


def test_the_holm_family_is_the_pre_registered_one_whatever_the_data():
    """A confirmation names its family (select.family): Holm runs over all of it, a member without a test yet
    counting as p = 1, so a partial compare cannot shrink the family and flatter the first verdicts (a referee's
    point, session 10); its verdicts say they are provisional. A member with a diverged run counts as failing."""
    from widthlab.scaling.selection import holm_family
    rng = np.random.default_rng(4)
    cells = {("baseline", float(w)): {s: 4.0 + 0.01 * rng.normal() for s in FRESH} for w in WIDTHS}
    cells.update({("a@x=1", float(w)): {s: v - 0.006 + 0.002 * rng.normal() for s, v in cells[("baseline", float(w))]
                                        .items()} for w in WIDTHS})
    d = Design("baseline", ["baseline", "a@x=1"], cells, {})
    alone = _pooled(d)["a@x=1"]                                   # no family: Holm over the one arm with a test
    rec = [{"family": ["a", "b", "c"], "ideas": {"a": {"winner": "a@x=1"}}}]
    fam, failed = holm_family(rec, [])
    assert fam == ["a@x=1", "b", "c"] and failed == {}
    judged = _pooled(d, None, fam, failed)["a@x=1"]
    assert judged["p_holm"] == pytest.approx(min(1.0, 3 * alone["p"])) and alone["p_holm"] == alone["p"]
    assert judged["family"] == {"size": 3, "with_verdict": 1}
    from widthlab.scaling.markdown import pooled_text
    assert "[provisional: 1 of the 3 ideas of its Holm family have a test or a diverged run" in pooled_text(judged,
                                                                                                       0.005)
    assert holm_family(rec + rec, [])[0] == fam  # two compared sweeps with the same selection: each idea once
    runs = [{"arm": "a@x=1", "d_model": 48, "seed": 21, "_why": "diverged at step 900"}]
    fam, failed = holm_family(rec, runs)
    out = _pooled(d, None, fam, failed)["a@x=1"]
    assert out["word"] == "diverged" and "counts as failing on (a run diverged: diverged at step 900 at d = 48" in \
        pooled_text(out, 0.005)
    # A diverged member is settled: with the other two tested, nothing is provisional any more.
    cells.update({(a, float(w)): {s: v + 0.001 * rng.normal() for s, v in cells[("baseline", float(w))].items()}
                  for a in ("b@x=1", "c@x=1") for w in WIDTHS})
    d3 = Design("baseline", ["baseline", "a@x=1", "b@x=1", "c@x=1"], cells, {})
    fam, failed = holm_family([{**rec[0], "ideas": {i: {"winner": f"{i}@x=1"} for i in "abc"}}], runs)
    out = _pooled(d3, None, fam, failed)
    assert all(out[a]["family"] == {"size": 3, "with_verdict": 3} for a in fam)
    assert "provisional" not in pooled_text(out["b@x=1"], 0.005)
    # A member whose seeds all give the same difference has no usable p: "unavailable", not "does not change".
    cells.update({("b@x=1", float(w)): {s: v + 0.003 for s, v in cells[("baseline", float(w))].items()}
                  for w in WIDTHS})
    out = _pooled(Design("baseline", ["baseline", "a@x=1", "b@x=1", "c@x=1"], cells, {}), None, fam, failed)
    assert math.isnan(out["b@x=1"]["p"]) and out["b@x=1"]["word"] == "unavailable"
