"""The token cache at scale: a killed build resumes, concurrent builders wait for one, memory does not grow with the
corpus, `prepare` builds what a recipe needs, DataLoader workers read the same batches. Each builder is a real
process (a kill is SIGKILL, memory is the process's peak RSS)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from widthlab.cli import main
from widthlab.data import TokenDataModule
from widthlab.data.cache import build_or_load, read_meta

WORDS = "the quick brown fox jumps over the lazy dog a stitch in time saves nine".split()
BUILD = """
import sys, json, resource
from widthlab.data.cache import build_or_load
path = build_or_load(sys.argv[1], 300, cache_dir=sys.argv[2], shard_tokens=int(sys.argv[3]), bpe_sample_bytes=2_000_000,
                     batch_bytes=int(sys.argv[4]))
print(json.dumps({"path": path, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def write_corpus(path, mb: float, seed: int = 0) -> str:
    """Deterministic text of about `mb` MB: lines of random words, one document per line."""
    rng = np.random.default_rng(seed)
    block = "".join(" ".join(rng.choice(WORDS, 14)) + f" {i}\n" for i in range(20_000))  # ≈ 1.4 MB
    with open(path, "w") as f:
        for _ in range(max(1, round(mb * 1e6 / len(block)))):
            f.write(block)
    return f"text:{path}"


def builder(source, cache, shard_tokens=100_000_000, batch_bytes=1 << 21):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", BUILD, source, str(cache), str(shard_tokens), str(batch_bytes)],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shard_sums(path):
    meta = read_meta(path)
    return {s: [sh["checksum"] for sh in meta["splits"][s]["shards"]] for s in ("train", "valid", "test")}


def test_a_killed_build_resumes_from_its_finished_shards(tmp_path):
    src = write_corpus(tmp_path / "corpus.txt", 8)
    cache = tmp_path / "cache"
    p = builder(src, cache, shard_tokens=50_000, batch_bytes=1 << 16)
    state, seen = None, {}
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # kill it once about half its shards are written
        states = list(cache.glob(".*.building/state.json"))
        if states:
            try:
                state = json.loads(states[0].read_text())
            except ValueError:
                continue
            if len(state["shards"]["train"]) >= 15:
                first = states[0].parent / state["shards"]["train"][0]["file"]
                seen = {"mtime": first.stat().st_mtime_ns, "shards": len(state["shards"]["train"])}
                p.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    p.wait()
    assert seen, "the build finished before it could be killed; use a larger corpus"
    assert not [d for d in os.listdir(cache) if not d.startswith(".") and not d.endswith(".lock")]  # nothing complete
    resumed = build_or_load(src, 300, cache_dir=str(cache), shard_tokens=50_000, bpe_sample_bytes=2_000_000,
                            batch_bytes=1 << 16, progress=False)
    assert (cache / os.path.basename(resumed) / os.path.basename(str(first))).stat().st_mtime_ns == seen["mtime"]
    fresh = build_or_load(src, 300, cache_dir=str(tmp_path / "fresh"), shard_tokens=50_000,
                          bpe_sample_bytes=2_000_000, batch_bytes=1 << 16, progress=False)
    assert shard_sums(resumed) == shard_sums(fresh) and len(shard_sums(fresh)["train"]) > seen["shards"]
    assert read_meta(resumed)["unigram_counts"] == read_meta(fresh)["unigram_counts"]
    assert read_meta(resumed)["splits"]["train"]["words"] == read_meta(fresh)["splits"]["train"]["words"]


def test_two_builders_started_together_build_once(tmp_path):
    src = write_corpus(tmp_path / "corpus.txt", 4)
    a, b = builder(src, tmp_path / "cache"), builder(src, tmp_path / "cache")
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == b.returncode == 0, outs
    paths = {json.loads(out)["path"] for out, _ in outs}
    assert len(paths) == 1
    errs = [err for _, err in outs]
    assert sum("waiting for another process" in e for e in errs) == 1, errs
    assert sum("token cache built" in e for e in errs) == 1, errs


def test_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS of a build of 20 MB and of 200 MB of text: the 10× larger corpus may not cost more than 100 MB
    more (the non-streaming cache of earlier versions needed ≈ 46 bytes per byte of text: +8 GB here)."""
    peaks = {}
    for mb in (20, 200):
        src = write_corpus(tmp_path / f"c{mb}.txt", mb, seed=mb)
        out, err = builder(src, tmp_path / f"cache{mb}").communicate(timeout=600)
        peaks[mb] = json.loads(out)["peak_kb"] / 1024
        meta = read_meta(json.loads(out)["path"])
        assert meta["splits"]["train"]["bytes"] > 0.85 * mb * 1e6
    assert peaks[200] - peaks[20] < 100, peaks


def test_prepare_builds_a_recipes_cache_and_verifies_it(tmp_path, capsys):
    cache = tmp_path / "cache"
    main(["prepare", "--config", "recipes/smoke.yaml", "--data.vocab_size", "300", "--data.cache_dir", str(cache)])
    out = capsys.readouterr().out
    assert out.startswith("ready: ") and "(ptb; tokens: train 3,328,928, valid 261,315, test 292,385; vocab 300)" in out
    path = out.split()[1]
    main(["prepare", "--config", "recipes/smoke.yaml", "--data.vocab_size", "300", "--data.cache_dir", str(cache),
          "--verify", "true"])
    assert capsys.readouterr().out.startswith(f"ready (verified): {path} ")
    dm = TokenDataModule(vocab_size=300, cache_dir=str(cache))
    assert dm.path == path  # fit finds what prepare built
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--config", "recipes/smoke.yaml", "--data.vocab_sise", "300"])
    assert e.value.code == 2 and "unknown data setting data.vocab_sise" in capsys.readouterr().err


def test_dataloader_workers_read_the_same_batches(tmp_path, cache_dir):
    def batches(workers):
        dm = TokenDataModule(vocab_size=512, seq_len=32, batch_size=4, cache_dir=str(cache_dir),
                             num_workers=workers)
        it = iter(dm.train_dataloader())
        return [next(it)[0] for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2)))


def test_fit_on_pretokenised_shards_with_a_vocabulary_that_needs_padding(tmp_path):
    """tokens: with vocab 1000 (padded to 1024 in the model): the fit trains and reports loss, but no bpb or word
    perplexity, since the shards do not say how much text they came from."""
    from helpers import tiny_args
    d = tmp_path / "toks"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [("train.bin", 60_000), ("val.bin", 4_000), ("test.bin", 4_000)]:
        rng.integers(0, 1000, n, dtype=np.uint16).tofile(d / name)
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 1000, "dtype": "uint16"}))
    main(tiny_args(tmp_path / "run", tmp_path / "cache", 4, ["--data.source", f"tokens:{d}"]))
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    assert m["status"] == "ok" and m["val_loss"] > 0 and m.get("val_bpb") is None
