"""The plan before a sweep runs (widthlab.plan): parameters, FLOPs/token, token budgets → steps, hours, and the
dry-run table, all without data. Every number is checked against a real model or an independent formula."""
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models

from widthlab import WidthlabError
from widthlab.callbacks.perf import PEAK_BF16_DENSE
from widthlab.model import GPT, ModelConfig
from widthlab.plan import (Budget, Costs, PlanOptions, budget_overrides, devices_per_run, plan_rows, resolve,
                           tokens_per_step, vocab_sizes)
from widthlab.plan_table import si
from widthlab.sweep import plan, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIGRAM = [{"class_path": "widthlab.interventions.bigram_hash.BigramHashEmbedding", "init_args": {"table_size": 1000}}]
SMALL = {"model.n_layer": 2, "data.vocab_size": 1000, "data.pad_vocab_to": 64, "data.seq_len": 64,
         "data.batch_size": 8}


def real_counts(d: int, L: int, n: int, T: int, extra_embed: int = 0) -> tuple[int, int, int]:
    """(total, non-embedding, training FLOPs/token) of the baseline GPT by hand: per block qkv 3d², proj d², MLP 8d²,
    two LayerNorms (4d); final LayerNorm 2d; E and U n·d each, positions T·d. FLOPs = 3 × (2 × matmul weights +
    L·4·T·d attention)."""
    blocks = L * (12 * d * d + 4 * d)
    total = blocks + 2 * d + 2 * n * d + T * d + extra_embed
    nonembed = blocks + 2 * d + n * d
    flops = 3 * (2 * (L * 12 * d * d + n * d) + L * 4 * T * d)
    return total, nonembed, flops


def test_counts_are_the_real_models(tmp_path):
    """The plan's counts come from the model built on the meta device; they equal a real CPU model's
    sum(p.numel()), the hand formula, and the model's own flops_per_token; an arm's intervention adds its params."""
    arms = {"baseline": {}, "bigram": {"model.interventions": BIGRAM}}
    configs, costs = resolve(plan("recipes/smoke.yaml", [32, 64], [0], arms, SMALL, str(tmp_path)))
    assert vocab_sizes(configs["baseline"]["data"]) == (1000, 1024)
    for w in (32, 64):
        gpt = GPT(ModelConfig(vocab_size=1024, real_vocab_size=1000, d_model=w, n_layer=2, head_dim=32, seq_len=64))
        total, nonembed, flops = real_counts(w, 2, 1024, 64)
        assert sum(p.numel() for p in gpt.parameters()) == total
        emb = gpt.embed.weight.numel() + gpt.pos.weight.numel()
        assert costs["baseline", w] == Costs(total, total - emb, flops) == Costs(total, nonembed, flops)
        assert gpt.flops_per_token() == flops
        # the hashed bigram table is an embedding: total grows by 1000·m, non-embedding and FLOPs do not (≈ 0)
        assert costs["bigram", w] == Costs(total + 1000 * w, nonembed, flops)


def test_counts_match_the_archived_runs_of_every_arm():
    """The plan's params, non-embedding params and FLOPs/token for every arm of ptb_narrow_arms at d=16 equal what
    those real trained runs recorded in their metrics.json."""
    doc = yaml.safe_load(open("recipes/ptb_narrow_arms.yaml"))
    points = plan(doc["recipe"], [16], [0], doc["arms"], doc["overrides"], "unused")
    _, costs = resolve(points)
    checked = 0
    for arm in doc["arms"]:
        m = json.load(open(f"docs/results/ptb_narrow_arms/runs/{arm}/d16/s0/metrics.json"))
        assert costs[arm, 16] == Costs(m["params"], m["params_nonembed"], m["flops_per_token"]), arm
        checked += 1
    assert checked == 11


