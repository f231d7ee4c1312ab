"""Byte-level BPE (GPT-2 style) trained with `tokenizers` on the train split; vocab_size is n, the "features"."""
from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from widthlab import WidthlabError

MIN_VOCAB = 257  # the 256 byte symbols plus at least one merge


def train_bpe(docs: list[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    if vocab_size < MIN_VOCAB:
        raise WidthlabError(f"vocab_size={vocab_size} is below the 256 byte symbols of byte-level BPE; "
                            f"use data.vocab_size >= {MIN_VOCAB}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise WidthlabError(f"vocab_size={vocab_size} cannot be honoured: the train split supports only {got} "
                            f"BPE tokens at min_frequency={min_frequency}; set data.vocab_size <= {got}")
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.isfile(path):
        raise WidthlabError(f"tokenizer file {path} does not exist; give a tokenizer.json or leave "
                            "data.tokenizer_path empty to train BPE on the corpus")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:
        raise WidthlabError(f"{path} is not a valid tokenizers JSON file ({e})") from e
