"""End to end through `python -m train` (in-process): TensorBoard tags, metrics.json, exact resume, and bad input."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import scalars, tiny_args, without_progress

from widthlab.callbacks.run_info import TRAIN_EVAL_SEED
from widthlab.cli import main
from widthlab.data.cache import load_split
from widthlab.data.datamodule import TokenDataModule
from widthlab.data.sampling import TrainWindows
from widthlab.module import LitGPT


def run(args):
    main(args)


def _train_loss_eval_by_hand(root, cache_dir) -> tuple[float, float]:
    """CE of last.ckpt's weights on the first windows of TRAIN_EVAL_SEED (as many tokens as validation sees:
    max_eval_tokens=2000 → 63 windows of 32), in eval mode and, for contrast, in train mode (dropout on)."""
    ck = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    lm = LitGPT(**{k: v for k, v in ck["hyper_parameters"].items() if k != "_instantiator"})
    lm.load_state_dict(ck["state_dict"])
    dm = TokenDataModule(vocab_size=512, seq_len=32, cache_dir=str(cache_dir), max_eval_tokens=2000)
    x, y = TrainWindows(load_split(dm.path, "train"), 32, math.ceil(2000 / 32), TRAIN_EVAL_SEED)[0]
    out = []
    for mode in (False, True):
        lm.train(mode)
        torch.manual_seed(0)
        with torch.no_grad():
            out.append(F.cross_entropy(lm(x)[0].flatten(0, 1), y.flatten()).item())
    return out[0], out[1]


def test_fit_writes_tensorboard_run_directory(tmp_path, cache_dir):
    root = tmp_path / "run"
    run(tiny_args(root, cache_dir, 8, ["--perf.every_n_steps", "2", "--overlap.every_n_steps", "4",
                                       "--trainer.val_check_interval", "4", "--model.dropout", "0.3"]))
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
    assert "geom_unembed_mean_cos2" in m and "geom_hidden_mean_cos2_centred" in m
    # train_loss_running is the mean CE of the last (here: all 8) micro-batches, the same values TensorBoard shows
    assert "train_loss" not in m
    assert m["train_loss_running"] == pytest.approx(sum(v for _, v in tags["train/loss"]) / 8, rel=1e-5)
    # every validation, the sanity check's not among them, at the global step of its weights (TensorBoard puts a
    # mid-run validation one step earlier); last and best, best_step being best.ckpt's step
    assert [v for _, v in m["val_history"]] == [pytest.approx(v, rel=1e-6) for _, v in tags["val/loss"]]
    assert [s for s, _ in m["val_history"]] == [4, 8]
    best_step, best = min(m["val_history"], key=lambda e: e[1])
    assert (m["best_step"], m["val_loss_best"]) == (best_step, best) and m["val_loss"] == m["val_history"][-1][1]
    assert torch.load(root / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == best_step
    assert m["status"] == "ok" and m["diverged_step"] is None
    # train_loss_eval: final weights (= last.ckpt, saved at step 8), eval mode, the fixed train windows
    eval_mode, train_mode = _train_loss_eval_by_hand(root, cache_dir)
    assert m["train_loss_eval"] == pytest.approx(eval_mode, rel=1e-5)
    assert abs(train_mode - eval_mode) > 1e-3  # dropout 0.3 matters, so the match above says "eval mode"
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
    # The resumed run's summary is the uninterrupted one's: the validation at step 6 came from the checkpoint.
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert [s for s, _ in ma["val_history"]] == [6, 12]
    for k in ("val_history", "val_loss", "val_loss_best", "best_step", "train_loss_eval", "train_loss_running"):
        assert ma[k] == mb[k], k


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
        assert len(without_progress(err)) == 1, err
    assert not root.exists() or not any(root.iterdir())


def test_resume_guards(tmp_path, cache_dir, capsys):
    root = tmp_path / "run"
    _fails(tiny_args(root, cache_dir, 4, ["--ckpt_path", "last"]), capsys, "nothing to resume")
    test_best = lambda r: ["test", *tiny_args(r, cache_dir, 4, ["--ckpt_path", "best"])[1:]]  # noqa: E731
    _fails(test_best(root), capsys, "--ckpt_path best: ")  # nothing trained yet: one line
    run(tiny_args(root, cache_dir, 4))
    run(test_best(root))  # the README's `test --ckpt_path best`, in a new process: the run's best.ckpt
    assert "test/loss" in scalars(root)
    _fails(tiny_args(root, cache_dir, 4), capsys, "already holds a run")
    other = tiny_args(tmp_path / "other", cache_dir, 4,
                      ["--model.d_model", "64", "--ckpt_path", str(root / "checkpoints/last.ckpt")])
    _fails(other, capsys, "resume with the checkpoint's own model settings")
