"""`python -m train coord-check`: μP's coordinate check (Tensor Programs V, microsoft/mup `get_coord_data`).

Build the recipe's model at several widths, train each for a few steps on the *same* batches at a constant peak LR,
and record the mean |x| of every activation coordinate at every step: the token embedding, each block's attention
and MLP branch outputs, each block's output (the residual stream) and the logits. Under a correct μP every curve
is flat in width (slope ≈ 0 on log-log, except the logits at init, which shrink as m^-1/2 because the readout
multiplier is 1/width_mult; once Adam has moved the head they are O(1) too); under the standard parametrisation
with Adam the branch outputs and the logits grow ~ m after a step at a width-independent LR, which is what makes
the best LR drift with width and a width sweep unfair to the wide models.

Writes `<out>/coord_check.json` (the numbers and the slopes) and `<out>/coord_check.png` (activation scale vs width,
one panel per step), both atomically. The check belongs before any width sweep, and
an arm that changes the readout (a new head) needs its own: pass its intervention in `overrides`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Any

import lightning.pytorch  # noqa: F401  (sets its logger level on import; import first so ours wins)
import numpy as np

from widthlab import WidthlabError


def _flag(key: str, value: Any) -> list[str]:
    # Same encoding as the sweep: lists and dicts (interventions) travel as JSON, which jsonargparse reads as YAML.
    return [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) or value is None else str(value)]


def _build(recipe: str, width: int, seed: int, mup_base_d_model: int | None, overrides: dict[str, Any], out: str):
    """(LitGPT, TokenDataModule, gradient_clip_val) for one width, parsed exactly as `python -m train fit` would."""
    from widthlab.data import TokenDataModule
    from widthlab.lightning_cli import WidthlabCLI
    from widthlab.module import LitGPT

    # Constant peak LR: a coord check measures the size of an update at the LR you train with, and warmup would
    # hide a blow-up behind a tiny LR for the few steps we take. Overrides may still set either.
    args = ["--config", recipe, "--model.d_model", str(width), "--seed_everything", str(seed), "--data.seed",
            str(seed), "--trainer.default_root_dir", out, "--model.warmup_steps", "0", "--model.min_lr_ratio", "1.0"]
    for k, v in overrides.items():
        args += _flag(k, v)
    if mup_base_d_model is not None:
        args += ["--model.mup_base_d_model", str(mup_base_d_model)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cli = WidthlabCLI(LitGPT, TokenDataModule, args=args, run=False, seed_everything_default=seed,
                              save_config_callback=None,
                              trainer_defaults={"use_distributed_sampler": False, "default_root_dir": out})
    except SystemExit as e:
        if e.code:
            msg = [l for l in err.getvalue().splitlines() if "error" in l.lower()] or ["invalid recipe or override"]
            raise WidthlabError(f"coord check at d_model={width}: {msg[-1].strip()}") from None
        raise
    return cli.model, cli.datamodule, cli.config.get("trainer", {}).get("gradient_clip_val")


def _layers(model) -> list[tuple[str, Any]]:
    """(name, module) whose outputs are the coordinates we track, input to output."""
    out = [("embed", model.embed)]
    for i, b in enumerate(model.blocks):
        out += [(f"blocks.{i}.attn", b.attn), (f"blocks.{i}.mlp", b.mlp), (f"blocks.{i}", b)]
    return out + [("logits", model.head)]


def _record(module, datamodule, steps: int, clip: float | None, out: str) -> dict[str, list[float]]:
    """Train `steps` steps with Lightning; {layer: [mean |x| in the forward of step 0 (init), 1, ..., steps-1]}."""
    import lightning as L

    rec: dict[str, list[float]] = {}

    def hook(name):
        def fn(mod, inputs, output):
            if mod.training:  # training forwards only; there are no others here, but be explicit
                x = output[0] if isinstance(output, tuple) else output
                rec.setdefault(name, []).append(float(x.detach().float().abs().mean()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in _layers(module.model)]
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, devices=1,
                        use_distributed_sampler=False, gradient_clip_val=clip, default_root_dir=out)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        for h in handles:
            h.remove()
    bad = {n: len(v) for n, v in rec.items() if len(v) != steps}
    if bad:  # e.g. an intervention that calls a module twice per forward: the per-step series would be wrong
        raise WidthlabError(f"expected one forward per step for each tracked module, got {bad}")
    return rec


def _slope(widths: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y on log width: 0 = width-independent, 1 = grows ∝ width."""
    y = np.asarray(ys, dtype=np.float64)
    if len(widths) < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return float("nan")
    return float(np.polyfit(np.log(widths), np.log(y), 1)[0])


