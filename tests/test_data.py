"""The text data path: PTB and text: corpora, the BPE tokenizer and token cache (reuse, invalidation, held-out
splits), hf: streaming and its resume position, document separators, the samplers and bad-source errors. Pre-tokenised
(tokens:) shards are in test_data_tokens.py, the streaming build at scale in test_data_build.py."""
import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer

from widthlab import WidthlabError
from widthlab.data import TokenDataModule
from widthlab.data.cache import build_or_load, load_split, read_meta
from widthlab.data.sampling import EvalWindows, TrainWindows
from widthlab.data.sources import load_corpus, text_stats

TEXT = "the quick brown fox jumps over the lazy dog . a stitch in time saves nine .\n"


@pytest.fixture
def text_corpus(tmp_path):
    for split, k in [("train", 300), ("valid", 30), ("test", 30)]:
        (tmp_path / f"{split}.txt").write_text("".join(f"{TEXT.strip()} {i % 7}\n" for i in range(k)))
    return f"text:{tmp_path}/*.txt"


def _lines(n, seed=0):
    rng = np.random.default_rng(seed)
    words = TEXT.split()
    return "".join(" ".join(rng.choice(words, 12)) + f" {i}\n" for i in range(n))


def test_ptb_word_counts_match_the_mikolov_setup():
    c = load_corpus("ptb")
    # words + <eos>, the denominators of PTB word perplexity
    assert [text_stats(c[s])["words"] for s in ("train", "valid", "test")] == [929589, 73760, 82430]


def test_ptb_tokens_are_identical_to_earlier_versions(tmp_path):
    """Every committed PTB result used BPE-2048 or -4096 from the non-streaming cache (format 1): the streaming
    build must give byte-identical token files (blake2b-128 of each split's uint16 file, taken from format 1)."""
    path = build_or_load("ptb", 2048, cache_dir=str(tmp_path), progress=False)
    meta = read_meta(path)
    sums = {s: [sh["checksum"] for sh in meta["splits"][s]["shards"]] for s in ("train", "valid", "test")}
    assert sums == {"train": ["5115de377b2c685c9c81a1db98130917"], "valid": ["b6f2de3de29dedea7700cc5bd3a65b52"],
                    "test": ["b506ce79442b23a90bda4ecbbd21448a"]}
    assert [meta["splits"][s]["tokens"] for s in ("train", "valid", "test")] == [1456590, 113749, 128232]
    assert [meta["splits"][s]["words"] for s in ("train", "valid", "test")] == [929589, 73760, 82430]


def test_tokenizer_and_cache_round_trip(text_corpus, tmp_path):
    path = build_or_load(text_corpus, vocab_size=300, cache_dir=str(tmp_path / "cache"), progress=False)
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ids = load_split(path, "valid")
    assert tok.decode(np.asarray(ids).tolist()) == open(tmp_path / "valid.txt").read()
    meta = read_meta(path)
    assert meta["splits"]["valid"]["tokens"] == len(ids)
    assert sum(meta["unigram_counts"]) == meta["splits"]["train"]["tokens"]
    assert meta["splits"]["valid"]["bytes_per_token"] == pytest.approx(os.path.getsize(tmp_path / "valid.txt") / len(ids))


