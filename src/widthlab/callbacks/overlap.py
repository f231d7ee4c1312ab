"""OverlapMonitor: log how the token representations overlap as training goes (scalars often, histograms rarely).

A thin adapter around `widthlab.geometry`: it picks the matrices out of the GPT, drops padding rows, and hands
the numbers to whatever loggers the Trainer has. Matrices:
  embed   E = model.embed.weight[:real_vocab_size]
  unembed U = model.unembedding()[:real_vocab_size]   (skipped when tied to E, or when the head has no matrix)
  hidden  last-layer states (after the final norm) on a fixed validation batch, rows (B·T, m); only when the
          datamodule has `fixed_val_batch(n_seq)`
Tags: geometry/<matrix>/<name> with the names of `geometry.summary`; hidden logs mean_cos (anisotropy),
erank, kappa, mean_cos2 and mean_cos2_centred (the overlap left once the shared direction is removed).
Every `hist_every_n_steps` also mean_abs_cos, max_abs_cos, welch_max_bound (pairs,
O(n²m)) and, on a TensorBoardLogger, histograms geometry/<matrix>/row_norms and geometry/<matrix>/cos_sample.

Cost (benchmarks/overlap_cost.py, 2 busy CPU threads, d=128, n=4096, T=128, L=2, B=32): scalars ≈ 0.06 train
steps, pairs + histograms ≈ 0.75 steps, so the defaults (every 25 / 500 steps) cost ≈ 0.4 % of training time.

A matrix with a non-finite entry (a diverging run), or one whose eigendecomposition fails, gets NaN for every
statistic it had so far and no histogram: the monitor never stops a run.
"""
from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from widthlab import WidthlabError, geometry

HIDDEN_STATS = ("mean_cos", "erank", "kappa", "mean_cos2", "mean_cos2_centred")
PAIR_STATS = ("mean_abs_cos", "max_abs_cos", "welch_max_bound")


