"""DDP on 2 CPU processes (gloo, localhost) equals 1 process with the same global batch.

Both runs go through `python -m train fit` in subprocesses, so pytest itself is never forked: 1 device × batch 8
against 2 devices × batch 4. Sample ids are (micro_step·world + rank)·B + j, so rank 0 draws ids 8s..8s+3 and rank 1
8s+4..8s+7: together exactly the single process's batch. Gradients are averaged by DDP, so the per-step train loss
(logged as the mean over ranks), the final weights and the validation loss (sums reduced by TokenNLL over windows
dealt round-robin) must agree to float tolerance.
"""
import os
import subprocess
import sys

import lightning as L
import torch
from helpers import scalars, tiny_args

from widthlab.data import TokenDataModule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


class RecordBatches(L.Callback):
    """Saves the input windows each rank trained on to <root>/batches_rank<r>.pt (named by class_path)."""

    def __init__(self):
        self.xs: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.xs.append(batch[0].detach().cpu().clone())

    def on_train_end(self, trainer, pl_module):
        torch.save(torch.stack(self.xs), os.path.join(trainer.default_root_dir, f"batches_rank{trainer.global_rank}.pt"))


def _launch(root, cache, batch, extra):
    args = tiny_args(root, cache, STEPS, ["--data.batch_size", str(batch), "--model.dropout", "0",
                                          "--trainer.accelerator", "cpu", "--trainer.val_check_interval", str(STEPS),
                                          "--overlap.every_n_steps", "100",
                                          '--trainer.callbacks+={"class_path": "test_ddp.RecordBatches"}', *extra])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "tests"), os.path.join(REPO, "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(p, timeout=240):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError(f"timed out:\n{out[-4000:]}")
    assert p.returncode == 0, out[-4000:]


def test_ddp_two_cpu_processes_match_one_process(tmp_path, cache_dir):
    TokenDataModule(vocab_size=512, seq_len=32, cache_dir=str(cache_dir)).prepare_data()  # build the cache once
    one, two = tmp_path / "one", tmp_path / "ddp"
    p1 = _launch(one, cache_dir, 8, ["--trainer.devices", "1"])
    p2 = _launch(two, cache_dir, 4, ["--trainer.devices", "2", "--trainer.strategy", "ddp"])
    _wait(p2)
    _wait(p1)

    # the two ranks' windows are disjoint and together are the single process's batch, step by step
    xb = torch.load(one / "batches_rank0.pt")                                   # (steps, 8, T)
    x0, x1 = torch.load(two / "batches_rank0.pt"), torch.load(two / "batches_rank1.pt")  # (steps, 4, T)
    assert xb.shape == (STEPS, 8, 32) and x0.shape == x1.shape == (STEPS, 4, 32)
    assert torch.equal(torch.cat([x0, x1], dim=1), xb)
    rows0 = {tuple(r.tolist()) for r in x0.flatten(0, 1)}
    rows1 = {tuple(r.tolist()) for r in x1.flatten(0, 1)}
    assert not rows0 & rows1

    # per-step train loss (mean over ranks under DDP), validation loss, and the final weights
    s1, s2 = scalars(one), scalars(two)
    l1, l2 = dict(s1["train/loss"]), dict(s2["train/loss"])
    assert sorted(l1) == sorted(l2) == list(range(STEPS))
    for s in range(STEPS):
        assert abs(l1[s] - l2[s]) < 1e-5, (s, l1[s], l2[s])
    assert abs(s1["val/loss"][-1][1] - s2["val/loss"][-1][1]) < 1e-5
    w1 = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w2 = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    # tokens per optimizer step count both ranks: the DDP run's metrics.json reports the same tokens
    import json
    m1, m2 = (json.load(open(d / "metrics.json")) for d in (one, two))
    assert m1["tokens"] == m2["tokens"] == STEPS * 8 * 32
