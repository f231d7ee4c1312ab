"""TokenDataModule: corpus → BPE → token cache → deterministic batches, for any Lightning Trainer."""
from __future__ import annotations

import os

import lightning as L
import torch

from widthlab import WidthlabError
from widthlab.data.cache import build_or_load, load_split, raise_if_short, read_meta
from widthlab.data.sampling import EvalWindows, StepSampler, TrainWindows


class TokenDataModule(L.LightningDataModule):
    def __init__(self, source: str = "ptb", vocab_size: int = 4096, seq_len: int = 128, batch_size: int = 32,
                 eval_batch_size: int = 64, tokenizer_path: str | None = None, text_column: str = "text",
                 max_docs: int | None = None, max_train_tokens: int | None = None,
                 doc_separator: str | None = None, bpe_sample_bytes: int = 100_000_000, holdout_docs: int = 1000,
                 holdout_every: int = 20, max_eval_tokens: int | None = None, cache_dir: str = "data/cache",
                 seed: int = 1337, pad_vocab_to: int = 64, num_workers: int = 0):
        """
        Args:
            source: ptb | text:<path or glob> | hf:<id>[:<config>] (streamed) | tokens:<dir> (pre-tokenised shards)
            vocab_size: BPE vocabulary size n (ignored when tokenizer_path is given)
            seq_len: tokens per training window (the model's context)
            batch_size: windows per micro-batch on each device
            eval_batch_size: windows per validation/test batch
            tokenizer_path: a tokenizer.json, or a Hugging Face hub name (e.g. gpt2), instead of training BPE
            text_column: the text column of an hf: dataset
            max_docs: cap on documents read from each split's stream
            max_train_tokens: keep only the first N training tokens of the stream (a token budget for huge corpora)
            doc_separator: a special token put after every document (e.g. <|endoftext|>; added to a trained BPE's
                vocabulary); null: documents are concatenated as they are, each ending in a newline
            bpe_sample_bytes: BPE trains on the first this-many bytes of training text (documents cut at 10k chars)
            holdout_docs: documents held out for valid and for test, each, when the source lacks those splits
            holdout_every: held-out documents are drawn from about one in this many documents
            max_eval_tokens: evaluate only the first N tokens of valid/test (None = the whole split)
            cache_dir: where token caches live
            seed: sampling seed; windows are a pure function of (seed, step)
            pad_vocab_to: round the model's vocabulary up to a multiple of this (padding rows are never targets)
            num_workers: DataLoader workers
        """
        super().__init__()
        if seq_len <= 0 or batch_size <= 0 or eval_batch_size <= 0:
            raise WidthlabError("data.seq_len, data.batch_size and data.eval_batch_size must be positive")
        self.save_hyperparameters()
        # Lightning merges the module's and datamodule's hparams for the logger and refuses a key with two values:
        # data.vocab_size is the tokenizer's size, model.vocab_size the padded one (1000 → 1024, GPT-2's 50257 →
        # 50304), so they differ for every vocabulary that is not a multiple of pad_vocab_to. The data settings are
        # in the run's config.yaml and in TensorBoard's HPARAMS table (tb_views), so only the module's are logged here.
        self._log_hyperparams = False
        self.source, self.seq_len, self.batch_size, self.seed = source, seq_len, batch_size, seed
        self._path: str | None = None
        self._meta: dict | None = None

    # The cache is built eagerly (it is fast and offline for ptb) because the model's vocab size depends on it.
    @property
    def path(self) -> str:
        if self._path is None:
            hp = self.hparams
            self._path = build_or_load(hp.source, hp.vocab_size, hp.tokenizer_path, hp.text_column, hp.max_docs,
                                       hp.cache_dir, max_train_tokens=hp.max_train_tokens,
                                       doc_separator=hp.doc_separator, bpe_sample_bytes=hp.bpe_sample_bytes,
                                       holdout_docs=hp.holdout_docs, holdout_every=hp.holdout_every)
            self._meta = read_meta(self._path)
            for split in ("train", "valid", "test"):
                raise_if_short(self._meta["splits"][split]["tokens"], self.seq_len, split)
        return self._path

    @property
    def meta(self) -> dict:
        _ = self.path
        return self._meta

    @property
    def real_vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def model_vocab_size(self) -> int:
        k = max(1, self.hparams.pad_vocab_to)
        return -(-self.real_vocab_size // k) * k

    @property
    def tokenizer_file(self) -> str | None:
        fn = os.path.join(self.path, "tokenizer.json")
        return fn if os.path.isfile(fn) else None  # tokens: sources may come without one

    @property
    def unigram(self) -> torch.Tensor:
        c = torch.tensor(self.meta["unigram_counts"], dtype=torch.float64)
        return c / c.sum()

    def token_decile(self) -> torch.Tensor:
        """(model_vocab,) bucket 0..9 of each token: bucket k holds the types whose cumulative train frequency
        (most frequent first) falls in [k/10, (k+1)/10), so each bucket covers ~10 % of training tokens."""
        p = self.unigram
        order = torch.argsort(p, descending=True)
        cum = torch.cumsum(p[order], 0) - p[order]  # mass before each type
        buckets = torch.full((self.model_vocab_size,), 9, dtype=torch.long)
        buckets[order] = torch.clamp((cum * 10).long(), max=9)
        return buckets

    def split_stats(self, split: str) -> dict:
        return self.meta["splits"][split]

    def prepare_data(self) -> None:
        _ = self.path

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._world()
        t = self.trainer
        accum = t.accumulate_grad_batches if t is not None else 1
        ds = TrainWindows(load_split(self.path, "train"), self.seq_len, self.batch_size, self.seed, rank, world)
        if t is not None and t.max_steps > 0:
            total = t.max_steps * accum
        else:  # epoch-based: one "epoch" = about one pass over the train tokens
            total = max(1, ds.n_windows // (self.batch_size * self.seq_len * world)) * accum
        # Read the step when iteration starts, i.e. after Lightning restored a checkpoint's global_step.
        start = (lambda: t.global_step * accum) if t is not None else (lambda: 0)
        return torch.utils.data.DataLoader(ds, sampler=StepSampler(total, start), batch_size=None,
                                           num_workers=self.hparams.num_workers,
                                           pin_memory=torch.cuda.is_available())

    def _eval_loader(self, split: str):
        rank, world = self._world()
        ds = EvalWindows(load_split(self.path, split), self.seq_len, self.hparams.max_eval_tokens, rank, world)
        return torch.utils.data.DataLoader(ds, batch_size=self.hparams.eval_batch_size, shuffle=False,
                                           num_workers=self.hparams.num_workers,
                                           pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        return self._eval_loader("valid")

    def test_dataloader(self):
        return self._eval_loader("test")

    def fixed_val_batch(self, n_seq: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n_seq validation windows: a fixed batch for hidden-state geometry."""
        ds = EvalWindows(load_split(self.path, "valid"), self.seq_len)
        xs, ys = zip(*(ds[i] for i in range(min(n_seq, len(ds)))))
        return torch.stack(xs), torch.stack(ys)

    def state_dict(self) -> dict:
        # Recorded so a resume can refuse a checkpoint trained on other data; sampling itself is stateless.
        return {"cache": os.path.basename(self.path), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("cache") not in (None, os.path.basename(self.path)):
            raise WidthlabError(f"the checkpoint was trained on token cache {state['cache']}, but this recipe's data "
                                f"gives {os.path.basename(self.path)}; resume with the checkpoint's own data settings")
