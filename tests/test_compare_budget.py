"""compare under a token budget that follows the width (widthlab.plan.Budget, sweep.json's budget): runs of one
arm that differ only by the rule are compared, real mismatches refused, the rule and each point's tokens stated."""
import csv
import json
import math

import pytest
from test_compare import SEEDS, WIDTHS, make_sweep, power_law

from widthlab import WidthlabError
from widthlab.scaling.report import compare

def _budget_sweep(root, rule, steps_of, arms_by_rule=("baseline", "packed"), loss_of=power_law, alter=None):
    """A synthetic sweep whose runs' config.yaml hold the steps a budget rule gave each width, and whose sweep.json
    records the rule and each arm/width's settings (as widthlab.sweep writes them)."""
    import yaml

    def by_rule(row, w, arm):  # a run by the rule trained on what it gives its own params (compare checks it)
        if alter:
            alter(row, w, arm)
        if arm in arms_by_rule and "tokens_per_param" in rule:
            n = steps_of(w) * 2048
            row["tokens"], row["params_nonembed"] = n, round(n / rule["tokens_per_param"])
    make_sweep(root, loss_of=loss_of, alter=by_rule)
    points = {}
    for arm in ("baseline", "packed"):
        for w in WIDTHS:
            n = steps_of(w)
            if arm in arms_by_rule:
                points[f"{arm}/d{w}"] = {"trainer.max_steps": n, "model.warmup_steps": max(1, round(0.05 * n)),
                                         "tokens": n * 2048, "tokens_per_param": n * 2048 / (24 * w * w)}
            for s in SEEDS:
                cfg = {"trainer": {"max_steps": n if arm in arms_by_rule else 1000, "val_check_interval": 50},
                       "model": {"d_model": w, "n_layer": 2, "lr": 0.01,
                                 "warmup_steps": max(1, round(0.05 * n)) if arm in arms_by_rule else 50},
                       "data": {"source": "ptb", "vocab_size": 4096, "seq_len": 64, "batch_size": 32}}
                (root / arm / f"d{w}" / f"s{s}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "sweep.json").write_text(json.dumps({"name": root.name, "budget": {"rule": rule, "points": points}}))
    return root


RULE = {"tokens_per_param": 20, "params": "non_embedding", "warmup_frac": 0.05}


def test_budget_sweep_compares_across_lengths_and_states_the_rule(tmp_path):
    """Widths trained for different steps by the rule compare (the fit is the plain one) and the report states the
    rule and each point's tokens and tokens/param; the same runs without the rule's record are refused as today."""
    steps = lambda w: math.ceil(20 * 24 * w * w / 2048)  # noqa: E731
    sweep = _budget_sweep(tmp_path / "sweep", RULE, steps)
    res = compare(str(sweep), n_boot=10, out=str(tmp_path / "out"))
    assert abs(res["curve"]["alpha"]["est"] - 0.9) < 0.1
    md = (tmp_path / "out" / "report.md").read_text()
    assert "token budget: 20 tokens per non-embedding parameter, warm-up 0.05 of the steps" in md
    n = steps(128)
    assert f"baseline d=128 {n * 2048 / 1e6:.3g}M ({n * 2048 / (24 * 128 * 128):.3g})" in md
    (sweep / "sweep.json").write_text(json.dumps({"name": "sweep"}))  # no record of the rule: a real mismatch
    with pytest.raises(WidthlabError, match=r"runs of arm 'baseline' differ in model\.warmup_steps"):
        compare(str(sweep), n_boot=10)


def test_budget_does_not_excuse_real_mismatches(tmp_path):
    steps = lambda w: 10 * w  # noqa: E731
    # an arm trained at a fixed length beside a baseline trained by the rule
    mixed = _budget_sweep(tmp_path / "mixed", RULE, steps, arms_by_rule=("baseline",))
    with pytest.raises(WidthlabError, match=r"runs differ in (model\.warmup_steps|trainer\.max_steps): 'budget .*"
                                            r"\(baseline d=32 s0 .*\) vs (50|320) \(packed d=32 s0"):
        compare(str(mixed), n_boot=10)
    # a run whose steps are not what the rule recorded for its width
    bad = _budget_sweep(tmp_path / "bad", RULE, steps)
    cfg = bad / "packed" / "d64" / "s1" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 640", "max_steps: 600"))
    with pytest.raises(WidthlabError, match=r"packed d=64 s1 .* was trained with trainer\.max_steps=600, but its "
                                            r"sweep's budget .* gives 640"):
        compare(str(bad), n_boot=10)


def test_a_short_sweep_by_a_smaller_budget_is_matched(tmp_path):
    """The matched short sweep of a budget sweep is the same rule at fewer tokens per parameter: only its length
    differs, so the convergence check runs; a short sweep with another warm-up rule is refused."""
    def hist(row, w, arm):
        row["steps"], row["val_history"] = 1000, [[600, row["val_loss"] + 0.1], [1000, row["val_loss"]]]

    def alter(row, w, arm):
        row["steps"], row["val_history"] = 600, [[600, row["val_loss"]]]

    full = _budget_sweep(tmp_path / "full", RULE, lambda w: 20 * w, alter=hist)
    short = _budget_sweep(tmp_path / "short", {**RULE, "tokens_per_param": 12}, lambda w: 12 * w,
                          loss_of=lambda a, w: power_law(a, w) + 0.05, alter=alter)
    assert compare(str(full), n_boot=10, short_sweep=str(short))["curve"]["convergence"]["outcome"] == "converged"
    other = _budget_sweep(tmp_path / "other", {**RULE, "tokens_per_param": 12, "warmup_frac": 0.1}, lambda w: 12 * w,
                          alter=alter)
    for cfg in other.glob("*/d*/s*/config.yaml"):  # the warm-up its own rule gives
        cfg.write_text(cfg.read_text().replace(f"warmup_steps: {max(1, round(0.05 * 12 * int(cfg.parts[-3][1:])))}",
                                               f"warmup_steps: {max(1, round(0.1 * 12 * int(cfg.parts[-3][1:])))}"))
    spec = json.loads((other / "sweep.json").read_text())
    for k, v in spec["budget"]["points"].items():
        v["model.warmup_steps"] = max(1, round(0.1 * v["trainer.max_steps"]))
    (other / "sweep.json").write_text(json.dumps(spec))
    with pytest.raises(WidthlabError, match=r"short sweep .*other: runs (of arm 'baseline' )?differ in "
                                            r"model\.warmup_steps: "
                                            r"'budget \{\"warmup_frac\": 0\.05\}'"):
        compare(str(full), n_boot=10, short_sweep=str(other))


def test_a_matched_sweep_is_40_to_80_percent_long_at_every_width(tmp_path):
    """A referee's probe (session 9): a short sweep by a token table at 1.5/0.6/0.6/0.2 × the full sweep's steps was
    accepted (its median ratio is 0.6) and called converged. The 40–80 % check holds at every width."""
    full = make_sweep(tmp_path / "full", alter=lambda row, w, arm: row.update(steps=1000))
    shifted = lambda arm, w: power_law(arm, w) + 0.05  # noqa: E731

    def short(name, table):
        return make_sweep(tmp_path / name, loss_of=shifted, alter=lambda row, w, arm: row.update(steps=table[w]))

    probe = short("probe", {32: 1500, 64: 600, 128: 600, 256: 200})
    with pytest.raises(WidthlabError, match=r"^the short sweep ran 1500 steps at d = 32, 150 % of this sweep's 1000 "
                                            r"\(out of range at d = 32, 256\): a matched sweep runs 40–80 % of the "
                                            r"steps at every width"):
        compare(str(full), n_boot=10, short_sweep=str(probe))
    ok = short("ok", {32: 500, 64: 600, 128: 700, 256: 800})  # 50–80 %: matched at every width
    res = compare(str(full), n_boot=10, short_sweep=str(ok), out=str(tmp_path / "out"))
    conv = res["curve"]["convergence"]
    assert conv["kind"] == "matched" and conv["frac_range"] == [0.5, 0.8] and conv["frac"] == pytest.approx(0.65)
    assert "a matched sweep at 50–80 % of the steps" in (tmp_path / "out" / "report.md").read_text()



def _edit_rows(sweep, fn):
    """results.csv with fn(row) applied to every row (what compare reads for a sweep dir)."""
    with open(sweep / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        fn(r)
    with open(sweep / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def _rule_steps(w):
    return math.ceil(20 * 24 * w * w / 2048)


def _trained(steps_of):
    """Each run's steps, tokens and FLOPs as metrics.json records them: steps_of(width), 2048 tokens a step."""
    def fill(r):
        n = steps_of(int(r["d_model"]))
        r.update(steps=n, tokens=n * 2048, flops=6 * int(float(r["params"])) * n * 2048)
    return fill


def _retrain(sweep, arm, w, steps, entry=True):
    """Point arm/d<w> retrained for `steps` (config.yaml, results.csv's tokens and steps), its sweep.json entry
    edited to match when `entry` (a hand edit: the config then agrees with sweep.json, not with the rule)."""
    for s in SEEDS:
        cfg = sweep / arm / f"d{w}" / f"s{s}" / "config.yaml"
        cfg.write_text(cfg.read_text().replace(f"max_steps: {_rule_steps(w)}\n", f"max_steps: {steps}\n"))
    _edit_rows(sweep, lambda r: _trained(lambda _: steps)(r) if (r["arm"], int(r["d_model"])) == (arm, w) else None)
    if entry:
        spec = json.loads((sweep / "sweep.json").read_text())
        spec["budget"]["points"][f"{arm}/d{w}"]["trainer.max_steps"] = steps
        (sweep / "sweep.json").write_text(json.dumps(spec))


def test_a_run_off_its_budget_rule_is_refused_even_when_sweep_json_agrees(tmp_path):
    """A referee's point (session 9): compare checked a run against its recorded point, never the point against the
    rule, so a hand-edited sweep.json entry (and the run retrained to match it) passed as the rule's. Each run's
    tokens are now checked against the rule × its own params, within one step's tokens."""
    ok = _budget_sweep(tmp_path / "ok", RULE, _rule_steps)
    _edit_rows(ok, _trained(_rule_steps))
    compare(str(ok), n_boot=10, out=str(tmp_path / "out"))  # by the rule: accepted
    _retrain(ok, "packed", 64, 300)  # 300 steps at d = 64, where the rule gives 960
    with pytest.raises(WidthlabError, match=r"^packed d=64 s0 .* trained on 614400 tokens, but its sweep's budget "
                                            r"\(20 tokens per non-embedding parameter, warm-up 0\.05 of the steps\) "
                                            r"gives 1\.96608e\+06 \(20 × its 98304 non-embedding params\), more than "
                                            r"one step \(2048 tokens\) away: its sweep\.json budget entry was not made "
                                            r"by the rule"):
        compare(str(ok), n_boot=10, out=str(tmp_path / "out"))
    # a token table: each run against its width's entry
    table = {"tokens": {str(w): _rule_steps(w) * 2048 for w in WIDTHS}, "warmup_frac": 0.05}
    tab = _budget_sweep(tmp_path / "table", table, _rule_steps)
    _edit_rows(tab, _trained(_rule_steps))
    _retrain(tab, "baseline", 128, _rule_steps(128) + 1)  # one step over the table's: within a step, accepted
    compare(str(tab), n_boot=10, out=str(tmp_path / "out"))
    _retrain(tab, "baseline", 32, 100)
    with pytest.raises(WidthlabError, match=r"baseline d=32 s0 .* trained on 204800 tokens, but .* gives 491520 \(the "
                                            r"token table's entry for d_model=32\)"):
        compare(str(tab), n_boot=10, out=str(tmp_path / "out"))


def test_an_arm_given_more_tokens_by_its_budget_says_so_beside_its_delta(tmp_path):
    """Under a tokens-per-parameter rule an idea that adds parameters trains on more tokens at the same width: its
    curve-free Δ "at equal width" includes that data, so the report prints the token ratio beside it (the Verdict
    and the glance table); an arm on the baseline's tokens prints none."""
    import yaml
    sweep = _budget_sweep(tmp_path / "s", RULE, _rule_steps)
    _edit_rows(sweep, _trained(_rule_steps))
    extra = {w: round(1.1 * 24 * w * w) for w in WIDTHS}  # packed: 10 % more non-embedding params
    more = {w: math.ceil(20 * extra[w] / 2048) for w in WIDTHS}
    spec = json.loads((sweep / "sweep.json").read_text())
    for w in WIDTHS:
        n = more[w]
        spec["budget"]["points"][f"packed/d{w}"].update({"trainer.max_steps": n, "tokens": n * 2048,
                                                         "model.warmup_steps": max(1, round(0.05 * n))})
        for s in SEEDS:
            f = sweep / "packed" / f"d{w}" / f"s{s}" / "config.yaml"
            cfg = yaml.safe_load(f.read_text())
            cfg["trainer"]["max_steps"], cfg["model"]["warmup_steps"] = n, max(1, round(0.05 * n))
            f.write_text(yaml.safe_dump(cfg))
    (sweep / "sweep.json").write_text(json.dumps(spec))

    def packed(r):
        if r["arm"] == "packed":
            w = int(r["d_model"])
            params = int(r["params"]) + extra[w] - 24 * w * w
            r.update(params_nonembed=extra[w], params=params, steps=more[w], tokens=more[w] * 2048,
                     flops=6 * params * more[w] * 2048)
    _edit_rows(sweep, packed)
    res = compare(str(sweep), n_boot=10, out=str(tmp_path / "out"))
    ratios = [more[w] / _rule_steps(w) for w in WIDTHS]
    assert res["pooled"]["packed"]["token_ratio"] == pytest.approx([min(ratios), max(ratios)])
    label = f"×{min(ratios):.4g}–{max(ratios):.4g}"
    assert label == "×1.1–1.104"
    md = (tmp_path / "out" / "report.md").read_text()
    verdict = next(line for line in md.splitlines() if line.startswith("- **packed**"))
    assert f"it trained on {label} the baseline's tokens at these widths (its token budget counts its own " \
           "parameters), so this Δ is at equal width, not at equal data" in verdict
    glance = md[md.index("## Arms at a glance"):]
    row = next(line for line in glance.splitlines() if line.startswith("| packed |"))
    assert f"(tokens {label})" in row and "so its Δ is at equal width, not equal data" in md
    assert "costs differ (params ×1.01–1.04, FLOPs ×1.11–1.15)" in verdict  # tokens included in its FLOPs
    # the same sweep before the packed arm's extra parameters: equal tokens, no ratio printed
    plain = _budget_sweep(tmp_path / "plain", RULE, _rule_steps)
    _edit_rows(plain, _trained(_rule_steps))
    res = compare(str(plain), n_boot=10, out=str(tmp_path / "out2"))
    assert "token_ratio" not in res["pooled"]["packed"] and "tokens ×" not in (tmp_path / "out2" / "report.md").read_text()
