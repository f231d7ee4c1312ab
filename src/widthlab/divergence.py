"""The divergence check without a host sync per step: a non-finite loss or gradient is a result, not a crash.

Each optimizer step folds "every micro-batch loss finite" and "every gradient finite" into device tensors; nothing
waits for the device. A bad update is then skipped one of two ways:

- On the device, when the optimizer can skip a step itself: a fused AdamW takes a `found_inf` tensor (the one
  torch's GradScaler hands it) and its kernel leaves weights, moments and step count untouched when it is 1. The
  flag is sticky: from the first bad step on, every update is skipped, so the weights stay the last good ones however
  late the host looks. The host reads it (one sync) on the logging cadence and before anything is kept (a validation,
  a checkpoint, the end of the fit): see LitGPT.on_train_batch_end.
- On the host, otherwise (the CPU default, a foreach AdamW, has no `found_inf`; an intervention's after_step moves
  the weights outside the optimizer; a GradScaler owns `found_inf` under fp16): the flag is read at once, every step
  (free on a CPU), and the gradients are dropped, so AdamW skips every parameter.

Either way the run records the first bad step and what was bad, and stops before any later validation or checkpoint.
"""
from __future__ import annotations

import torch


class DivergenceGuard:
    def __init__(self):
        self._loss_ok: torch.Tensor | None = None  # every micro-batch loss of this optimizer step finite
        self._first: torch.Tensor | None = None    # int64: the first bad step, -1 while none
        self._what: torch.Tensor | None = None     # int64: 1 = the loss was not finite, 2 = only the gradients
        self.found_inf: torch.Tensor | None = None  # float32 0/1, sticky: a fused optimizer skips while it is 1
        self.step: int | None = None               # the first bad step, once the host has read it
        self.what = ""                             # "loss" or "gradients"
        self.reads = 0                             # host reads so far (tests count them)

    def observe_loss(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss.detach())
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok

    def observe_step(self, grads: list[torch.Tensor], step: int) -> None:
        """After backward, before clipping and the update of optimizer step `step`; no host sync."""
        loss_ok = self._loss_ok
        self._loss_ok = None
        device = grads[0].device if grads else loss_ok.device if loss_ok is not None else torch.device("cpu")
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=device)
            self._what = torch.zeros((), dtype=torch.long, device=device)
            self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        if loss_ok is None:
            loss_ok = torch.ones((), dtype=torch.bool, device=device)
        # max |g| is finite iff every entry is (NaN propagates through max): one multi-tensor kernel for all
        # gradients, not two small ones per parameter.
        grad_ok = (torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all() if grads
                   else torch.ones((), dtype=torch.bool, device=device))
        new = ~(loss_ok & grad_ok) & (self._first < 0)
        # python scalars in torch.where are kernel arguments, not host-to-device copies
        self._first.copy_(torch.where(new, step, self._first))
        self._what.copy_(torch.where(new, torch.where(loss_ok, 2, 1), self._what))
        self.found_inf.copy_((self._first >= 0).float())

    def read(self) -> int | None:
        """The first bad step (host sync), or None; once found it stays found."""
        if self.step is None and self._first is not None:
            self.reads += 1
            first, what = torch.stack([self._first, self._what]).tolist()
            if first >= 0:
                self.step, self.what = first, "loss" if what == 1 else "gradients"
        return self.step
