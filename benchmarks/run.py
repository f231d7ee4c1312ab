"""One command for the performance page: `python benchmarks/run.py [--quick]` prints a table of medians and ratios.

Rows (CPU, always): Lightning fit vs a bare loop (benchmarks/overhead.py), compiled vs eager (tokens/s and compile
time), OverlapMonitor overhead at its default cadence (benchmarks/overlap_cost.py, reused), BPE tokenisation of PTB
(train + encode), and time to first step of `python -m train fit` (a fresh process: imports, cache load, one step).
When CUDA is available, also tokens/s and MFU of a GPT-2-small shape (12 × 768, seq 1024, goal ≥ 45 % MFU on an
H100), trained by the path every GPU run takes: a Lightning fit of LitGPT with compile, fused AdamW, bf16-mixed and
gradient clipping (benchmarks/device_check.py), so the row fails where a GPU fit would. Medians over repeats; threads
pinned (default 2, the dev box) so runs compare.

`--device-check` runs only benchmarks/device_check.py: the GPU row, a width sweep's shapes, the fused=false and
loss-outside-compile variants, host syncs per step, and two kernel facts; one prepared script for a lent GPU
(`--tiny` = the same at CPU-test size). Its other options pass through (--widths, --steps, --out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import device_check  # noqa: E402  (sibling script)
import overhead  # noqa: E402  (sibling script)
import overlap_cost  # noqa: E402  (the other engineer's benchmark, reused as is)


def compile_vs_eager(steps: int, repeats: int, warmup: int = 3) -> dict:
    d, L, n, T, B = 64, 2, 4096, 128, 16
    eager, comp, ctime = [], [], []
    for _ in range(repeats):
        eager.append(overhead.median_tps(overhead.bare_step_times(d, L, n, T, B, steps), warmup, B * T))
        t = time.perf_counter()
        times = overhead.bare_step_times(d, L, n, T, B, steps, compile=True)
        # the first step pays compilation: its time minus a compiled step's is the compile cost
        ctime.append(time.perf_counter() - t - sum(times))
        comp.append(overhead.median_tps(times, warmup, B * T))
        torch._dynamo.reset()
    return {"eager": statistics.median(eager), "compiled": statistics.median(comp),
            "compile_s": statistics.median(ctime)}


def tokenisation(vocab: int = 4096) -> dict:
    from widthlab.data.sources import load_corpus
    from widthlab.data.tokenizer import train_bpe
    docs = load_corpus("ptb")["train"]
    nbytes = sum(len(s.encode()) for s in docs)
    t = time.perf_counter()
    tok = train_bpe(docs, vocab)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    n_tok = sum(len(e.ids) for e in tok.encode_batch(docs))
    t_enc = time.perf_counter() - t
    return {"mb": nbytes / 1e6, "train_s": t_train, "encode_s": t_enc, "tokens": n_tok,
            "encode_tok_s": n_tok / t_enc}


def time_to_first_step(cache: str) -> float:
    """Wall seconds of a fresh `python -m train fit` with max_steps=1 and no validation (cache already built)."""
    with tempfile.TemporaryDirectory(prefix="perf_ttfs_") as root:
        cmd = [sys.executable, "-m", "train", "fit", "--config", "recipes/smoke.yaml", "--trainer.max_steps", "1",
               "--trainer.default_root_dir", root, "--trainer.limit_val_batches", "0",
               "--trainer.enable_progress_bar", "false", "--data.cache_dir", cache]
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        return time.perf_counter() - t


def gpu_mfu(steps: int, B: int = 16) -> dict:
    """12 layers × 768, seq 1024, vocab 50304 through the GPU fit path (device_check.fit_row): tokens/s and MFU."""
    r = device_check.fit_row("gpt2 12×768", 768, 12, 64, 1024, 50304, B, steps, every=10, compile=True)
    return {"device": torch.cuda.get_device_name(), "perf/tokens_per_sec": r["tokens_per_sec"], "perf/mfu": r["mfu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (a shared CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="data/cache", help="token cache dir for time-to-first-step")
    ap.add_argument("--device-check", action="store_true", help="only the GPU path check (benchmarks/device_check.py)")
    a, rest = ap.parse_known_args()
    if a.device_check:
        device_check.main(rest + (["--steps", "20"] if a.quick and "--steps" not in rest else []))
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(a.threads)
    steps, repeats = (15, 3) if a.quick else (40, 5)
    rows: list[tuple[str, str, str]] = []

    o = overhead.bench_overhead(steps=steps, repeats=repeats)
    rows.append(("Lightning fit / bare loop (d64 L2 n4096 T128 B16)",
                 f"{o['lightning_tps']:,.0f} / {o['bare_tps']:,.0f} tok/s", f"{o['ratio']:.3f} (goal ≥ 0.95)"))
    c = compile_vs_eager(steps, 1 if a.quick else 3)
    rows.append(("compiled / eager (same model, bare loop)", f"{c['compiled']:,.0f} / {c['eager']:,.0f} tok/s",
                 f"{c['compiled'] / c['eager']:.3f}; compile {c['compile_s']:.1f} s"))
    m = overlap_cost.bench_monitor(d=128, n=4096, T=128, L=2, B=32, steps=5 if a.quick else 10, every=25,
                                   hist_every=500, n_seq=8)
    rows.append(("OverlapMonitor overhead (default cadence 25/500)", f"scalars {m['t_scalar'] * 1e3:.0f} ms, "
                 f"step {m['t_step'] * 1e3:.0f} ms", f"{m['overhead'] * 100:.2f} % (goal ≤ 2 %)"))
    k = tokenisation()
    rows.append(("BPE on PTB train (vocab 4096)", f"{k['mb']:.2f} MB, {k['tokens']:,} tokens",
                 f"train {k['train_s']:.1f} s; encode {k['encode_s']:.1f} s = {k['encode_tok_s']:,.0f} tok/s"))
    ttfs = [time_to_first_step(a.cache) for _ in range(1 if a.quick else 3)]
    rows.append(("time to first step (python -m train fit, 1 step)", f"{len(ttfs)} run(s)",
                 f"{statistics.median(ttfs):.1f} s"))
    if torch.cuda.is_available():
        g = gpu_mfu(steps=20 if a.quick else 50)
        mfu = g.get("perf/mfu")
        rows.append((f"GPU {g['device']}: 12×768 T1024 B16 bf16+compile", f"{g['perf/tokens_per_sec']:,.0f} tok/s",
                     f"MFU {mfu * 100:.1f} % (goal ≥ 45 % on H100)" if mfu else "MFU: unknown peak"))
    else:
        rows.append(("GPU 12×768 T1024 bf16+compile", "no CUDA device", "skipped"))

    print(f"\ntorch {torch.__version__}, {a.threads} threads, load {os.getloadavg()[0]:.2f} "
          f"({'quick' if a.quick else 'full'})")
    w = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"{name:<{w}}  {value:<34} {ratio}")


if __name__ == "__main__":
    main()