def test_cache_is_reused_invalidated_and_verified(text_corpus, tmp_path):
    cache = str(tmp_path / "cache")
    a = build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False)
    assert build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False) == a
    assert build_or_load(text_corpus, vocab_size=310, cache_dir=cache, progress=False) != a  # other tokenizer
    with open(tmp_path / "train.txt", "a") as f:  # other content
        f.write("an entirely new line of text\n")
    b = build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False)
    assert b != a
    # flip one byte: opening checks sizes only (no re-read); verify=True re-hashes, detects it and rebuilds
    fn = os.path.join(b, read_meta(b)["splits"]["train"]["shards"][0]["file"])
    raw = bytearray(open(fn, "rb").read())
    raw[10] ^= 0xFF
    open(fn, "wb").write(bytes(raw))
    assert build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False) == b
    assert open(fn, "rb").read() == bytes(raw)
    c = build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False, verify=True)
    assert c == b and open(fn, "rb").read() != bytes(raw)
    # a truncated shard fails the size check on a plain open and is rebuilt
    open(fn, "r+b").truncate(10)
    assert build_or_load(text_corpus, vocab_size=300, cache_dir=cache, progress=False) == b
    assert os.path.getsize(fn) == read_meta(b)["splits"]["train"]["shards"][0]["tokens"] * 2
    assert not [d for d in os.listdir(cache) if d.startswith(".")]  # no build directories left behind


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
        build_or_load(f"text:{tmp_path}/small.txt", vocab_size=5000, cache_dir=str(tmp_path / "c"), progress=False)
    (tmp_path / "more.txt").write_text(_lines(400))
    ok = build_or_load(f"text:{tmp_path}/more.txt", 300, cache_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(WidthlabError, match="separator '<sep>' is not a token"):
        build_or_load(f"text:{tmp_path}/more.txt", tokenizer_path=os.path.join(ok, "tokenizer.json"),
                      cache_dir=str(tmp_path / "c"), progress=False, doc_separator="<sep>")
    with pytest.raises(WidthlabError, match="holdout_docs"):
        build_or_load(f"text:{tmp_path}/more.txt", 300, cache_dir=str(tmp_path / "c"), holdout_docs=0)


def test_held_out_splits_are_fixed_size_deterministic_and_disjoint(tmp_path):
    (tmp_path / "all.txt").write_text(_lines(3000))
    src = f"text:{tmp_path}/all.txt"
    docs = load_corpus(src)
    a = build_or_load(src, 300, cache_dir=str(tmp_path / "c"), progress=False, holdout_docs=40, holdout_every=10)
    meta = read_meta(a)
    assert [meta["splits"][s]["docs"] for s in ("valid", "test")] == [40, 40]
    assert meta["splits"]["train"]["docs"] == 3000 - 80
    # the default (1000 documents each from 1 in 20) cannot fill from 3000: every candidate is taken, in turn
    train, nv, nt = set(docs["train"]), len(docs["valid"]), len(docs["test"])
    assert abs(nv - nt) <= 1 and 100 < nv + nt < 200 and not (set(docs["valid"]) & set(docs["test"]))
    assert not (train & set(docs["valid"])) and load_corpus(src) == docs   # deterministic
    b = build_or_load(src, 300, cache_dir=str(tmp_path / "c2"), progress=False, holdout_docs=40, holdout_every=10)
    assert read_meta(b)["splits"]["test"]["shards"][0]["checksum"] == meta["splits"]["test"]["shards"][0]["checksum"]


def test_hf_source_is_streamed_and_never_reuses_validation_as_test(tmp_path):
    """`hf:` streams datasets.load_dataset; a local directory of jsonl files exercises the same code path offline."""
    ds = tmp_path / "ds"
    ds.mkdir()
    rows = [{"story": f"once upon a time number {i} there was a fox .", "id": i} for i in range(600)]
    (ds / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:500]))
    (ds / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[500:]))
    c = load_corpus(f"hf:{ds}", text_column="story")
    assert len(c["valid"]) == 100 and 10 < len(c["test"]) < 60  # about 1 in 20 of 500 train documents
    assert not set(c["test"]) & set(c["valid"]) and not set(c["test"]) & set(c["train"])
    assert len(c["train"]) + len(c["test"]) == 500 and all(d.endswith("\n") for d in c["train"])
    with pytest.raises(WidthlabError, match="no column 'text'"):
        load_corpus(f"hf:{ds}")
    with pytest.raises(WidthlabError, match="column 'id' holds int, not text"):
        load_corpus(f"hf:{ds}", text_column="id")
    # a token budget: exactly the first N training tokens of the stream, a document separator after each document
    full = build_or_load(f"hf:{ds}", 300, text_column="story", cache_dir=str(tmp_path / "c"), progress=False,
                         doc_separator="<|endoftext|>")
    cut = build_or_load(f"hf:{ds}", 300, text_column="story", cache_dir=str(tmp_path / "c"), progress=False,
                        doc_separator="<|endoftext|>", max_train_tokens=1000)
    a, b = np.asarray(load_split(full, "train")), np.asarray(load_split(cut, "train"))
    assert len(b) == 1000 and (a[:1000] == b).all()
    tok = Tokenizer.from_file(os.path.join(full, "tokenizer.json"))
    sep = tok.token_to_id("<|endoftext|>")
    assert (a == sep).sum() == read_meta(full)["splits"]["train"]["docs"] and a[-1] == sep
    assert tok.decode(a[: int(np.argmax(a == sep))].tolist()) == c["train"][0]


