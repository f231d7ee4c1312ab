"""Why `python -m train` re-executes itself with a glibc mmap threshold (src/train.py): the same bare training step
with glibc's default allocator settings and with the tuned ones, one thread, in fresh processes.

On a CPU the logits of one step (batch × T × vocab floats; 32 × 128 × 2048 × 4 bytes = 32 MiB in recipes/ptb_id)
sit at glibc's largest mmap threshold, so each step maps and unmaps them and their gradients and pays the page
faults. Prints ms/step, user/system time and minor page faults per step for each width, and the speed ratio.

    python benchmarks/allocator.py [--widths 8 32 128] [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

TUNE = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"

STEP = r"""
import json, resource, sys, time, torch
from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT
d, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
m = GPT(ModelConfig(d_model=d, n_layer=2, head_dim=8, dropout=0.1, vocab_size=2048, seq_len=128))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.randint(0, 2048, (32, 128)), torch.randint(0, 2048, (32, 128))
def step():
    logits = m(x)
    logits = logits if torch.is_tensor(logits) else logits[0]
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(3):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(json.dumps({"ms": (t1 - t0) / steps * 1e3, "user_ms": (r1.ru_utime - r0.ru_utime) / steps * 1e3,
                  "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3, "faults": (r1.ru_minflt - r0.ru_minflt) / steps}))
"""


def measure(width: int, steps: int, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["OMP_NUM_THREADS"] = "1"
    if tuned:
        env["GLIBC_TUNABLES"] = TUNE
    out = subprocess.run([sys.executable, "-c", STEP, str(width), str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    print("| d_model | default ms/step (user / sys, faults) | tuned ms/step (user / sys, faults) | speed-up |")
    print("|---|---|---|---|")
    for w in args.widths:
        a, b = measure(w, args.steps, False), measure(w, args.steps, True)
        fmt = lambda r: f"{r['ms']:.0f} ({r['user_ms']:.0f} / {r['sys_ms']:.0f}, {r['faults']:,.0f})"  # noqa: E731
        print(f"| {w} | {fmt(a)} | {fmt(b)} | **{a['ms'] / b['ms']:.2f}×** |")


if __name__ == "__main__":
    main()
