"""The streaming, resumable build of a token cache: documents in batches → tokens appended to shards.

Memory stays flat whatever the corpus size: a batch of documents (≈ `batch_bytes` of text) is read, tokenised by
`tokenizers` on all cores (encode_batch_fast, no offsets kept), appended to the split's open shard and dropped.
Unigram counts and byte/word counts accumulate as it goes.

Resume: every time the train shard reaches `shard_tokens`, all open shards are closed and `state.json` records
which shards are finished and how many documents of each stream they hold (written atomically, after the shards).
A build killed at any point restarts from that record: finished shards are kept, the stream skips the documents
they hold, and shards that were open are discarded (their names are `.tmp` until closed). Nothing here is ever
mistaken for a finished cache: only cache.py renames the build directory into place, after the last stream.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from widthlab.data.shards import ShardWriter, token_dtype
from widthlab.data.sources import SPLITS, Holdout, Source, Stream, text_stats


def bar_interval() -> float:
    """Seconds between progress-bar updates: live on a terminal; in a log file (a sweep point's stdout.log, a
    SLURM job's output) one line every 30 s, not thousands."""
    return 0.2 if sys.stderr.isatty() else 30.0


@dataclass
class Limits:
    max_docs: int | None = None           # documents read per stream
    max_train_tokens: int | None = None   # the first N tokens of the train split
    holdout_docs: int = 1000
    holdout_every: int = 20
    shard_tokens: int = 100_000_000       # ≈ 200 MB of uint16 per shard (llm.c / modded-nanogpt use 100M)
    batch_bytes: int = 1 << 21            # text per tokenizer call


def _batches(docs, batch_bytes: int):
    """(batch, position): documents of about `batch_bytes`, and where the stream stands after the batch's last one
    (None where the stream cannot say). The position is read before the next document is pulled."""
    where = getattr(docs, "position", lambda: None)
    batch, size = [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size >= batch_bytes:
            yield batch, where()
            batch, size = [], 0
    if batch:
        yield batch, where()


def _save_state(out: str, state: dict) -> None:
    tmp = os.path.join(out, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(out, "state.json"))


def _fresh_state(vocab: int) -> dict:
    return {"streams": {}, "shards": {s: [] for s in SPLITS},
            "stats": {s: {"tokens": 0, "bytes": 0, "words": 0, "docs": 0} for s in SPLITS},
            "unigram": [0] * vocab}


def load_state(out: str, vocab: int) -> dict:
    try:
        with open(os.path.join(out, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return _fresh_state(vocab)


def tokenize_source(source: Source, tok, out: str, limits: Limits, sep_id: int | None = None,
                    progress: bool = True) -> dict:
    """Tokenise every stream of `source` into shards under `out` (resuming from out/state.json); returns the
    final state: shards per split, their stats, the train unigram counts."""
    vocab = tok.get_vocab_size()
    dtype = token_dtype(vocab)
    state = load_state(out, vocab)
    for fn in os.listdir(out):  # shards that were open when a build was killed
        if fn.endswith(".bin.tmp"):
            os.remove(os.path.join(out, fn))
    unigram = np.asarray(state["unigram"], dtype=np.int64)
    t0, done0 = time.time(), sum(s["tokens"] for s in state["stats"].values())
    bar = tqdm(desc="tokenising", unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
               mininterval=bar_interval(),
               total=sum(s.nbytes or 0 for s in source.streams) or None, dynamic_ncols=True)
    with bar:
        bar.update(sum(state["stats"][s]["bytes"] for s in SPLITS))
        for stream in source.streams:
            rec = state["streams"].setdefault(stream.split, {"docs": 0, "done": False, "taken": {}})
            if rec["done"]:
                continue
            _run_stream(stream, tok, out, limits, sep_id, dtype, state, rec, unigram, bar, t0, done0)
    state["unigram"] = unigram.tolist()
    return state


def _run_stream(stream: Stream, tok, out, limits: Limits, sep_id, dtype, state, rec, unigram, bar, t0, done0):
    route = Holdout(stream.holdout, limits.holdout_docs, limits.holdout_every) if stream.holdout else None
    if route is not None:
        route.taken.update(rec["taken"])
    writers = {s: ShardWriter(out, s, dtype, first_index=len(state["shards"][s]))
               for s in SPLITS}
    stats, cap = state["stats"], limits.max_train_tokens
    sep = np.array([sep_id], dtype=dtype) if sep_id is not None else None
    index, pending = rec["docs"], {s: {"tokens": 0, "bytes": 0, "words": 0, "docs": 0} for s in SPLITS}
    position = rec.get("position")  # the stream's own position after document `index` (hf: streaming)
    pending_unigram = np.zeros_like(unigram)

    def checkpoint(finished: bool) -> None:
        for s, w in writers.items():
            w.close()
            state["shards"][s] += w.closed
            w.closed = []
            for k, v in pending[s].items():
                stats[s][k] += v
                pending[s][k] = 0
        unigram[:] += pending_unigram
        pending_unigram[:] = 0
        rec.update(docs=index, position=position, done=finished, taken=dict(route.taken) if route else {})
        state["unigram"] = unigram.tolist()
        _save_state(out, state)

    def full() -> bool:
        train_full = cap is not None and stats["train"]["tokens"] + pending["train"]["tokens"] >= cap
        return train_full and (route is None or all(v >= route.docs for v in route.taken.values()))

    def add(batch: list[str], encs, pos: dict | None) -> bool:
        """Route, append and count one tokenised batch; True when the stream has given all it should."""
        nonlocal index, position
        position = pos
        by_split: dict[str, list] = {s: [] for s in SPLITS}
        for split, d, e in zip(route.route(index, len(batch)) if route else [stream.split] * len(batch), batch, encs):
            by_split[split].append((d, e.ids))
        index += len(batch)
        for split, items in by_split.items():
            if not items:
                continue
            docs = [d for d, _ in items]
            parts = [np.asarray(ids, dtype=dtype) for _, ids in items]
            if sep is not None:
                parts = [p for ids in parts for p in (ids, sep)]
            arr = np.concatenate(parts)
            if split == "train" and cap is not None:  # the first `cap` tokens of the stream, exactly
                room = cap - stats["train"]["tokens"] - pending["train"]["tokens"]
                if room <= 0:
                    continue
                if room < arr.size:
                    docs = _kept_text(items, room, sep is not None, tok)
                    arr = arr[:room]
            writers[split].write(arr)
            st = text_stats(docs)
            for k in ("bytes", "words", "docs"):
                pending[split][k] += st[k]
            pending[split]["tokens"] += arr.size
            if split == "train":
                pending_unigram[:] += np.bincount(arr, minlength=len(unigram))[: len(unigram)]
        bar.update(sum(map(len, batch)))  # characters: the bar's unit, ≈ bytes
        n = sum(s["tokens"] for s in stats.values()) + sum(p["tokens"] for p in pending.values()) - done0
        bar.set_postfix_str(f"{n / 1e6:.1f}M tokens, {n / max(time.time() - t0, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
        if writers["train"].size >= limits.shard_tokens:
            checkpoint(False)
        return full() or (limits.max_docs is not None and index >= limits.max_docs)

    # A document's text is text: a literal "<|endoftext|>" in it must not become the separator token (tiktoken's
    # encode_ordinary keeps it text too); the separator is the one id appended after each document. The caller's
    # tokenizer gets its setting back.
    was, tok.encode_special_tokens = tok.encode_special_tokens, True
    try:
        _pipeline(stream, tok, index, position, limits, add)
    finally:
        tok.encode_special_tokens = was
    checkpoint(True)


def _pipeline(stream: Stream, tok, index: int, position: dict | None, limits: Limits, add) -> None:
    """Two-stage pipeline: `tokenizers` encodes batch k+1 on its thread pool (it releases the GIL) while this
    thread routes, writes and counts batch k (`add`), so the cores are not idle during the Python part."""
    docs = stream.open(index, position) if position is not None else stream.open(index)
    if index:
        how = "from its recorded position" if getattr(docs, "resumed", False) else f"re-reading {index:,} documents"
        print(f"resuming the {stream.split} stream after document {index:,} ({how})", file=sys.stderr)
    batches = _batches(docs, limits.batch_bytes)
    if limits.max_docs is not None:
        batches = _first_docs(batches, limits.max_docs - index)
    with ThreadPoolExecutor(1) as pool:
        prev = None
        for batch, pos in batches:
            # add_special_tokens=False: a pretrained tokenizer's template (<bos> per input, [CLS]…[SEP]) is not
            # applied; data.doc_separator is the one token put between documents
            job = (batch, pool.submit(tok.encode_batch_fast, batch, add_special_tokens=False), pos)
            if prev is not None and add(prev[0], prev[1].result(), prev[2]):
                return
            prev = job
        if prev is not None:
            add(prev[0], prev[1].result(), prev[2])


def _kept_text(items: list, room: int, sep: bool, tok) -> list[str]:
    """The text of a batch's first `room` tokens: whole documents, then the decoded start of the one the budget
    cuts, so the split's bytes and words are those of the tokens kept."""
    out = []
    for d, ids in items:
        if room <= 0:
            break
        out.append(d if room >= len(ids) else tok.decode(ids[:room]))
        room -= len(ids) + sep
    return out


def _first_docs(batches, n: int):
    for b, pos in batches:
        if n <= 0:
            return
        yield b[:n], pos if len(b) <= n else None  # a cut batch ends the stream: no position is needed after it
        n -= len(b)