def _plot(result: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    widths, steps, l1 = result["widths"], result["steps"], result["l1"]
    shown = sorted({round(i * (steps - 1) / max(1, min(steps, 6) - 1)) for i in range(min(steps, 6))})
    fig = Figure(figsize=(3.2 * len(shown), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, t in zip(axes, shown):
        for j, name in enumerate(result["layers"]):
            ys = [l1[name][str(w)][t] for w in widths]
            ax.plot(widths, ys, marker="o", ms=3, color=f"C{j % 10}", ls="-" if j < 10 else "--",
                    label=f"{name} ({result['slopes'][name][t]:+.2f})" if t == shown[-1] else name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"step {t}" + (" (init)" if t == 0 else ""))
        ax.set_xlabel("d_model")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean |x|")
    axes[-1].legend(fontsize=6, title="layer (slope)", title_fontsize=6)
    base = result["mup_base_d_model"]
    fig.suptitle(f"coord check {os.path.basename(result['recipe'])}: "
                 + (f"μP, base d_model {base}" if base else "standard parametrisation"))
    tmp = f"{path}.tmp-{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def coord_check(*, recipe: str, widths: list[int], steps: int = 5, mup_base_d_model: int | None = None,
                out: str = "runs/coord_check", seed: int = 0, overrides: dict[str, Any] | None = None) -> dict:
    """μP coordinate check: mean |activation| per layer vs width over the first few training steps.

    Every width trains on the same batches (data.seed = seed) at a constant learning rate (warmup 0, no decay)
    with the recipe's optimizer groups, clipping and interventions. Slopes are least-squares fits of
    log mean|x| on log d_model at each step: ≈ 0 for every layer means μP holds; SP's branch outputs and logits
    grow with slope ≈ 1 after the first update.

    Args:
        recipe: A fit recipe (LightningCLI YAML), e.g. recipes/ptb_width.yaml.
        widths: d_model values to compare (multiples of model.head_dim), e.g. [32, 64, 128, 256].
        steps: Training steps per width; step 0 is the forward at init.
        mup_base_d_model: μP base width (usually the smallest width); None keeps the recipe's setting, which is
            the standard parametrisation unless the recipe sets model.mup_base_d_model.
        out: Directory for coord_check.json and coord_check.png.
        seed: Seed of the init and of the data windows (the same for every width).
        overrides: Dotted recipe overrides, as in a sweep arm, e.g. {"model.lr": 0.01, "model.n_layer": 1}.

    Returns:
        {"recipe", "widths", "steps", "mup_base_d_model", "seed", "overrides", "layers",
         "l1": {layer: {width: [mean |x| per step]}}, "slopes": {layer: [slope per step]}, "json", "png"}.
    """
    widths = list(widths)
    if not widths or len(set(widths)) != len(widths) or min(widths) <= 0:
        raise WidthlabError(f"widths must be distinct positive d_model values (got {widths}), e.g. [32, 64, 128]")
    if len(widths) < 2:
        raise WidthlabError("a coord check compares widths: give at least two, e.g. [32, 64, 128, 256]")
    if steps < 1:
        raise WidthlabError(f"steps must be >= 1 (got {steps})")
    if not os.path.isfile(recipe):
        raise WidthlabError(f"recipe {recipe} does not exist; point --recipe at a fit recipe in recipes/")
    overrides = dict(overrides or {})
    widths = sorted(widths)
    os.makedirs(out, exist_ok=True)
    l1: dict[str, dict[str, list[float]]] = {}
    layers: list[str] = []
    base = mup_base_d_model
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one "GPU available…" banner per width drowns the table
    try:
        for w in widths:
            module, dm, clip = _build(recipe, w, seed, mup_base_d_model, overrides, out)
            base = module.cfg.mup_base_d_model
            layers = [n for n, _ in _layers(module.model)]
            for name, series in _record(module, dm, steps, clip, out).items():
                l1.setdefault(name, {})[str(w)] = series
    finally:
        quiet.setLevel(level)
    slopes = {n: [_slope(widths, [l1[n][str(w)][t] for w in widths]) for t in range(steps)] for n in layers}
    json_path, png_path = os.path.join(out, "coord_check.json"), os.path.join(out, "coord_check.png")
    result = {"recipe": recipe, "widths": widths, "steps": steps, "mup_base_d_model": base, "seed": seed,
              "overrides": overrides, "layers": layers, "l1": l1, "slopes": slopes,
              "json": json_path, "png": png_path}
    _plot(result, png_path)
    tmp = f"{json_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:  # NaN slopes (a zero activation) are written as null, valid JSON
        json.dump({**result, "slopes": {n: [None if math.isnan(s) else s for s in v] for n, v in slopes.items()}},
                  f, indent=2)
    os.replace(tmp, json_path)
    print(f"coord check ({'μP base ' + str(base) if base else 'SP'}), slope of log mean|x| vs log d_model:")
    print(f"  {'layer':<16}" + "".join(f"{'step ' + str(t):>9}" for t in range(steps)))
    for n in layers:
        print(f"  {n:<16}" + "".join(f"{s:>+9.2f}" for s in slopes[n]))
    print(f"wrote {json_path} and {png_path}")
    return result
