"""OverlapMonitor inside a real (tiny, CPU) Lightning run: tags in the event file, values equal to geometry's, and
no crash when the weights stop being finite."""
import math
import glob

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from widthlab import geometry
from widthlab.callbacks import OverlapMonitor
from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT

VOCAB, REAL, T = 80, 72, 16  # 8 padding rows that must not reach the statistics
STEPS, EVERY, HIST = 6, 2, 4


class TinyLM(L.LightningModule):
    def __init__(self, tie: bool):
        super().__init__()
        self.model = GPT(ModelConfig(vocab_size=VOCAB, real_vocab_size=REAL, d_model=32, head_dim=16, n_layer=1,
                                     seq_len=T, tie_embeddings=tie))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, _ = self.model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class TinyData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, REAL, (64, T + 1), generator=g)
        counts = torch.bincount(self.tokens.flatten(), minlength=REAL).double() + 1
        self.unigram = counts / counts.sum()  # (REAL,), as the real datamodule provides it

    def train_dataloader(self):
        ds = torch.utils.data.TensorDataset(self.tokens[:, :-1], self.tokens[:, 1:])
        return torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)

    def fixed_val_batch(self, n_seq: int = 8):
        return self.tokens[:n_seq, :-1], self.tokens[:n_seq, 1:]


