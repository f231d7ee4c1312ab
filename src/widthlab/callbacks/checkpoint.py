"""StepCheckpoint: checkpoints/last.ckpt on a step cadence and on SIGTERM, for runs longer than a job's time limit.

The run's ModelCheckpoint (`checkpoint.*`) keeps best.ckpt and last.ckpt at every validation. A long run with rare
validations would lose everything since the last one when its job ends, so this callback also writes last.ckpt
every `every_n_steps` optimizer steps, and once more when the process gets SIGTERM (scancel, a pre-emption, a job
launcher stopping it): Lightning's signal connector notes the signal (`trainer.received_sigterm`) and ends the fit
after the current batch with its SIGTERMException, whose on_exception hook saves here. The state saved is then the
one between two batches, which `--ckpt_path last` resumes exactly (tests/test_device_paths.py checks it
bit-identical against an uninterrupted run). A SIGTERM during a validation keeps the previous last.ckpt.

Both callbacks write the same checkpoints/last.ckpt, so `--ckpt_path last` finds the newest. Neither writes after a
divergence: the last checkpoint stays the last good one (widthlab.divergence).
"""
from __future__ import annotations

import os
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


def _diverged(pl_module) -> bool:
    check = getattr(pl_module, "check_divergence", None)
    return check is not None and check() is not None


class StepCheckpoint(ModelCheckpoint):
    def __init__(self, every_n_steps: int | None = 1000):
        """
        Args:
            every_n_steps: write checkpoints/last.ckpt every this many optimizer steps (null: only at validations
                and on SIGTERM). A checkpoint of a d=1024 model takes seconds; 1000 steps are minutes on a GPU.
        """
        if every_n_steps is not None and every_n_steps < 1:
            from widthlab import WidthlabError
            raise WidthlabError(f"step_checkpoint.every_n_steps must be >= 1 or null (got {every_n_steps})")
        # save_top_k 0 and no epoch trigger: only last.ckpt, only on the steps (and on SIGTERM)
        # enable_version_counter off: the run's ModelCheckpoint writes the same last.ckpt, and Lightning would
        # otherwise write ours to last-v1.ckpt beside it (both callbacks are told to overwrite).
        super().__init__(save_last=True, save_top_k=0, every_n_train_steps=every_n_steps or 0, every_n_epochs=0,
                         save_on_train_epoch_end=False, enable_version_counter=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if due and not self._should_skip_saving_checkpoint(trainer) and _diverged(pl_module):
            return  # keep the last good checkpoint
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        # ModelCheckpoint saves last.ckpt at the end if *it* never saved; ours rarely has (steps < every_n_steps),
        # and after a divergence that would overwrite the last good checkpoint. The end of a fit is the run's
        # ModelCheckpoint's to save (it keeps the last good one after a divergence).
        return

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.validating:
            return
        if trainer.global_step == 0 or _diverged(pl_module):
            return
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero:
            path = os.path.relpath(self.last_model_path) if self.last_model_path else "checkpoints/last.ckpt"
            print(f"stopped by SIGTERM at step {trainer.global_step}: {path} saved; resume with --ckpt_path last",
                  file=sys.stderr, flush=True)
