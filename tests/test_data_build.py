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
    """Peak RSS of a build of 5 MB and of 50 MB of text: the 10× larger corpus may not cost more than 30 MB more
    (0.7 bytes per extra byte of text; measured: +15 MB, a fixed step. The non-streaming cache of earlier versions
    needed ≈ 46 bytes per byte of text: +2 GB here). benchmarks/data_scale.py measures 0.2–2 GB."""
    peaks = {}
    for mb in (5, 50):
        src = write_corpus(tmp_path / f"c{mb}.txt", mb, seed=mb)
        out, err = builder(src, tmp_path / f"cache{mb}").communicate(timeout=600)
        peaks[mb] = json.loads(out)["peak_kb"] / 1024
        meta = read_meta(json.loads(out)["path"])
        assert meta["splits"]["train"]["bytes"] > 0.7 * os.path.getsize(tmp_path / f"c{mb}.txt")  # the rest held out
    assert peaks[50] - peaks[5] < 30, peaks


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


def test_the_lock_still_excludes_after_a_failed_builder_removes_its_file(tmp_path):
    """A builder that fails on bad input unlinks <key>.lock while another waits on it: the waiter (which wakes
    on the removed file) and a process arriving afterwards (which creates a new one) must not both hold it."""
    import threading

    from widthlab.data.cache import _lock
    key, held, spans = str(tmp_path / "key"), threading.Event(), {}

    def failing_builder():
        with _lock(key):
            held.set()
            time.sleep(0.3)
            os.remove(key + ".lock")

    def builder_(name, delay):
        held.wait()
        time.sleep(delay)
        with _lock(key):
            t = time.monotonic()
            time.sleep(0.4)
            spans[name] = (t, time.monotonic())
    threads = [threading.Thread(target=failing_builder), threading.Thread(target=builder_, args=("waiter", 0.05)),
               threading.Thread(target=builder_, args=("late", 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = spans["waiter"], spans["late"]
    assert a1 <= b0 or b1 <= a0, spans


def test_pretokenised_shards_are_indexed_by_one_process_at_a_time(tmp_path):
    """tokens: indexing (a pass over every token) runs under the cache's lock: DDP ranks and sweep jobs that
    start together index once, and none removes a directory another has just returned."""
    import threading

    from widthlab.data.cache import _lock
    d = tmp_path / "toks"
    d.mkdir()
    for name in ("train.bin", "val.bin", "test.bin"):
        np.arange(1000, dtype=np.uint16).tofile(d / name)
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 1000, "dtype": "uint16"}))
    key = os.path.basename(build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "a")))
    got = []
    (tmp_path / "b").mkdir()
    with _lock(str(tmp_path / "b" / key)):
        t = threading.Thread(target=lambda: got.append(build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "b"))))
        t.start()
        time.sleep(0.5)
        assert not got and not (tmp_path / "b" / key).exists()  # it waits for the lock's holder
    t.join()
    assert got == [str(tmp_path / "b" / key)] and read_meta(got[0])["splits"]["train"]["tokens"] == 1000


def test_the_source_is_opened_once_per_build(tmp_path, monkeypatch):
    """The build reuses the source the key was computed from: for hf: a second open is a second hub request,
    and its failure (a WidthlabError, like bad input) deleted the shards a resumed build had finished."""
    import widthlab.data.cache as cache
    from widthlab import WidthlabError
    opened = []

    def once(*a, **k):
        opened.append(a)
        if len(opened) > 1:
            raise WidthlabError("could not load hf:x (ConnectionError)")
        return real(*a, **k)
    real = cache.open_source
    monkeypatch.setattr(cache, "open_source", once)
    src = write_corpus(tmp_path / "c.txt", 0.2)
    path = build_or_load(src, 300, cache_dir=str(tmp_path / "cache"), progress=False)
    assert len(opened) == 1 and read_meta(path)["splits"]["train"]["tokens"] > 0


