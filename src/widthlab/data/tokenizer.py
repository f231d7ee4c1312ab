"""Tokenizers: byte-level BPE (GPT-2 style) trained with `tokenizers`, or a pretrained one; vocab_size is n.

BPE trains on a bounded, deterministic sample of the training text: the first `sample_bytes` bytes of the train
stream, each document cut at `doc_chars` characters (as nanochat does). BPE's memory grows with the text it
counts, so an uncapped sample of a multi-GB corpus would need tens of GB; the merges of a 4k–50k vocabulary are
settled long before 100 MB. PTB (5 MB) fits inside the default sample whole, so its tokenizer is what it always was.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from widthlab import WidthlabError

MIN_VOCAB = 257  # the 256 byte symbols plus at least one merge


def train_bpe(docs: Iterable[str], vocab_size: int, min_frequency: int = 2, special_tokens: list[str] = (),
              length: int | None = None, show_progress: bool = False) -> Tokenizer:
    if vocab_size < MIN_VOCAB + len(special_tokens):
        raise WidthlabError(f"vocab_size={vocab_size} is below the 256 byte symbols of byte-level BPE; "
                            f"use data.vocab_size >= {MIN_VOCAB + len(special_tokens)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(special_tokens))
    if isinstance(docs, list):
        length = len(docs)
    tok.train_from_iterator(docs, trainer=trainer, length=length)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise WidthlabError(f"vocab_size={vocab_size} cannot be honoured: the train split supports only {got} "
                            f"BPE tokens at min_frequency={min_frequency}; set data.vocab_size <= {got} "
                            "(or raise data.bpe_sample_bytes)")
    return tok


def bpe_sample(docs: Iterator[str], max_bytes: int, doc_chars: int = 10_000, on_doc=None) -> Iterator[str]:
    """The first `max_bytes` bytes of a document stream, each document cut at `doc_chars` characters."""
    seen = 0
    for d in docs:
        if seen >= max_bytes:
            return
        d = d[:doc_chars]
        seen += len(d.encode("utf-8"))
        if on_doc is not None:
            on_doc(d)
        yield d


def is_hub_name(spec: str) -> bool:
    """A tokenizer spec that is not a file path: `gpt2`, `EleutherAI/pythia-70m`."""
    return not (spec.endswith(".json") or os.sep in spec.replace("/", "", 1) or spec.startswith((".", "~")))


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer.json file, or a Hugging Face hub name (needs the network, or the hub cache, the first time)."""
    if os.path.isfile(spec):
        try:
            return Tokenizer.from_file(spec)
        except Exception as e:
            raise WidthlabError(f"{spec} is not a valid tokenizers JSON file ({e})") from e
    if is_hub_name(spec):
        try:
            return Tokenizer.from_pretrained(spec)
        except Exception as e:
            raise WidthlabError(f"could not load tokenizer '{spec}' from the Hugging Face hub ({type(e).__name__}); "
                                "check the name and that you are online, or give a tokenizer.json path") from e
    raise WidthlabError(f"tokenizer file {spec} does not exist; give a tokenizer.json, a hub name (e.g. gpt2), "
                        "or leave data.tokenizer_path empty to train BPE on the corpus")


def separator_id(tok: Tokenizer, separator: str | None) -> int | None:
    if separator is None:
        return None
    i = tok.token_to_id(separator)
    if i is None:
        raise WidthlabError(f"the document separator {separator!r} is not a token of this tokenizer; set "
                            "data.doc_separator to one of its special tokens (e.g. <|endoftext|>) or to null")
    return i
