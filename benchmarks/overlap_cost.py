"""What measuring overlap costs. Run by hand (not a test): `.venv/bin/python benchmarks/overlap_cost.py`.

(b) Exact mean cos² of a GPT-2-sized head (50257×768): the Gram trick (geometry.mean_cos2, float64, O(n·m²))
    against the paper's blocked pairwise pass (LLMs/overlap-0.py: 8192-row blocks, i < j, matmul in the weights'
    dtype float32, float64 accumulation, O(n²·m)). Goals: time ratio ≤ 1/30, relative agreement ≤ 1e-6.
(a) OverlapMonitor's cost as a fraction of training time at its default cadence, for a GPT at d=128, n=4096,
    T=128, L=2, B=32 trained by a plain loop (AdamW). Goal ≤ 2 %.
Threads are pinned (default 2, as on the shared dev box) so numbers are comparable between runs.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from widthlab import geometry
from widthlab.callbacks import OverlapMonitor
from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT


def paper_blocked_mean_cos2(W: torch.Tensor, block: int = 8192) -> float:
    """Liu et al.'s method: normalise, then sum cos² over i < j block by block, accumulating in float64."""
    Wh = W / (W.norm(dim=1, keepdim=True) + 1e-9)
    n, total = W.shape[0], torch.zeros((), dtype=torch.float64)
    for a in range(0, n, block):
        A = Wh[a:a + block]
        for b in range(a, n, block):
            C = A @ Wh[b:b + block].T
            if a == b:
                C = torch.triu(C, diagonal=1)
            total += C.double().square().sum()
    return (total / (n * (n - 1) / 2)).item()


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_gram(n: int, m: int) -> dict:
    W = torch.randn(n, m, generator=torch.Generator().manual_seed(0))  # float32, like a checkpoint
    geometry.mean_cos2(W[:1000])  # warm up BLAS
    t_gram, gram = timed(lambda: geometry.mean_cos2(W), repeat=3)
    t_pair, pair = timed(lambda: paper_blocked_mean_cos2(W))
    return {"t_gram": t_gram, "t_pair": t_pair, "gram": gram, "pair": pair, "rel": abs(gram - pair) / pair}


def bench_monitor(d: int, n: int, T: int, L: int, B: int, steps: int, every: int, hist_every: int,
                  n_seq: int) -> dict:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=n, d_model=d, n_layer=L, seq_len=T, head_dim=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, n, (B, T + 1), generator=g)

    def step():
        logits, _ = model(data[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator, kernels
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    t_step = (time.perf_counter() - t) / steps

    # the monitor sees the same things a Trainer would give it
    val = torch.randint(0, n, (n_seq, T), generator=g)
    unigram = torch.rand(n, generator=g, dtype=torch.float64)
    dm = SimpleNamespace(fixed_val_batch=lambda k: (val[:k], val[:k]), unigram=unigram / unigram.sum())
    trainer, pl = SimpleNamespace(datamodule=dm), SimpleNamespace(model=model, device=torch.device("cpu"))
    mon = OverlapMonitor(every_n_steps=every, hist_every_n_steps=hist_every, n_seq=n_seq)
    mon.compute(pl, trainer)  # warm-up (also caches the fixed batch, as in training)
    t_scalar, _ = timed(lambda: mon.compute(pl, trainer), repeat=5)
    t_hist, _ = timed(lambda: (mon._hists(mats := mon.matrices(pl, trainer)),
                               mon._scalars(mats, trainer, pairs=True)), repeat=2)
    assert model.training  # the monitor restored train mode
    # at the default cadence every `every`-th step pays t_scalar and every `hist_every`-th pays t_hist instead
    per_step = t_scalar / every + (t_hist - t_scalar) / hist_every
    return {"t_step": t_step, "t_scalar": t_scalar, "t_hist": t_hist, "overhead": per_step / t_step,
            "tokens_per_s": B * T / t_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps in (a)")
    ap.add_argument("--skip-b", action="store_true", help="skip the 50257×768 comparison (~1 min on 2 threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mon = OverlapMonitor()
    print(f"torch {torch.__version__}, {args.threads} threads")

    a = bench_monitor(d=128, n=4096, T=128, L=2, B=32, steps=args.steps, every=mon.every_n_steps,
                      hist_every=mon.hist_every_n_steps, n_seq=mon.n_seq)
    print(f"\n(a) OverlapMonitor at d=128 n=4096 T=128 L=2 B=32, every_n_steps={mon.every_n_steps}, "
          f"hist_every_n_steps={mon.hist_every_n_steps}, n_seq={mon.n_seq}")
    print(f"  {'train step':<34}{a['t_step'] * 1e3:>9.1f} ms  ({a['tokens_per_s']:,.0f} tok/s)")
    print(f"  {'scalars (embed, unembed, hidden)':<34}{a['t_scalar'] * 1e3:>9.1f} ms  "
          f"= {a['t_scalar'] / a['t_step']:.2f} steps")
    print(f"  {'+ pairs and histograms':<34}{a['t_hist'] * 1e3:>9.1f} ms  = {a['t_hist'] / a['t_step']:.2f} steps")
    print(f"  {'overhead at default cadence':<34}{a['overhead'] * 100:>9.2f} %   (goal ≤ 2 %)")

    if not args.skip_b:
        b = bench_gram(50257, 768)
        print("\n(b) exact mean cos² of a 50257×768 float32 matrix")
        print(f"  {'Gram trick (float64)':<34}{b['t_gram']:>9.3f} s   mean_cos2 = {b['gram']:.12e}")
        print(f"  {'paper blocked (8192, fp32→fp64)':<34}{b['t_pair']:>9.3f} s   mean_cos2 = {b['pair']:.12e}")
        print(f"  {'time ratio':<34}{b['t_gram'] / b['t_pair']:>9.4f}     = 1/{b['t_pair'] / b['t_gram']:.0f} "
              f"(goal ≤ 1/30)")
        print(f"  {'relative agreement':<34}{b['rel']:>9.1e}     (goal ≤ 1e-6)")


if __name__ == "__main__":
    main()
