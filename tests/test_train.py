"""End to end through `python -m train` (in-process): TensorBoard tags, exact resume, and bad input."""
import json
import os

import pytest
import torch
from helpers import scalars, tiny_args

from widthlab.cli import main


def run(args):
    main(args)


def test_fit_writes_tensorboard_run_directory(tmp_path, cache_dir):
    root = tmp_path / "run"
    run(tiny_args(root, cache_dir, 8, ["--perf.every_n_steps", "2", "--overlap.every_n_steps", "4"]))
    tags = scalars(root)
    for tag in ["train/loss", "lr", "val/loss", "val/bpb", "val/word_ppl", "val/loss_decile/0", "val/loss_decile/9",
                "perf/tokens_per_sec", "geometry/embed/mean_cos2", "geometry/unembed/kappa",
                "geometry/hidden/erank"]:
        assert tag in tags, tag
    assert "perf/mfu" not in tags  # no peak FLOPs for a CPU: no made-up MFU
    assert [s for s, _ in tags["train/loss"]] == list(range(8))
    m = json.load(open(root / "metrics.json"))
    assert m["val_loss"] == pytest.approx(tags["val/loss"][-1][1], rel=1e-6)
    assert m["tokens"] == 8 * 4 * 32 and m["d_model"] == 32
    assert m["val_bpb"] == pytest.approx(tags["val/bpb"][-1][1], rel=1e-6)
    assert "geom_unembed_mean_cos2" in m
    # train_loss is the mean CE of the last (here: all 8) micro-batches, the same values TensorBoard shows
    assert m["train_loss"] == pytest.approx(sum(v for _, v in tags["train/loss"]) / 8, rel=1e-5)
    for f in ["config.yaml", "env.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"]:
        assert (root / f).exists(), f
    # checkpoints load with weights_only=True: tensors and plain types only
    torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


def test_resume_matches_an_uninterrupted_run(tmp_path, cache_dir):
    ev = ["--trainer.val_check_interval", "6"]  # checkpoints are written at validation
    run(tiny_args(tmp_path / "a", cache_dir, 12, ev))
    crash = ['--trainer.callbacks+={"class_path": "helpers.CrashAt", "init_args": {"step": 8}}']
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_args(tmp_path / "b", cache_dir, 12, ev + crash))
    run(tiny_args(tmp_path / "b", cache_dir, 12, ev + ["--ckpt_path", "last"]))
    la, lb = dict(scalars(tmp_path / "a")["train/loss"]), dict(scalars(tmp_path / "b")["train/loss"])
    assert set(la) == set(lb) == set(range(12))
    assert all(la[s] == lb[s] for s in range(12)), (la, lb)  # bit-identical on the same machine
    sa = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _fails(args, capsys, match):
    with pytest.raises(SystemExit) as e:
        run(args)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert match in err, err
    return err


@pytest.mark.parametrize("extra, match", [
    (["--model.no_such_key", "3"], "no_such_key"),
    (["--model.d_model", "wide"], "d_model"),
    (["--data.source", "wikipedia"], "unknown corpus source"),
    (["--data.source", "text:/nonexistent/*.txt"], "no text files"),
    (["--model.d_model", "48"], "not divisible by head_dim"),
    (["--data.seq_len", "200000"], "lower data.seq_len"),
    # interventions: unknown class, nonsensical value, incompatible with the model, a matrix that does not exist
    (["--model.interventions", '[{"class_path": "widthlab.interventions.NoSuchIdea"}]'], "NoSuchIdea"),
    (["--model.interventions", '[{"class_path": "widthlab.interventions.BigramHashEmbedding", '
      '"init_args": {"table_size": -5}}]'], "table_size must be an int >= 2"),
    (["--model.interventions", '[{"class_path": "widthlab.interventions.MixtureOfSoftmaxes", "init_args": {"k": 0}}]'],
     "k must be an int >= 1"),
    (["--model.tie_embeddings", "true", "--model.interventions",
      '[{"class_path": "widthlab.interventions.WideHead", "init_args": {"width": 64}}]'], "model.tie_embeddings: false"),
    (["--model.interventions", '[{"class_path": "widthlab.interventions.SignedRowDecay", '
      '"init_args": {"gamma": -1.0, "matrices": ["lm_head"]}}]'], "lm_head"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, cache_dir, capsys, extra, match):
    root = tmp_path / "run"
    err = _fails(tiny_args(root, cache_dir, 4, extra), capsys, match)
    if "error: " in err and "usage" not in err:
        assert len(err.strip().splitlines()) == 1
    assert not root.exists() or not any(root.iterdir())


def test_resume_guards(tmp_path, cache_dir, capsys):
    root = tmp_path / "run"
    _fails(tiny_args(root, cache_dir, 4, ["--ckpt_path", "last"]), capsys, "nothing to resume")
    run(tiny_args(root, cache_dir, 4))
    _fails(tiny_args(root, cache_dir, 4), capsys, "already holds a run")
    other = tiny_args(tmp_path / "other", cache_dir, 4,
                      ["--model.d_model", "64", "--ckpt_path", str(root / "checkpoints/last.ckpt")])
    _fails(other, capsys, "resume with the checkpoint's own model settings")