def test_a_literal_separator_inside_a_document_is_text(tmp_path):
    # One document quotes "<|endoftext|>": the separator token still appears once per document, and the quote
    # decodes back as written.
    docs = [f"story {i} about a fox and a dog" for i in range(400)]
    docs[7] = "the tag <|endoftext|> ends a document in gpt-2 data"
    (tmp_path / "c.txt").write_text("\n".join(docs) + "\n")
    path = build_or_load(f"text:{tmp_path / 'c.txt'}", 300, cache_dir=str(tmp_path / "c"), progress=False,
                         doc_separator="<|endoftext|>")
    a = np.asarray(load_split(path, "train"))
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    sep = tok.token_to_id("<|endoftext|>")
    assert (a == sep).sum() == read_meta(path)["splits"]["train"]["docs"]
    assert "the tag <|endoftext|> ends a document" in tok.decode(a.tolist(), skip_special_tokens=True)  # as text


def test_a_stream_position_is_trusted_only_from_the_same_datasets_and_while_it_moves():
    import datasets

    from widthlab.data.sources import _Rows

    class Frozen:  # datasets 5.0.x after load_state_dict: the state no longer follows the stream
        def load_state_dict(self, state):
            self.loaded = state

        def state_dict(self):
            return {"shard_example_idx": 7}
    starts = []
    gen = lambda ds, skip: starts.append(skip) or iter(["a\n", "b\n"])  # noqa: E731
    here = {"datasets": datasets.__version__, "state": {"shard_example_idx": 7}}
    rows = _Rows(Frozen, gen, 7, here)
    assert rows.resumed and starts == [0] and rows.position() == here  # nothing given out yet: where it resumed
    assert next(rows) == "a\n"
    assert rows.position() is None  # a frozen state is not recorded: the next resume re-reads and skips
    other = _Rows(Frozen, gen, 7, {"datasets": "0.0.1", "state": {"shard_example_idx": 7}})
    assert not other.resumed and starts[-1] == 7  # another version's state: re-read and skip 7 documents
    assert other.position() == {"datasets": datasets.__version__, "state": {"shard_example_idx": 7}}


def test_a_stream_position_the_stream_cannot_take_falls_back_to_skipping():
    import datasets

    from widthlab.data.sources import _Rows

    class Lazy:  # datasets stores a loaded state and applies it only when iteration starts
        loaded = None

        def load_state_dict(self, state):
            self.loaded = state

        def state_dict(self):
            return {"n": 0}

    def gen(ds, skip):
        starts.append(skip)
        if ds.loaded is not None:
            raise ValueError("state from another shard layout")  # raised at the first document, not at the load
        yield from ["a\n", "b\n", "c\n"][skip:]
    starts = []
    rows = _Rows(Lazy, gen, 2, {"datasets": datasets.__version__, "state": {"n": 99}})
    assert not rows.resumed and list(rows) == ["c\n"] and starts == [0, 2]  # re-read from the start, skipping 2


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