def test_budget_turns_tokens_into_steps():
    c = Costs(params=500_000, params_nonembed=300_000, flops_per_token=1)
    cfg = {"data": {"seq_len": 64, "batch_size": 8}, "trainer": {"accumulate_grad_batches": 3, "devices": 2},
           "model": {"warmup_steps": 10}}
    step = tokens_per_step(cfg, devices_per_run(cfg["trainer"], "local"))
    assert step == 64 * 8 * 3 * 2
    ov = budget_overrides(Budget(tokens_per_param=20, warmup_frac=0.05, val_checks=10), 64, c, step, cfg)
    steps = math.ceil(20 * 300_000 / (64 * 8 * 3 * 2))
    assert ov == {"trainer.max_steps": steps, "model.warmup_steps": round(0.05 * steps),
                  "trainer.val_check_interval": steps // 10}
    assert budget_overrides(Budget(tokens_per_param=20, params="total"), 64, c, step, cfg) == {
        "trainer.max_steps": math.ceil(20 * 500_000 / step)}  # the recipe's warm-up and cadence are kept
    assert budget_overrides(Budget(tokens={64: 1e6, 128: 2e6}), 64, c, step, cfg) == {
        "trainer.max_steps": math.ceil(1e6 / step)}
    # 'auto' devices: one per run locally, the job's GPUs under SLURM; nodes multiply
    assert devices_per_run({"devices": "auto"}, "local", 4) == 1
    assert devices_per_run({"devices": "auto", "num_nodes": 2}, "slurm", 4) == 8
    assert devices_per_run({"devices": [0, 1]}, "local") == 2
    with pytest.raises(WidthlabError, match=r"gives d_model=64 \d+ steps, not more than the recipe's "
                                            r"model.warmup_steps=5000; set budget.warmup_frac"):
        budget_overrides(Budget(tokens_per_param=1), 64, c, step, {**cfg, "model": {"warmup_steps": 5000}})
    with pytest.raises(WidthlabError, match="fewer than the recipe's trainer.val_check_interval=9999"):
        budget_overrides(Budget(tokens_per_param=20), 64, c, step, {**cfg, "trainer": {"val_check_interval": 9999}})


def test_rows_hours_and_flops(tmp_path):
    """tokens = steps × tokens/step; FLOPs = flops_per_token × tokens; hours = FLOPs / (H100 peak × MFU) / 3600, or
    tokens / tokens_per_sec."""
    points = plan("recipes/smoke.yaml", [32, 64], [0, 1], {}, SMALL, str(tmp_path))
    configs, costs = resolve(points)
    h100 = dict(PEAK_BF16_DENSE)["h100"]
    rows = plan_rows(points, configs, costs, Budget(tokens_per_param=10), PlanOptions(device="h100", mfu=0.4))
    assert [(r.width, r.seed) for r in rows] == [(32, 0), (32, 1), (64, 0), (64, 1)]
    for r in rows:
        _, nonembed, flops = real_counts(r.width, 2, 1024, 64)
        assert r.steps == math.ceil(10 * nonembed / (64 * 8)) and r.tokens == r.steps * 64 * 8
        assert r.flops == flops * r.tokens
        assert r.hours == pytest.approx(flops * r.tokens / (h100 * 0.4) / 3600, rel=1e-12)
    measured = plan_rows(points, configs, costs, None, PlanOptions(tokens_per_sec={32: 1000.0, 64: 500.0}))
    steps = yaml.safe_load(open("recipes/smoke.yaml"))["trainer"]["max_steps"]  # no budget: the recipe's length
    assert [r.hours for r in measured] == [steps * 512 / tps / 3600 for tps in (1000.0, 1000.0, 500.0, 500.0)]


def test_vocab_without_the_corpus(tmp_path):
    assert vocab_sizes({"vocab_size": 4096, "pad_vocab_to": 64}) == (4096, 4096)
    assert vocab_sizes({"vocab_size": 1000, "pad_vocab_to": 128}) == (1000, 1024)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(777)}, unk_token="w0"))
    tok.save(str(tmp_path / "tokenizer.json"))
    assert vocab_sizes({"vocab_size": 4096, "tokenizer_path": str(tmp_path / "tokenizer.json"),
                        "pad_vocab_to": 64}) == (777, 832)
    (tmp_path / "toks").mkdir()
    (tmp_path / "toks" / "tokens.json").write_text(json.dumps({"vocab_size": 50257, "dtype": "uint16"}))
    assert vocab_sizes({"source": f"tokens:{tmp_path / 'toks'}", "pad_vocab_to": 64}) == (50257, 50304)
    with pytest.raises(WidthlabError, match=r"tokenizer 'no-such-org/no-such-tok'.*not in the Hugging Face cache: "
                                            r"run `python -m train prepare"):
        vocab_sizes({"tokenizer_path": "no-such-org/no-such-tok"})


