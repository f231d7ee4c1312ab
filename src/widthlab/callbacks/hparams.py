"""HParamsWriter: at fit end, the run's hyperparameters and final metrics go to TensorBoard's HPARAMS tab.

It reads what RunRecorder has just written (metrics.json, so the table shows the same numbers as results.csv) and
writes one session into the run's own event directory (widthlab.tb_views). Add it after RunRecorder.
"""
from __future__ import annotations

import time

import lightning as L

from widthlab import tb_views
from widthlab.archive import read_metrics


class HParamsWriter(L.Callback):
    """Writes the HPARAMS session of a run at fit end (rank 0).

    Args:
        arm: the run's arm name in the table; None = guess from runs/<sweep>/<arm>/d<width>/s<seed>
    """

    def __init__(self, arm: str | None = None):
        self.arm = arm
        self._t0 = time.time()

    def on_fit_start(self, trainer, pl_module):
        self._t0 = time.time()

    def on_fit_end(self, trainer, pl_module):
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not trainer.is_global_zero or not log_dir:
            return
        m = read_metrics(log_dir)
        hp = tb_views.run_hparams(m, dict(pl_module.hparams), self.arm, log_dir)
        tb_views.write_run_hparams(log_dir, hp, tb_views.final_metrics(m), trainer.global_step, self._t0)
