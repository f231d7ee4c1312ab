"""Helper for `param_groups` hooks: move an intervention's parameters into a named optimizer group.

The LightningModule's groups are dicts {"name": ..., "params": [...], ...}. A parameter an intervention adds lands in
"vector" (0/1-D) or "hidden" (2-D) unless the intervention says otherwise; lookup tables belong with the embedding
(under μP a table's rows have no width fan-in, so it wants the embedding's LR, not the hidden 1/width one).
"""
from __future__ import annotations

import torch


def move_params(groups: list[dict], params: list[torch.Tensor], to: str) -> list[dict]:
    """Remove `params` from every group and append them to the group named `to` (which must exist)."""
    ids = {id(p) for p in params}
    if not any(g.get("name") == to for g in groups):
        return groups  # an optimizer layout without that group: leave the module's default placement alone
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in ids]
    target = next(g for g in groups if g.get("name") == to)
    target["params"] = list(target["params"]) + list(params)
    return groups
