"""The LightningModule: one training loop for every width and every arm of a sweep.

Loss is next-token cross-entropy plus any intervention terms; the optimizer is AdamW with parameter groups
(hidden matrices, embedding, head, vectors) whose learning rates follow μP when `mup_base_d_model` is set;
the schedule is linear warmup then cosine decay to `min_lr_ratio · lr`.

Divergence is a result, not a crash: each optimizer step checks that its losses and gradients are finite. If not,
the update is skipped (widthlab.divergence: inside a fused AdamW's kernel on the device, else by dropping the
gradients after a host read), the weights stay the last good ones, `diverged_step` records the step, and training
ends before any further validation or checkpoint, so checkpoints/last.ckpt stays the last one from before the
divergence (a run that diverges before its first checkpoint gets one from Lightning's save_last at the end: the
same good weights, its step counter past them). The RunRecorder then marks metrics.json diverged and the process
exits 0. With a fused AdamW (the CUDA default) no step waits for the device: the host reads the flag on the logging
cadence and before a validation or checkpoint. (Returning None from training_step would also skip the update, but
Lightning refuses it under DDP and it keeps earlier micro-batches' gradients under accumulation; a non-finite
gradient behind a finite loss, the usual case with a huge LR, needs the gradient check anyway.)

Nothing else reads a device value per step either: train/loss is logged as a device tensor (Lightning reads it on
log_every_n_steps), the LR as a host tensor, and the progress bar gets a host copy of the loss on that cadence (a
device tensor there would be read at every bar refresh).
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import GradClipAlgorithmType

from widthlab import WidthlabError
from widthlab.device import set_tf32, use_fused
from widthlab.divergence import DivergenceGuard
from widthlab.interventions.base import Intervention
from widthlab.metrics import TokenNLL, derived
from widthlab.model import GPT, ModelConfig


def _call(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model(idx)  # through nn.Module.__call__, so forward hooks (tests, probes) still run


def forward_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, outputs: bool = False):
    """The training forward: the mean next-token cross-entropy in fp32 (under bf16 autocast the logits are bf16;
    a log-softmax over n classes wants fp32), and the logits and hidden states when `outputs` (interventions read
    them). One function, so torch.compile sees the loss too: the upcast, log-softmax and gather fuse with the head
    instead of an fp32 copy of the (B, T, n) logits going through memory outside the graph."""
    logits, hidden = model(idx)
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return (logits, hidden, ce) if outputs else (None, None, ce)


class LitGPT(L.LightningModule):
    def __init__(self, d_model: int = 64, n_layer: int = 2, head_dim: int = 32, mlp_ratio: int = 4,
                 dropout: float = 0.0, tie_embeddings: bool = False, init_std: float = 0.02,
                 mup_base_d_model: int | None = None, vocab_size: int = 4096, real_vocab_size: int | None = None,
                 seq_len: int = 128, lr: float = 3e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 50, min_lr_ratio: float = 0.1,
                 compile: bool = False, fused: bool | None = None, tf32: bool | None = None,
                 interventions: list[Intervention] | None = None):
        """
        Args:
            d_model: width m, the dial of a width sweep
            n_layer: transformer blocks (fixed across a sweep)
            head_dim: attention head size (fixed across a sweep; n_head = d_model / head_dim)
            mlp_ratio: MLP hidden size / d_model
            dropout: dropout on residual branches, attention and embeddings
            tie_embeddings: share E and U
            init_std: std of the normal init (μP scales hidden matrices by 1/sqrt(width_mult))
            mup_base_d_model: enable μP with this base width (None = standard parametrisation)
            vocab_size: rows of E/U (linked from the data: tokenizer size rounded up)
            real_vocab_size: tokens the tokenizer can emit (linked from the data)
            seq_len: context length (linked from the data)
            lr: peak learning rate (of the base width under μP)
            weight_decay: AdamW decoupled decay on matrices
            betas: AdamW betas
            warmup_steps: linear warmup steps
            min_lr_ratio: final LR as a fraction of the peak (cosine decay over trainer.max_steps)
            compile: torch.compile the model's forward (pays on GPU; off for CPU smoke runs)
            fused: fused AdamW (one kernel for all updates); null = on CUDA unless fp16 needs a GradScaler. Results
                do not depend on it; `true` on a CPU is how the tests take the GPU path
            tf32: TF32 matmuls for fp32 work; null = on CUDA (a no-op on CPU)
            interventions: packing ideas (class_path/init_args), see widthlab.interventions
        """
        super().__init__()
        self.save_hyperparameters(ignore=["interventions"])
        self.interventions = list(interventions or [])
        self.cfg = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, head_dim=head_dim,
                               seq_len=seq_len, mlp_ratio=mlp_ratio, dropout=dropout, tie_embeddings=tie_embeddings,
                               init_std=init_std, mup_base_d_model=mup_base_d_model, real_vocab_size=real_vocab_size)
        self.model = GPT(self.cfg, self.interventions)
        # The compiled callables (training: model + loss; evaluation: the model) are plain functions taking the model,
        # not submodules (torch.compile(module) would register its OptimizedModule and add a second copy of every
        # key, `_fwd._orig_mod.*`): the state_dict is the model's own keys either way, so a checkpoint loads with or
        # without compile.
        self._fwd = torch.compile(_call) if compile else _call
        self._loss_fn = torch.compile(forward_loss) if compile else forward_loss
        self.val_nll, self.test_nll = TokenNLL(), TokenNLL()
        self.register_buffer("buckets", torch.full((vocab_size,), 9, dtype=torch.long), persistent=False)
        self._guard = DivergenceGuard()
        self._device_skip = False  # a bad update is skipped on the device (fused AdamW): read the flag on cadence
        self._stepped = False      # this batch ended an optimizer step (not a micro-batch inside accumulation)

    # --- bookkeeping -----------------------------------------------------------------------------------
    @property
    def diverged_step(self) -> int | None:
        """The global step whose loss or gradients were not finite (its update skipped), once the host knows."""
        return self._guard.step

    @property
    def diverged_what(self) -> str:
        return self._guard.what

    def check_divergence(self) -> int | None:
        """Read the device's divergence flag now (one host sync; callbacks call it before they keep anything)."""
        return self._guard.read()

    @property
    def flops_per_token(self) -> int:
        return self.model.flops_per_token()

    @property
    def tokens_per_step(self) -> int:
        t = self.trainer
        return self.cfg.seq_len * t.datamodule.batch_size * t.accumulate_grad_batches * t.world_size

    def setup(self, stage: str) -> None:
        tf32 = self.hparams.get("tf32")
        set_tf32(self.trainer.strategy.root_device.type == "cuda" if tf32 is None else tf32)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "token_decile"):
            self.buckets = dm.token_decile().to(self.device)
        if dm is not None and hasattr(dm, "unigram"):
            for iv in self.interventions:
                if hasattr(iv, "set_unigram"):
                    iv.set_unigram(dm.unigram)

    # --- training ------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fwd(self.model, idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, hidden, ce = self._loss_fn(self.model, x, y, bool(self.interventions))
        loss = ce
        for iv in self.interventions:
            for name, term in iv.extra_loss(self.model, logits, hidden, y).items():
                self.log(f"train/{name}", term, sync_dist=True)
                loss = loss + term
        # The loss a baseline and any arm can be compared on. sync_dist: under DDP the logged value is the mean
        # over ranks (the global batch's loss), not rank 0's shard; a scalar all-reduce, no host sync.
        self.log("train/loss", ce, sync_dist=True)
        # a host tensor: a Python float would be copied to the device (a blocking copy) at every step
        self.log("lr", torch.tensor(self.lr_schedulers().get_last_lr()[0] if self.trainer.lr_scheduler_configs
                                    else self.hparams.lr))
        self._guard.observe_loss(loss)  # a device tensor: checked once per optimizer step, not per micro-batch
        return {"loss": loss, "ce": ce.detach()}

    def on_train_start(self) -> None:
        opt = self.trainer.optimizers[0]
        plugin = self.trainer.precision_plugin
        self._device_skip = (bool(opt.defaults.get("fused")) and getattr(plugin, "scaler", None) is None
                             and not any(type(iv).after_step is not Intervention.after_step
                                         for iv in self.interventions))

    def on_before_optimizer_step(self, optimizer) -> None:
        # Runs after backward (and the DDP all-reduce), before clipping and the update: the one place where a bad
        # step can still be skipped.
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._guard.observe_step(grads, self.trainer.global_step)
        self._stepped = True
        if self._device_skip:  # the fused kernel skips while found_inf is 1; no host sync
            optimizer.found_inf, optimizer.grad_scale = self._guard.found_inf, None
        elif self._guard.read() is not None:  # host read now: the only way to skip with this optimizer
            optimizer.zero_grad(set_to_none=True)  # no gradients: AdamW leaves every parameter as it is

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.diverged_step is not None:
            return  # the step was skipped: no projection or decay either
        with torch.no_grad():
            for iv in self.interventions:
                iv.after_step(self.model)

    def _read_due(self) -> bool:
        """Must the host read the divergence flag after this step? On the logging cadence, and before anything is
        kept: a validation (Lightning's own test for one, run right after this hook), the last step, a stop. The
        same answer on every rank (a rank that stopped alone would hang DDP): SIGTERM, which reaches ranks at
        different moments, is left to StepCheckpoint, which reads the flag in the hook all ranks reach together."""
        t = self.trainer
        if t.global_step % max(1, t.log_every_n_steps) == 0 or t.should_stop:
            return True
        if 0 < t.max_steps <= t.global_step:
            return True
        loop = t.fit_loop.epoch_loop
        try:
            return loop.batch_progress.is_last_batch or loop._should_check_val_fx(t.fit_loop._data_fetcher)
        except AttributeError:  # another Lightning: read every step rather than risk keeping a diverged state
            return True

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        stepped, self._stepped = self._stepped, False
        if self._device_skip and stepped and self._read_due():
            self._guard.read()
        if (stepped and self.trainer.progress_bar_callback is not None and outputs is not None
                and self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0):
            # The bar shows a host copy of the loss, read on the logging cadence only.
            self.log("loss", torch.tensor(float(outputs["ce"])), prog_bar=True, logger=False)
        if self.diverged_step is not None:
            # Stop before the loop's validation check: a validation here would save last.ckpt (and maybe
            # best.ckpt) at a step whose update never happened. StopIteration is how Lightning's own
            # on_train_batch_start == -1 ends an epoch; should_stop keeps a new epoch from starting.
            self.trainer.should_stop = True
            raise StopIteration

    def on_train_end(self) -> None:
        self._guard.read()  # the fit's summary (metrics.json) must know

    # --- evaluation ----------------------------------------------------------------------------------
    def _eval_step(self, batch, metric: TokenNLL) -> None:
        x, y = batch
        logits, _ = self(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
        keep = y.flatten() != -100
        metric.update(nll[keep], y.flatten()[keep], self.buckets)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_nll)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_nll)

    def _log_eval(self, metric: TokenNLL, prefix: str, split: str) -> None:
        out = metric.compute()
        metric.reset()
        loss = float(out["loss"])
        logs = {f"{prefix}/loss": loss}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "split_stats"):
            st = dm.split_stats(split)
            logs.update({f"{prefix}/{k}": v for k, v in derived(loss, st["bytes_per_token"],
                                                                 st["words_per_token"]).items()})
        for k, v in enumerate(out["bucket_loss"].tolist()):
            logs[f"{prefix}/loss_decile/{k}"] = v
        # x = the optimizer steps these weights have had, as in metrics.json; Lightning's default x here is the
        # 0-based index of the batch just trained (one less). A logged "step" is Lightning's own x-axis override.
        logs["step"] = float(self.trainer.global_step)
        self.log_dict(logs, sync_dist=False)  # already reduced across ranks by the Metric

    def on_validation_epoch_end(self):
        self._log_eval(self.val_nll, "val", "valid")

    def on_test_epoch_end(self):
        self._log_eval(self.test_nll, "test", "test")

    # --- optimizer -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp, wm = self.hparams, self.cfg.width_mult
        named = dict(self.model.named_parameters())
        embed_ids = {id(p) for m in self.model.embedding_modules() for p in m.parameters()}
        head_ids = {id(p) for p in self.model.head.parameters()} - embed_ids
        groups = {"hidden": [], "embed": [], "head": [], "vector": []}
        for name, p in named.items():
            if id(p) in embed_ids:
                groups["embed"].append(p)
            elif p.dim() < 2:
                groups["vector"].append(p)
            elif id(p) in head_ids:
                groups["head"].append(p)
            else:
                groups["hidden"].append(p)
        # μP (Adam): hidden matrices' LR shrinks as 1/width_mult; embeddings, head (whose logits carry the
        # 1/width_mult multiplier) and vectors keep the base LR.
        spec = [{"name": "hidden", "params": groups["hidden"], "lr": hp.lr / wm, "weight_decay": hp.weight_decay},
                {"name": "embed", "params": groups["embed"], "lr": hp.lr, "weight_decay": hp.weight_decay},
                {"name": "head", "params": groups["head"], "lr": hp.lr, "weight_decay": hp.weight_decay},
                {"name": "vector", "params": groups["vector"], "lr": hp.lr, "weight_decay": 0.0}]
        for iv in self.interventions:
            spec = iv.param_groups(self.model, spec)
        spec = [g for g in spec if g["params"]]
        scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None)
        fused = use_fused(hp.get("fused"), self.device, scaler is not None)
        if fused and scaler is not None and getattr(self.trainer, "gradient_clip_val", None):
            raise WidthlabError("model.fused: true cannot clip gradients under precision 16-mixed (a fused AdamW "
                                "unscales fp16 gradients inside its step); use trainer.precision bf16-mixed, or "
                                "model.fused: null")
        opt = torch.optim.AdamW(spec, betas=tuple(hp.betas), fused=fused)
        total = max(1, self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches)

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            t = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any optimizer that can unscale inside its step (a
        # fused AdamW), since under fp16 the gradients it would clip are still multiplied by the loss scale. Under
        # bf16-mixed there is no scaler: the gradients are the true ones, and clipping them is exactly Lightning's
        # own clip (Precision.clip_gradients: torch's clip over the optimizer's parameters), done here. Every other
        # case (fp16 with its scaler, fp32, other plugins) takes Lightning's path unchanged.
        plugin = self.trainer.precision_plugin
        if not (gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None):
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if gradient_clip_algorithm == GradClipAlgorithmType.VALUE:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        mine = self.state_dict()
        for k, v in checkpoint.get("state_dict", {}).items():
            if k in mine and tuple(mine[k].shape) != tuple(v.shape):
                raise WidthlabError(f"the checkpoint's {k} has shape {tuple(v.shape)} but this recipe builds "
                                    f"{tuple(mine[k].shape)}; resume with the checkpoint's own model settings "
                                    "(its config.yaml) or start a new run directory")