class PoisonAt(L.Callback):
    """Writes a NaN into E after optimizer step `step`: from there on the loss, gradients and all weights go NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.embed.weight[0, 0] = float("nan")


def run(tmp_path, tie: bool, extra=()):
    torch.manual_seed(0)
    lm, dm = TinyLM(tie), TinyData()
    mon = OverlapMonitor(every_n_steps=EVERY, hist_every_n_steps=HIST, n_seq=3, hist_pairs=500)
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="")
    trainer = L.Trainer(max_steps=STEPS, logger=logger, callbacks=[mon, *extra], accelerator="cpu", devices=1,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(lm, datamodule=dm)
    files = glob.glob(f"{tmp_path}/events.out.tfevents.*")
    assert len(files) == 1
    acc = EventAccumulator(files[0], size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return lm, dm, mon, acc


EMBED_TAGS = {f"geometry/embed/{k}" for k in ("mean_cos2", "mean_cos2_centred", "kappa", "welch_ratio", "mean_cos",
                                               "weighted_cos2", "phi_half", "phi_half_rel", "norm_cv", "erank",
                                               "stable_rank")}
PAIR_TAGS = {f"geometry/embed/{k}" for k in ("mean_abs_cos", "max_abs_cos", "welch_max_bound")}
HIDDEN_TAGS = {f"geometry/hidden/{k}" for k in ("mean_cos", "erank", "kappa", "mean_cos2", "mean_cos2_centred",
                                                 "mean_abs_cos", "max_abs_cos", "welch_max_bound")}


def unembed(tags: set[str]) -> set[str]:
    return {t.replace("/embed/", "/unembed/") for t in tags}


@pytest.mark.parametrize("tie", [False, True])
def test_monitor_logs_tags_and_values(tmp_path, tie):
    lm, dm, mon, acc = run(tmp_path, tie)
    scalar_tags = {t for t in acc.Tags()["scalars"] if t.startswith("geometry/")}
    expected = EMBED_TAGS | PAIR_TAGS | HIDDEN_TAGS | (set() if tie else unembed(EMBED_TAGS | PAIR_TAGS))
    assert scalar_tags == expected
    assert not tie or not any("/unembed/" in t for t in acc.Tags()["histograms"])  # tied: logged once, as embed

    # scalars at 0 (initialisation), every EVERY steps, and the end; pairwise stats at 0, HIST and the end
    steps = [e.step for e in acc.Scalars("geometry/embed/mean_cos2")]
    assert steps == list(range(0, STEPS + 1, EVERY))
    assert [e.step for e in acc.Scalars("geometry/embed/max_abs_cos")] == [0, HIST, STEPS]
    mats = ["embed", "hidden"] + ([] if tie else ["unembed"])
    hist_tags = {f"geometry/{m}/{k}" for m in mats for k in ("row_norms", "cos_sample")}
    assert set(acc.Tags()["histograms"]) == hist_tags
    assert [e.step for e in acc.Histograms("geometry/embed/cos_sample")] == [0, HIST, STEPS]
    h = acc.Histograms("geometry/embed/row_norms")[-1].histogram_value
    assert h.num == REAL  # padding rows excluded from the histogram too

    # the last logged value is the statistic of the final weights, padding rows excluded
    model = lm.model
    E = model.embed.weight.detach()[:REAL]
    last = {t: acc.Scalars(t)[-1].value for t in scalar_tags}  # TensorBoard stores float32
    assert last["geometry/embed/mean_cos2"] == pytest.approx(geometry.mean_cos2(E), rel=1e-6)
    assert last["geometry/embed/mean_cos2"] != pytest.approx(geometry.mean_cos2(model.embed.weight), rel=1e-4)
    assert last["geometry/embed/weighted_cos2"] == pytest.approx(geometry.weighted_cos2(E, dm.unigram), rel=1e-6)
    if not tie:
        U = model.unembedding().detach()[:REAL]
        assert last["geometry/unembed/kappa"] == pytest.approx(geometry.kappa(U), rel=1e-6)
    # hidden: final-norm states of the fixed batch, in eval mode; the monitor must leave train mode on
    assert model.training
    model.eval()
    with torch.no_grad():
        _, hid = model(dm.fixed_val_batch(3)[0])
    model.train()
    H = hid.reshape(-1, 32)
    assert last["geometry/hidden/mean_cos"] == pytest.approx(geometry.mean_cos(H), rel=1e-5, abs=1e-7)
    assert last["geometry/hidden/erank"] == pytest.approx(geometry.erank(H), rel=1e-6)
    assert last["geometry/hidden/mean_cos2_centred"] == pytest.approx(geometry.mean_cos2_centred(H), rel=1e-5)

    # `latest` holds the same final values in float64, with full tag names, for run summaries
    assert set(mon.latest) == expected
    assert mon.latest["geometry/embed/mean_cos2"] == pytest.approx(geometry.mean_cos2(E), rel=1e-12)
    again = mon.compute(lm, lm.trainer)
    assert again["geometry/embed/mean_cos2"] == pytest.approx(geometry.mean_cos2(E), rel=1e-12)
    assert "geometry/embed/max_abs_cos" not in again  # pairs only when asked


def test_compute_without_trainer_skips_hidden_and_weights():
    lm = TinyLM(tie=False)
    d = OverlapMonitor().compute(lm)
    assert {t.split("/")[1] for t in d} == {"embed", "unembed"}
    assert "geometry/embed/weighted_cos2" not in d
    U = lm.model.unembedding().detach()[:REAL]
    assert d["geometry/unembed/mean_cos2"] == pytest.approx(geometry.mean_cos2(U), rel=1e-12)


def test_non_finite_weights_give_nan_stats_not_a_crash(tmp_path):
    # Before: geometry's eigendecomposition of a NaN Gram matrix raised inside on_train_batch_end and killed the run.
    lm, dm, mon, acc = run(tmp_path, tie=False, extra=[PoisonAt(3)])
    assert lm.trainer.global_step == STEPS  # the run went on to the end
    assert set(mon.latest) == EMBED_TAGS | PAIR_TAGS | HIDDEN_TAGS | unembed(EMBED_TAGS | PAIR_TAGS)
    assert all(math.isnan(v) for v in mon.latest.values())  # every matrix is NaN by the end, every stat says so
    before = [e for e in acc.Scalars("geometry/embed/mean_cos2") if e.step <= 3]
    after = [e for e in acc.Scalars("geometry/embed/mean_cos2") if e.step > 3]
    assert before and all(math.isfinite(e.value) for e in before)
    assert [e.step for e in after] == [4, 6] and all(math.isnan(e.value) for e in after)
    # histograms of a non-finite matrix are skipped, the finite ones before it are kept
    assert [e.step for e in acc.Histograms("geometry/embed/row_norms")] == [0]