def test_a_token_budget_counts_only_the_text_it_keeps(tmp_path):
    """max_train_tokens cuts the stream inside a batch (and inside a document): bytes, words and documents are
    those of the kept tokens, so bytes_per_token stays the corpus's (it was the whole batch's text / 1000)."""
    (tmp_path / "all.txt").write_text(_lines(3000))
    src = f"text:{tmp_path}/all.txt"
    full = read_meta(build_or_load(src, 300, cache_dir=str(tmp_path / "c"), progress=False))["splits"]["train"]
    cut = build_or_load(src, 300, cache_dir=str(tmp_path / "c"), progress=False, max_train_tokens=1000)
    st = read_meta(cut)["splits"]["train"]
    tok = Tokenizer.from_file(os.path.join(cut, "tokenizer.json"))
    kept = tok.decode(np.asarray(load_split(cut, "train")).tolist())
    assert st["tokens"] == 1000 and not kept.endswith("\n")  # the budget ends inside a document
    assert (st["bytes"], st["words"], st["docs"]) == (len(kept.encode()), text_stats([kept])["words"],
                                                      kept.count("\n") + 1)
    assert st["bytes_per_token"] == pytest.approx(full["bytes_per_token"], rel=0.05)


def test_a_pretrained_tokenizer_encodes_whole_documents_and_adds_nothing(tmp_path, text_corpus):
    """A tokenizer.json may carry truncation, padding or a template that adds <bos> to every input: the build
    must not cut documents short, pad them or add tokens behind data.doc_separator's back."""
    from tokenizers import processors

    from widthlab.data.tokenizer import train_bpe
    tok = train_bpe(open(tmp_path / "train.txt").read().splitlines(), 300, special_tokens=["<bos>"])
    tok.save(str(tmp_path / "plain.json"))
    tok.enable_truncation(8)
    tok.enable_padding(length=64)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 256)])
    tok.save(str(tmp_path / "fancy.json"))
    plain, fancy = (build_or_load(text_corpus, tokenizer_path=str(tmp_path / f"{n}.json"),
                                  cache_dir=str(tmp_path / "c"), progress=False) for n in ("plain", "fancy"))
    for s in ("train", "valid", "test"):
        assert (np.asarray(load_split(fancy, s)) == np.asarray(load_split(plain, s))).all()
    assert Tokenizer.from_file(os.path.join(fancy, "tokenizer.json")).decode(
        np.asarray(load_split(fancy, "valid")).tolist()) == open(tmp_path / "valid.txt").read()


def test_text_files_are_split_by_the_words_in_their_names(tmp_path):
    """val/dev name validation as in hf: (val.txt was silently dropped and validation held out of train); a
    name that contains a split only inside a word (latest, contest) or names two splits is a one-line error."""
    for name, k in [("corpus.train.txt", 200), ("corpus.val.txt", 20), ("corpus-test.txt", 30)]:
        (tmp_path / name).write_text(_lines(k, seed=k))
    c = load_corpus(f"text:{tmp_path}/*.txt")
    assert [len(c[s]) for s in ("train", "valid", "test")] == [200, 20, 30]
    for bad in ("latest_notes.txt", "train_test.txt"):
        (tmp_path / bad).write_text(_lines(5))
        with pytest.raises(WidthlabError, match=bad):
            load_corpus(f"text:{tmp_path}/*.txt")
        os.remove(tmp_path / bad)


def test_bpe_never_trains_on_held_out_documents(tmp_path):
    """Validation and test held out of the train stream are held out of the BPE sample too: a word that only
    held-out documents contain gets no merge."""
    from widthlab.data.sources import Holdout
    route = Holdout(("valid", "test"), 40, 10)
    splits = [route.route(i)[0] for i in range(3000)]
    lines = _lines(3000).splitlines(keepends=True)
    (tmp_path / "all.txt").write_text("".join(("zyxwv " * 6 + ln) if s != "train" else ln
                                              for s, ln in zip(splits, lines)))
    path = build_or_load(f"text:{tmp_path}/all.txt", 400, cache_dir=str(tmp_path / "c"), progress=False,
                         holdout_docs=40, holdout_every=10)
    meta = read_meta(path)
    assert [meta["splits"][s]["docs"] for s in ("valid", "test")] == [40, 40]
    vocab = Tokenizer.from_file(os.path.join(path, "tokenizer.json")).get_vocab()
    assert not [t for t in vocab if any(m in t for m in ("yx", "xw", "wv"))], "BPE merged held-out text"