def _sweep_yaml(tmp_path, **extra) -> str:
    doc = {"name": "pl", "recipe": "recipes/smoke.yaml", "widths": [32, 64, 128], "seeds": [0, 1],
           "out_dir": str(tmp_path / "runs"),
           "overrides": {**SMALL, "data.source": f"text:{tmp_path}/no/such/corpus.txt",
                         "data.cache_dir": str(tmp_path / "cache")},
           "arms": {"baseline": {}, "bigram": {"model.interventions": BIGRAM}},
           "budget": {"tokens_per_param": 20, "params": "non_embedding", "warmup_frac": 0.05},
           "plan": {"device": "h100", "mfu": 0.35}, **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_dry_run_prints_the_plan_offline_in_seconds(tmp_path):
    """`sweep --dry_run` with a corpus that does not exist: one table, no data read, no cache or run dir made."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "train", "sweep", "--config", _sweep_yaml(tmp_path), "--dry_run",
                          "true"], capture_output=True, text=True, env=env, cwd=REPO)
    took = time.time() - t
    assert out.returncode == 0, out.stderr
    assert took < 60, took  # ≈ 6 s on an idle 2-core box, most of it importing torch and Lightning
    text = out.stdout
    assert "budget: 20 tokens per non-embedding parameter, warm-up 0.05 of the steps" in text
    assert "hours on h100: 989 TFLOP/s dense bf16 peak × MFU 0.35 (stated, not measured)" in text
    rows = [line.split() for line in text.splitlines() if re.match(r"(baseline|bigram)\s+\d", line)]
    assert len(rows) == 2 * 3 * 2
    h100 = dict(PEAK_BF16_DENSE)["h100"]
    total_flops = 0.0
    for arm, w, seed, params, nonemb, fpt, steps, tokens, tpp, flops, *_ in rows:
        t_, ne, f = real_counts(int(w), 2, 1024, 64, extra_embed=1000 * int(w) if arm == "bigram" else 0)
        n = math.ceil(20 * ne / 512)
        assert (params, nonemb, fpt, int(steps), tokens) == (si(t_), si(ne), si(f), n, si(n * 512))
        assert float(tpp) == pytest.approx(n * 512 / ne, rel=1e-2)
        total_flops += f * n * 512
    last = text.splitlines()[text.splitlines().index(next(x for x in text.splitlines() if x.startswith("all (sum)")))]
    assert si(total_flops) in last and "12 runs" in last
    hours = total_flops / (h100 * 0.35) / 3600
    assert f"{hours * 3600:.2g} s" in last  # tiny models: seconds
    assert "--trainer.max_steps" in text and "--model.warmup_steps" in text
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, match", [
    ({"budget": {"tokens_per_param": 20, "tokens": {32: 1e6}}}, "either tokens_per_param .* or tokens"),
    ({"budget": {"tokens": {32: 1e6, 64: 2e6}}}, r"budget.tokens has no entry for widths \[128\]"),
    ({"budget": {"tokens_per_param": 20, "warmup_frac": 1.5}}, r"warmup_frac must be in \(0, 1\)"),
    ({"budget": {"tokens_per_param": 20}, "arms": {"baseline": {"trainer.max_steps": 10}}},
     "budget: sets trainer.max_steps for each width; drop it from the sweep's overrides/arms"),
    ({"plan": {"device": "tpu-v9", "mfu": 0.3}}, "plan.device 'tpu-v9' is not in the peak table"),
    ({"plan": {"device": "h100"}}, "give both device and mfu"),
    ({"plan": {"tokens_per_sec": {32: 1e5}}}, r"tokens_per_sec needs a positive number for every width \(missing "
                                              r"\[64, 128\]\)"),
])
def test_bad_plans_are_one_line_errors(tmp_path, extra, match):
    doc = yaml.safe_load(open(_sweep_yaml(tmp_path)))
    kw = {k: doc[k] for k in ("recipe", "widths", "seeds", "arms", "overrides", "name", "out_dir")}
    kw.update(budget=Budget(**doc["budget"]), plan=PlanOptions(**doc["plan"]))
    for k, v in extra.items():
        kw[k] = Budget(**v) if k == "budget" else PlanOptions(**v) if k == "plan" else v
    with pytest.raises(WidthlabError, match=match):
        sweep(dry_run=True, **kw)


def test_meta_device_leaves_no_trace():
    """Counting builds on the meta device inside a context: later tensors are ordinary CPU tensors."""
    from widthlab.plan import model_costs
    model_costs({"model": {"n_layer": 1}, "data": {"vocab_size": 512}}, 32)
    assert torch.zeros(1).device.type == "cpu"


def test_the_walk_through_plan_in_the_docs_is_what_the_dry_run_prints(tmp_path, capsys):
    """docs/multi_device.md's sweep recipe dry-runs offline, and every table line the doc shows is printed as shown."""
    text = open(os.path.join(REPO, "docs", "multi_device.md")).read()
    (doc,) = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
              if "name: tinystories_plan" in b]
    (shown,) = re.findall(r"^```\n(plan of sweep.*?)^```", text, flags=re.S | re.M)
    kw = {k: v for k, v in doc.items() if k not in ("budget", "plan")}
    sweep(**kw, budget=Budget(**doc["budget"]), plan=PlanOptions(**doc["plan"]), out_dir=str(tmp_path), dry_run=True)
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in shown.splitlines() if line != "..." and not line.startswith("first of")]
    assert len(lines) == 12 and all(line in out for line in lines), [x for x in lines if x not in out]
