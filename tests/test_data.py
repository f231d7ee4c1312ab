import os

import numpy as np
import pytest
from tokenizers import Tokenizer

from widthlab import WidthlabError
from widthlab.data import TokenDataModule
from widthlab.data.cache import build_or_load, load_split, read_meta
from widthlab.data.corpora import load_corpus
from widthlab.data.sampling import EvalWindows, TrainWindows

TEXT = "the quick brown fox jumps over the lazy dog . a stitch in time saves nine .\n"


@pytest.fixture
def text_corpus(tmp_path):
    for split, k in [("train", 300), ("valid", 30), ("test", 30)]:
        (tmp_path / f"{split}.txt").write_text("".join(f"{TEXT.strip()} {i % 7}\n" for i in range(k)))
    return f"text:{tmp_path}/*.txt"


def test_ptb_word_counts_match_the_mikolov_setup():
    c = load_corpus("ptb")
    # words + <eos>, the denominators of PTB word perplexity
    assert [c.stats(s)["words"] for s in ("train", "valid", "test")] == [929589, 73760, 82430]


def test_tokenizer_and_cache_round_trip(text_corpus, tmp_path):
    path = build_or_load(text_corpus, vocab_size=300, cache_dir=str(tmp_path / "cache"))
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ids = load_split(path, "valid")
    assert tok.decode(ids.tolist()) == open(tmp_path / "valid.txt").read()
    meta = read_meta(path)
    assert meta["splits"]["valid"]["tokens"] == len(ids)
    assert sum(meta["unigram_counts"]) == meta["splits"]["train"]["tokens"]
    assert meta["splits"]["valid"]["bytes_per_token"] == pytest.approx(os.path.getsize(tmp_path / "valid.txt") / len(ids))


def test_cache_is_reused_invalidated_and_rebuilt(text_corpus, tmp_path):
    cache = str(tmp_path / "cache")
    a = build_or_load(text_corpus, vocab_size=300, cache_dir=cache)
    assert build_or_load(text_corpus, vocab_size=300, cache_dir=cache) == a
    assert build_or_load(text_corpus, vocab_size=310, cache_dir=cache) != a  # other tokenizer settings
    with open(tmp_path / "train.txt", "a") as f:  # other content
        f.write("an entirely new line of text\n")
    b = build_or_load(text_corpus, vocab_size=300, cache_dir=cache)
    assert b != a
    # corrupt one byte: detected by the checksum and rebuilt, never reused
    fn = os.path.join(b, "train.bin")
    raw = bytearray(open(fn, "rb").read())
    raw[10] ^= 0xFF
    open(fn, "wb").write(bytes(raw))
    c = build_or_load(text_corpus, vocab_size=300, cache_dir=cache)
    assert c == b and open(fn, "rb").read() != bytes(raw)
    assert not [d for d in os.listdir(cache) if d.startswith(".")]  # no temporary directories left behind


def test_bad_sources_and_vocab(tmp_path):
    with pytest.raises(WidthlabError, match="unknown corpus source"):
        load_corpus("wikipedia")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(WidthlabError, match="empty"):
        load_corpus(f"text:{tmp_path}/empty.txt")
    with pytest.raises(WidthlabError, match="no text files"):
        load_corpus(f"text:{tmp_path}/missing*.txt")
    (tmp_path / "small.txt").write_text("".join(f"{TEXT.strip()}\n" for _ in range(40)))
    with pytest.raises(WidthlabError, match="cannot be honoured"):
        build_or_load(f"text:{tmp_path}/small.txt", vocab_size=5000, cache_dir=str(tmp_path / "c"))


def test_sampler_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = TrainWindows(tokens, 16, 8, seed=3)
    b = TrainWindows(tokens, 16, 8, seed=3)
    assert all((a[s][0] == b[s][0]).all() for s in (0, 5, 99))
    assert not (a[0][0] == TrainWindows(tokens, 16, 8, seed=4)[0][0]).all()
    x, y = a[7]
    assert (x[:, 1:] == y[:, :-1]).all() and ((y - x) == 1).all()  # windows are contiguous
    # two ranks draw disjoint sample ids that together equal the 1-rank ids of a doubled batch
    r0, r1 = TrainWindows(tokens, 16, 4, 3, 0, 2), TrainWindows(tokens, 16, 4, 3, 1, 2)
    one = TrainWindows(tokens, 16, 8, 3)
    assert sorted(np.r_[r0.sample_ids(5), r1.sample_ids(5)]) == sorted(one.sample_ids(5))


def test_eval_windows_predict_every_token_but_the_first_once():
    tokens = np.arange(1003, dtype=np.uint16)
    targets = []
    for rank in range(3):
        ds = EvalWindows(tokens, 64, rank=rank, world_size=3)
        for i in range(len(ds)):
            x, y = ds[i]
            keep = y != -100
            assert (y[keep] == x[keep] + 1).all()
            targets += y[keep].tolist()
    assert sorted(targets) == list(range(1, 1003))


def test_frequency_deciles_hold_a_tenth_of_the_tokens_each(cache_dir):
    dm = TokenDataModule(vocab_size=512, cache_dir=str(cache_dir))
    buckets, p = dm.token_decile(), dm.unigram
    mass = [float(p[buckets[: len(p)] == k].sum()) for k in range(10)]
    assert sum(mass) == pytest.approx(1.0)
    assert mass[0] > 0.05 and max(mass) < 0.25  # one very frequent type can overfill a bucket a little
    assert dm.model_vocab_size % 64 == 0 and dm.model_vocab_size >= dm.real_vocab_size


def test_hf_source_through_a_local_dataset_directory(tmp_path):
    """`hf:` is datasets.load_dataset; a local directory of jsonl files exercises the same code path offline."""
    import json
    rows = [{"story": f"once upon a time number {i} there was a fox .", "id": i} for i in range(60)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[50:]))
    c = load_corpus(f"hf:{tmp_path}", text_column="story")
    assert len(c.docs["train"]) == 50 and len(c.docs["valid"]) == 10
    assert c.docs["test"] == c.docs["valid"]  # no test split: the validation split stands in
    assert all(d.endswith("\n") for d in c.docs["train"])
    with pytest.raises(WidthlabError, match="no column 'text'"):
        load_corpus(f"hf:{tmp_path}")
