"""Pre-tokenised corpora (`tokens:`): sharded .bin/.npy files with tokens.json, llm.c's headered shards, their
natural order and bad-input errors, and TokenView, the memory-mapped view that stitches shards into one array."""
import json
import os
import pickle

import numpy as np
import pytest

from widthlab import WidthlabError
from widthlab.data import TokenDataModule
from widthlab.data.cache import build_or_load, load_split, read_meta
from widthlab.data.sampling import TrainWindows
from widthlab.data.shards import TokenView


def test_token_view_stitches_shards_and_pickles_without_tokens(tmp_path):
    flat = np.arange(1000, dtype=np.uint16)
    files = []
    for i, (lo, hi) in enumerate([(0, 300), (300, 310), (310, 1000)]):
        files.append(str(tmp_path / f"s{i}.bin"))
        flat[lo:hi].tofile(files[-1])
    v = TokenView(files, np.uint16)
    assert len(v) == 1000 and v[305] == 305 and (v[295:320] == flat[295:320]).all()
    starts = np.array([0, 290, 299, 305, 979])
    assert (v.windows(starts, 21) == flat[starts[:, None] + np.arange(21)]).all()
    a, b = TrainWindows(v, 16, 8, seed=3), TrainWindows(flat, 16, 8, seed=3)
    assert all((a[s][0] == b[s][0]).all() for s in range(20))
    _ = v[0]  # maps open ...
    assert len(pickle.dumps(v)) < 2000  # ... but a DataLoader worker gets the file names, not the tokens
    assert (pickle.loads(pickle.dumps(v))[295:320] == flat[295:320]).all()


def test_pretokenised_shards_skip_the_corpus(tmp_path):
    d = tmp_path / "toks"
    d.mkdir()
    rng = np.random.default_rng(0)
    parts = {"train-00000.bin": 5000, "train-00001.bin": 3000, "val.bin": 800}
    for name, n in parts.items():
        rng.integers(0, 700, n, dtype=np.uint16).tofile(d / name)
    np.save(d / "test.npy", rng.integers(0, 700, 900).astype(np.uint16))
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 700, "dtype": "uint16"}))
    dm = TokenDataModule(source=f"tokens:{d}", seq_len=16, cache_dir=str(tmp_path / "c"))
    assert dm.real_vocab_size == 700 and dm.model_vocab_size == 704
    assert dm.split_stats("train")["tokens"] == 8000 and dm.split_stats("test")["tokens"] == 900
    assert sum(read_meta(dm.path)["unigram_counts"]) == 8000
    assert (np.asarray(load_split(dm.path, "test")) == np.load(d / "test.npy")).all()
    x, y = dm.train_dataloader().dataset[0]
    assert x.shape == (32, 16) and int(x.max()) < 700
    # bad input: one line each
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 2**33, "dtype": "uint32"}))
    with pytest.raises(WidthlabError, match="cannot hold"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 700, "dtype": "uint16"}))
    (d / "train-00002.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(WidthlabError, match="not a multiple"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))
    (d / "train-00002.bin").write_bytes(b"")
    with pytest.raises(WidthlabError, match="is empty"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))
    os.remove(d / "train-00002.bin")
    os.remove(d / "val.bin")
    with pytest.raises(WidthlabError, match="no valid files"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))


def _llmc_shard(path, toks, magic=20240520, version=1, dtype=np.uint16):
    """A shard as llm.c's data_common.write_datafile writes it: 256 int32 (magic, version, count), then tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = magic, version, len(toks)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(toks, dtype=dtype).tobytes())


def test_llmc_shards_are_read_after_their_header(tmp_path):
    d = tmp_path / "toks"
    d.mkdir()
    rng = np.random.default_rng(1)
    toks = {n: rng.integers(0, 50257, k) for n, k in (("fineweb_train_000001.bin", 3000),
                                                       ("fineweb_val_000000.bin", 700))}  # llm.c's names
    for name, t in toks.items():
        _llmc_shard(d / name, t)
    raw = rng.integers(0, 50257, 500).astype(np.uint16)
    raw.tofile(d / "test.bin")  # a headerless file beside them is read whole
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 50257, "dtype": "uint16"}))
    path = build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))
    assert (np.asarray(load_split(path, "train")) == toks["fineweb_train_000001.bin"]).all()
    assert (np.asarray(load_split(path, "valid")) == toks["fineweb_val_000000.bin"]).all()
    assert (np.asarray(load_split(path, "test")) == raw).all()
    assert sum(read_meta(path)["unigram_counts"]) == 3000
    # a Llama 3 shard (uint32) where tokens.json says uint16: one line
    _llmc_shard(d / "fineweb_train_000002.bin", [1, 2, 3], magic=20240801, version=7, dtype=np.uint32)
    with pytest.raises(WidthlabError, match="holds uint32, but tokens.json says uint16"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))
    # a truncated download: the header counts more tokens than the file holds
    _llmc_shard(d / "fineweb_train_000002.bin", [1, 2, 3])
    with open(d / "fineweb_train_000002.bin", "r+b") as f:
        f.truncate(1024 + 4)
    with pytest.raises(WidthlabError, match="counts 3 tokens, but the file holds 2.0: it is truncated"):
        build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c"))


def test_token_view_refuses_out_of_range_indices_and_windows(tmp_path):
    flat = np.arange(100, dtype=np.uint16)
    flat[:60].tofile(tmp_path / "a.bin")
    flat[60:].tofile(tmp_path / "b.bin")
    for files in ([tmp_path / "a.bin", tmp_path / "b.bin"], [tmp_path / "a.bin"]):
        v = TokenView([str(f) for f in files], np.uint16)
        n = len(v)
        assert v[-1] == n - 1 and v[-n] == 0 and v[n - 1] == n - 1 and len(v[n:n + 5]) == 0
        for k in (n, -n - 1):
            with pytest.raises(IndexError, match="out of range"):
                v[k]
        assert (v.windows(np.array([0, n - 10]), 10) == flat[np.array([0, n - 10])[:, None] + np.arange(10)]).all()
        with pytest.raises(IndexError, match="out of range"):
            v.windows(np.array([n - 5]), 10)


def test_pretokenised_shards_are_read_in_natural_order(tmp_path):
    d = tmp_path / "toks"
    d.mkdir()
    for i in (1, 2, 10):
        np.full(50, i, dtype=np.uint16).tofile(d / f"train-{i}.bin")
    for name in ("val.bin", "test.bin"):
        np.zeros(50, dtype=np.uint16).tofile(d / name)
    (d / "tokens.json").write_text(json.dumps({"vocab_size": 16, "dtype": "uint16"}))
    train = np.asarray(load_split(build_or_load(f"tokens:{d}", cache_dir=str(tmp_path / "c")), "train"))
    assert train[::50].tolist() == [1, 2, 10]