def test_offline_jobs_use_the_cache_prepared_for_an_unreachable_source(tmp_path, monkeypatch, capsys):
    """After `prepare`, a job that cannot reach its hf: dataset or its hub tokenizer uses the cache last prepared
    with the same settings (and says so); with no such cache it is a one-line error."""
    from tokenizers import Tokenizer

    import widthlab.data.cache as cache
    from widthlab import WidthlabError
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("".join(json.dumps({"text": f"a fox number {i} ran ."}) + "\n"
                                            for i in range(400)))
    c = str(tmp_path / "cache")
    path = build_or_load(f"hf:{ds}", 300, cache_dir=c, progress=False, holdout_docs=10)
    os.rename(ds, tmp_path / "gone")  # the dataset cannot be reached any more
    assert build_or_load(f"hf:{ds}", 300, cache_dir=c, progress=False, holdout_docs=10) == path
    assert "is unreachable; using the cache prepared for it earlier" in capsys.readouterr().err
    os.rename(tmp_path / "gone", ds)
    # a hub tokenizer: online (the stand-in returns a tokenizer), then offline (it raises, as load_tokenizer does)
    tok = os.path.join(path, "tokenizer.json")
    monkeypatch.setattr(cache, "load_tokenizer", lambda spec: Tokenizer.from_file(tok))
    hub = build_or_load(f"hf:{ds}", tokenizer_path="some-org/some-tok", cache_dir=c, progress=False,
                        holdout_docs=10)

    def offline(spec):
        raise WidthlabError(f"could not load tokenizer '{spec}' from the Hugging Face hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(cache, "load_tokenizer", offline)
    assert build_or_load(f"hf:{ds}", tokenizer_path="some-org/some-tok", cache_dir=c, progress=False,
                         holdout_docs=10) == hub
    with pytest.raises(WidthlabError, match="could not load tokenizer"):  # never prepared: nothing to fall back on
        build_or_load(f"hf:{ds}", tokenizer_path="some-org/other-tok", cache_dir=c, progress=False, holdout_docs=10)


def test_a_build_killed_just_before_its_rename_is_not_tokenised_again(tmp_path, monkeypatch):
    """The build writes meta.json, drops state.json, then renames .<key>.building into place: a kill between the
    last two left a finished build without its resume record, which was tokenised again from the start."""
    import widthlab.data.cache as cache
    src = write_corpus(tmp_path / "c.txt", 0.2)
    path = build_or_load(src, 300, cache_dir=str(tmp_path / "cache"), progress=False)
    sums = shard_sums(path)
    os.rename(path, tmp_path / "cache" / f".{os.path.basename(path)}.building")
    monkeypatch.setattr(cache, "tokenize_source", lambda *a, **k: pytest.fail("tokenised again"))
    assert build_or_load(src, 300, cache_dir=str(tmp_path / "cache"), progress=False) == path
    assert shard_sums(path) == sums


def test_a_stopped_hf_build_resumes_from_the_streams_position(tmp_path, monkeypatch, capsys):
    """A streamed hf: build stopped after some shards resumes where its stream stood (datasets' state_dict, saved
    with each shard), without streaming the finished documents again, and ends identical to a fresh build."""
    from datasets import Dataset

    import widthlab.data.build as build
    import widthlab.data.sources as sources
    ds = tmp_path / "ds"
    ds.mkdir()
    for k in range(3):  # parquet shards of a train split: validation and test are held out by document
        Dataset.from_dict({"text": [f"doc {k}-{i}: the fox ran {i % 7} times" for i in range(1500)]}) \
            .to_parquet(str(ds / f"train-{k:05d}.parquet"))
    kw = dict(cache_dir=str(tmp_path / "cache"), progress=False, holdout_docs=50, shard_tokens=4000,
              batch_bytes=1 << 12)
    fresh = build_or_load(f"hf:{ds}", 300, **{**kw, "cache_dir": str(tmp_path / "fresh")})
    saved, real = [], build._save_state

    def stop_after_five(out, state):
        real(out, state)
        saved.append(json.loads(json.dumps(state["streams"])))
        if len(saved) == 5:
            raise RuntimeError("stopped")
    monkeypatch.setattr(build, "_save_state", stop_after_five)
    with pytest.raises(RuntimeError, match="stopped"):
        build_or_load(f"hf:{ds}", 300, **kw)
    done = saved[-1]["train"]["docs"]
    assert saved[-1]["train"]["position"] and 0 < done < 4500
    monkeypatch.setattr(build, "_save_state", real)
    given, next_ = [], sources._Rows.__next__
    monkeypatch.setattr(sources._Rows, "__next__", lambda self: (next_(self), given.append(1))[0])
    capsys.readouterr()
    resumed = build_or_load(f"hf:{ds}", 300, **kw)
    assert f"resuming the train stream after document {done:,} (from its recorded position)" in capsys.readouterr().err
    assert len(given) == 4500 - done  # only the documents after the recorded position were streamed
    assert shard_sums(resumed) == shard_sums(fresh)
    assert read_meta(resumed)["unigram_counts"] == read_meta(fresh)["unigram_counts"]
