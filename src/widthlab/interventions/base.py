"""The packing-idea protocol: one small class, chosen in YAML by `class_path`/`init_args`.

An intervention may use any subset of four hooks, called by the GPT and the LightningModule:

    build(model)               once, after the model is initialised: replace `model.embed` / `model.head`, add modules
    extra_loss(model, logits, hidden, targets) -> {name: scalar}   terms added to the training loss (and logged)
    after_step(model)          after every optimizer step, under no_grad: projections, decays
    param_groups(model, groups) -> groups                          adjust the optimizer's parameter groups

Parameters an intervention adds live inside the model, so parameter and FLOP counts include them automatically
(a module with a non-standard cost reports it with a `flops_per_token()` method). Raise `WidthlabError` from `build`
when the intervention does not fit the model (e.g. a head swap on a tied model): it fails before training starts.
"""
from __future__ import annotations

import torch


class Intervention:
    """Base class; every hook is a no-op."""

    def build(self, model) -> None:
        pass

    def extra_loss(self, model, logits: torch.Tensor, hidden: torch.Tensor,
                   targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self, model) -> None:
        pass

    def param_groups(self, model, groups: list[dict]) -> list[dict]:
        return groups

    @property
    def name(self) -> str:
        return type(self).__name__
