"""The packing-idea protocol: one small class, chosen in YAML by `class_path`/`init_args`.

An intervention may use any subset of four hooks, called by the GPT and the LightningModule:

    build(model)               once, after the model is initialised: replace `model.embed` / `model.head`, add modules
    extra_loss(model, logits, hidden, targets) -> {name: scalar}   terms added to the training loss (and logged)
    after_step(model)          after every optimizer step, under no_grad: projections, decays
    param_groups(model, groups) -> groups                          adjust the optimizer's parameter groups

An intervention that needs the train split's unigram probabilities defines `set_unigram(p)`; the module calls it
in `setup`, before training. To give a parameter its own learning rate, `move_params` moves it between groups.

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

    def __repr__(self) -> str:  # shows the init args (internal state is kept in _private attributes)
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({args})"


def move_params(groups: list[dict], params: list[torch.Tensor], to: str) -> list[dict]:
    """Remove `params` from every optimizer group and append them to the group named `to`.

    The module's groups are "hidden" (LR / width_mult under μP), "embed", "head" and "vector" (no decay).
    """
    ids = {id(p) for p in params}
    if not any(g.get("name") == to for g in groups):
        return groups  # an optimizer layout without that group: leave the default placement alone
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in ids]
    target = next(g for g in groups if g.get("name") == to)
    target["params"] = list(target["params"]) + list(params)
    return groups
