"""The GPU recipes (TinyStories, FineWeb-edu) run here at tiny scale through their own code path: the same sweep
files, fit recipe, budget rule and `hf:` streaming, with a local stand-in dataset of the same shape (TinyStories:
train + validation jsonl; FineWeb-edu: train-only parquet shards, so validation and test are held out) and tiny
sizes as overrides. What a GPU user runs differs only in the sizes and the device."""
import json
import os

import pytest
import yaml

from widthlab.cli import main

STAGES = ["lr_scan", "sweep", "sweep_short", "arms"]
TINY = {"data.vocab_size": 320, "data.seq_len": 32, "data.batch_size": 4, "data.eval_batch_size": 8,
        "data.max_eval_tokens": 400, "data.num_workers": 0, "data.holdout_docs": 20, "model.compile": False,
        "model.head_dim": 8, "overlap.every_n_steps": 2, "perf.every_n_steps": 2}


def _story(i):
    return (f"Once upon a time, a little fox named Pip {i} found a red ball. "
            f"She played with it all day and was happy. The end {i % 13}.")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    ts = root / "tinystories"
    ts.mkdir()
    (ts / "train.jsonl").write_text("".join(json.dumps({"text": _story(i)}) + "\n" for i in range(400)))
    (ts / "validation.jsonl").write_text("".join(json.dumps({"text": _story(i)}) + "\n" for i in range(400, 440)))
    fw = root / "fineweb" / "sample-10BT"
    fw.mkdir(parents=True)
    from datasets import Dataset
    for k in range(2):  # parquet shards of a train split only, with FineWeb-edu's extra columns
        rows = [_story(i) * 3 for i in range(k * 300, (k + 1) * 300)]
        Dataset.from_dict({"text": rows, "id": [str(i) for i in range(len(rows))], "score": [3.1] * len(rows)}) \
            .to_parquet(str(fw / f"train-{k:05d}.parquet"))
    return {"tinystories": str(ts), "fineweb": str(fw)}


def tiny_sweep(family, stage, tmp_path, source, widths, only=None):
    with open(f"recipes/{family}_{stage}.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg.update(name=f"{family}_{stage}", widths=widths, seeds=[0])
    cfg.pop("archive", None)
    cfg["compare"] = {k: v for k, v in (cfg.get("compare") or {}).items() if k != "short_sweep"}
    cfg["budget"] = {**cfg["budget"], "tokens_per_param": cfg["budget"]["tokens_per_param"] / 1000}
    cfg["overrides"] = {**(cfg.get("overrides") or {}), **TINY, "data.source": f"hf:{source}",
                        "data.cache_dir": str(tmp_path / "cache")}
    if only:
        cfg["arms"] = {k: v for k, v in cfg["arms"].items() if k in only}
    path = tmp_path / f"{family}_{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("family", ["tinystories", "fineweb"])
def test_recipes_plan_offline_and_run_at_tiny_scale(family, stand_ins, tmp_path, capsys):
    # the full-size plan: offline, no corpus (the stand-in is not even named)
    for stage in STAGES:
        main(["sweep", "--config", f"recipes/{family}_{stage}.yaml", "--dry_run", "true"])
        out = capsys.readouterr().out
        assert "all (sum)" in out and "hours on h100" in out and "1024" in out, out
    # every stage at tiny scale, one arm each; the main sweep at two widths, each on its own budget. sweep_short
    # differs from sweep only in its tokens per parameter, which the plan above has checked.
    for stage in ["lr_scan", "sweep", "arms"]:
        with open(f"recipes/{family}_{stage}.yaml") as f:
            first_arm = next(iter(yaml.safe_load(f)["arms"]))
        widths = [16, 32] if stage == "sweep" else [16]
        cfg = tiny_sweep(family, stage, tmp_path, stand_ins[family], widths, only=[first_arm])
        main(["sweep", "--config", str(cfg), "--out_dir", str(tmp_path / "runs")])
        capsys.readouterr()
        for w in widths:
            m = json.load(open(tmp_path / "runs" / f"{family}_{stage}" / first_arm / f"d{w}" / "s0" / "metrics.json"))
            assert m["status"] == "ok" and m["val_loss"] > 0, m
    steps = {w: json.load(open(tmp_path / "runs" / f"{family}_sweep" / "baseline" / f"d{w}" / "s0" / "metrics.json"))
             ["steps"] for w in (16, 32)}
    assert steps[32] > steps[16]  # the budget follows the width
    caches = [d for d in os.listdir(tmp_path / "cache") if len(d) == 16]
    meta = json.load(open(tmp_path / "cache" / caches[0] / "meta.json"))
    assert meta["splits"]["test"]["docs"] > 0 and meta["source"] == f"hf:{stand_ins[family]}"