class OverlapMonitor(Callback):
    """Logs geometry/{embed,unembed,hidden}/<stat> on a cadence; keeps the latest values in `self.latest`.

    Args:
        every_n_steps: scalar cadence in optimizer steps (also logged at step 0 and at the end of training).
        hist_every_n_steps: cadence of the pairwise statistics and the histograms (0 disables them).
        n_seq: sequences in the fixed validation batch used for `hidden`.
        hist_pairs: random pairs (i ≠ j) drawn for the cos_sample histogram; the same pairs every time.
        block_rows: row-block size of the pairwise pass (memory ∝ block_rows²).
        seed: seed of the pair sample.
    """

    def __init__(self, every_n_steps: int = 25, hist_every_n_steps: int = 500, n_seq: int = 8,
                 hist_pairs: int = 20000, block_rows: int = 4096, seed: int = 0):
        super().__init__()
        if every_n_steps < 1 or hist_every_n_steps < 0:
            raise WidthlabError(f"OverlapMonitor cadences must be every_n_steps ≥ 1, hist_every_n_steps ≥ 0 "
                                f"(got {every_n_steps}, {hist_every_n_steps})")
        self.every_n_steps, self.hist_every_n_steps = every_n_steps, hist_every_n_steps
        self.n_seq, self.hist_pairs, self.block_rows, self.seed = n_seq, hist_pairs, block_rows, seed
        self.latest: dict[str, float] = {}
        self._val_batch: torch.Tensor | None = None
        self._last_step = self._last_hist_step = -1  # log once per step (gradient accumulation, on_train_end)

    # --- the pure part: which matrices, and their numbers ------------------------------------------------
    def matrices(self, pl_module: LightningModule, trainer: Trainer | None = None) -> dict[str, torch.Tensor]:
        """{"embed": E, "unembed": U, "hidden": H}, padding rows dropped, each (rows, m), detached."""
        model = pl_module.model
        n_real = model.cfg.real_vocab_size
        out: dict[str, torch.Tensor] = {}
        E = getattr(model.embed, "weight", None)  # an intervention may have swapped embed for something else
        if isinstance(E, torch.Tensor) and E.dim() == 2:
            out["embed"] = E.detach()[:n_real]
        U = model.unembedding()
        if U is not None and U is not E and U.dim() == 2:  # tied: already logged as embed
            out["unembed"] = U.detach()[:n_real]
        x = self._fixed_batch(pl_module, trainer)
        if x is not None:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    _, h = model(x)
            finally:
                model.train(was_training)
            out["hidden"] = h.reshape(-1, h.shape[-1])
        return out

    def _fixed_batch(self, pl_module: LightningModule, trainer: Trainer | None) -> torch.Tensor | None:
        if self._val_batch is None:
            dm = getattr(trainer, "datamodule", None) if trainer is not None else None
            if dm is None or not hasattr(dm, "fixed_val_batch"):
                return None
            self._val_batch = dm.fixed_val_batch(self.n_seq)[0]  # (x, y): only the inputs matter here
        return self._val_batch.to(pl_module.device)

    @staticmethod
    def _unigram(trainer: Trainer | None, rows: int) -> torch.Tensor | None:
        p = getattr(getattr(trainer, "datamodule", None), "unigram", None)
        return p if isinstance(p, torch.Tensor) and p.shape == (rows,) else None

    def compute(self, pl_module: LightningModule, trainer: Trainer | None = None,
                pairs: bool = False) -> dict[str, float]:
        """All scalars as {"geometry/<matrix>/<name>": value}; also stored in `self.latest`."""
        return self._scalars(self.matrices(pl_module, trainer), trainer, pairs)

    def histograms(self, pl_module: LightningModule, trainer: Trainer | None = None) -> dict[str, torch.Tensor]:
        """{"geometry/<matrix>/row_norms": (rows,), "geometry/<matrix>/cos_sample": (hist_pairs,)}."""
        return self._hists(self.matrices(pl_module, trainer))

    def _scalars(self, mats: dict[str, torch.Tensor], trainer: Trainer | None, pairs: bool) -> dict[str, float]:
        d: dict[str, float] = {}
        for name, W in mats.items():
            p = None if name == "hidden" else self._unigram(trainer, W.shape[0])
            try:
                if not torch.isfinite(W).all():
                    raise torch.linalg.LinAlgError("non-finite entries")
                s = geometry.summary(W, p=p, pairs=pairs, block_rows=self.block_rows)
            except torch.linalg.LinAlgError:  # NaN, not a crash: a diverging run still gets its summary written
                prefix = f"geometry/{name}/"
                s = {k[len(prefix):]: float("nan") for k in self.latest if k.startswith(prefix)
                     and (pairs or k.rsplit("/", 1)[1] not in PAIR_STATS)}
            if name == "hidden":  # rows are contexts, not tokens: norms and frequency weights mean nothing here
                s = {k: v for k, v in s.items() if k in HIDDEN_STATS + PAIR_STATS}
            d.update({f"geometry/{name}/{k}": v for k, v in s.items()})
        self.latest.update(d)
        return d

    def _hists(self, mats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h: dict[str, torch.Tensor] = {}
        for name, W in mats.items():
            if not torch.isfinite(W).all():
                continue
            h[f"geometry/{name}/row_norms"] = geometry.row_norms(W).cpu()
            h[f"geometry/{name}/cos_sample"] = geometry.cos_sample(W, self.hist_pairs, self.seed).cpu()
        return h

    # --- the adapter: when, and to which logger ----------------------------------------------------------
    def _measure(self, trainer: Trainer, pl_module: LightningModule, force_hist: bool = False) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero:  # weights are replicated across ranks: rank 0 suffices
            return
        scalars = step != self._last_step  # once per step, whatever gradient accumulation does
        hist = (self.hist_every_n_steps > 0 and step != self._last_hist_step
                and (force_hist or step % self.hist_every_n_steps == 0))
        if not (scalars or hist):
            return
        self._last_step = step
        mats = self.matrices(pl_module, trainer)
        d = self._scalars(mats, trainer, pairs=hist)
        if not scalars:  # this step's scalars are already logged: add only the pairwise ones
            d = {k: v for k, v in d.items() if k.rsplit("/", 1)[1] in PAIR_STATS}
        hists = self._hists(mats) if hist else {}
        if hist:
            self._last_hist_step = step
        for lg in trainer.loggers:
            lg.log_metrics(d, step=step)
            if isinstance(lg, TensorBoardLogger):  # histograms are a TensorBoard feature; others get scalars
                for tag, v in hists.items():
                    lg.experiment.add_histogram(tag, v, global_step=step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measure(trainer, pl_module)  # the geometry at initialisation is the baseline for every trend

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measure(trainer, pl_module, force_hist=True)
