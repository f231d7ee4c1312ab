"""Figures for `compare`: matplotlib's object API (no pyplot state, no display), saved as PNG and into TensorBoard.

Every plotting function takes plain arrays/dicts and returns a `Figure`. `render` draws it once to RGBA pixels,
which both the PNG and the TensorBoard image reuse (drawing dominates compare's run time, so only once).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.colors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.ticker import FormatStrFormatter

from widthlab.scaling.fit import ScalingFit
from widthlab.scaling.inference import Bootstrap

_MARKERS = "osD^v<>p*hX"  # 11, so markers and the 10 colours do not repeat together


def _plain_y(ax) -> None:
    """Losses span < 2×, so a log axis has no decade tick in range: label the minor ticks (2, 3, … 9) plainly."""
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _figure() -> Figure:
    return Figure(figsize=(6.4, 4.6), dpi=110)  # laid out in render (tight layout: every label inside the figure)


def _style(i: int) -> dict:
    # 10 colours, then the same colours again with a darker shade, so a 12-arm sweep has no two arms alike
    # (the marker cycle has a different length, which separates them further)
    color = matplotlib.colors.to_rgb(f"C{i % 10}")
    if (i // 10) % 2:
        color = tuple(0.55 * c for c in color)
    return {"color": color, "marker": _MARKERS[i % len(_MARKERS)]}


def loss_vs_width(m: np.ndarray, L: np.ndarray, arm: np.ndarray, boot: Bootstrap, joint: ScalingFit, ci: float,
                  loss: str = "val loss") -> Figure:
    """Runs (small), cell means (large), the baseline's fitted L(m) with its bootstrap band, and the other arms'
    curves from the joint fit (A per arm); log-log axes."""
    fig = _figure()
    ax = fig.add_subplot()
    grid = np.geomspace(m.min() / 1.2, m.max() * 1.2, 100)
    for i, a in enumerate(joint.arms):
        s, sel = _style(i), arm == a
        ax.scatter(m[sel], L[sel], s=10, alpha=0.35, color=s["color"], marker=s["marker"])
        ws = np.unique(m[sel])
        ax.scatter(ws, [L[sel][m[sel] == w].mean() for w in ws], s=40, color=s["color"], marker=s["marker"],
                   label=a if a != joint.baseline else f"{a} (α={boot.est['alpha']:.2f})")
        if a == joint.baseline:
            ax.plot(grid, boot.est["A"] * grid ** -boot.est["alpha"] + boot.est["E"], color=s["color"], lw=1.5)
            A, al, E = boot.samples["A"], boot.samples["alpha"], boot.samples["E"]
            ok = np.isfinite(A) & np.isfinite(al) & np.isfinite(E)
            if ok.sum() >= 10:
                curves = A[ok, None] * grid[None, :] ** -al[ok, None] + E[ok, None]
                q = (1 - ci) / 2
                ax.fill_between(grid, *np.quantile(curves, [q, 1 - q], axis=0), color=s["color"], alpha=0.15, lw=0)
        else:
            ax.plot(grid, joint.predict(grid, a), color=s["color"], lw=1, ls="--")
    lo, hi = np.nanmin(L), np.nanmax(L)
    E = boot.est["E"]
    if E > 0.5 * lo:  # draw the floor only when it is on the data's scale (E = 0 would squash the plot)
        ax.axhline(E, color="0.5", ls=":", lw=1, label=f"E = {E:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="width m (d_model)", ylabel=f"{loss} (nats/token)",
           title=f"baseline L = A·m^-α + E, {ci:.0%} band; other arms: joint fit (dashed)")
    pad = max((hi - lo) * 0.15, 0.01 * hi)
    ax.set_ylim(max(lo - pad, min(E, lo) * 0.98 if E > 0.5 * lo else lo - pad), hi + pad)
    _plain_y(ax)
    ax.legend(fontsize=8)
    return fig


def overlap_vs_width(m: np.ndarray, y: np.ndarray, arm: np.ndarray, fits: dict, col: str) -> Figure:
    """Mean cos² of normalised rows vs m per arm, its log-log fit, and a 1/m guide through the baseline."""
    fig = _figure()
    ax = fig.add_subplot()
    grid = np.geomspace(m.min() / 1.2, m.max() * 1.2, 50)
    for i, a in enumerate(list(fits) + sorted(set(arm) - set(fits))):  # fits: baseline first, as elsewhere
        s, sel = _style(i), (arm == a) & np.isfinite(y)
        f = fits.get(a)
        label = a if f is None else f"{a} (slope {f.slope:.2f} [{f.ci[0]:.2f}, {f.ci[1]:.2f}], n={f.n})"
        ax.scatter(m[sel], y[sel], s=18, color=s["color"], marker=s["marker"], label=label)
        if f is not None:
            ax.plot(grid, np.exp(f.intercept) * grid ** f.slope, color=s["color"], lw=1)
    ok = np.isfinite(y) & (y > 0)
    c = np.exp(np.mean(np.log(y[ok] * m[ok])))  # 1/m through the geometric centre of the points
    ax.plot(grid, c / grid, color="k", ls="--", lw=1, label="slope −1 guide (∝ 1/m)")
    ax.plot(grid, 1 / grid, color="0.6", ls=":", lw=1, label="1/m: random isotropic rows (κ = 1)")
    ax.set(xscale="log", yscale="log", xlabel="width m", ylabel=col, title="overlap vs width")
    ax.legend(fontsize=8)
    return fig


def multiplier(boot: Bootstrap, arms: list[str], baseline: str, key: str = "k_m") -> Figure:
    """Per-width k(m) per arm with CI error bars; the summary k (geometric mean over widths) as a horizontal
    line; 1 = no gain. key="k_int": the measured-point multipliers instead (no summary line; points outside the
    baseline's range are missing)."""
    fig = _figure()
    ax = fig.add_subplot()
    plotted = False
    for i, a in enumerate(arms):
        if a == baseline:
            continue
        s = _style(i)
        keys = sorted((int(k.rsplit("/", 1)[1]), k) for k in boot.est if k.startswith(f"{key}/{a}/"))
        keys = [(w, k_) for w, k_ in keys if np.isfinite(boot.est[k_]) and boot.est[k_] > 0]
        if not keys:  # e.g. an arm with one run so far: nothing to draw, and an empty log axis cannot be scaled
            continue
        plotted = True
        ws = np.array([w for w, _ in keys], float) * 1.02 ** (i - len(arms) / 2)  # arms side by side
        k = np.array([boot.est[k_] for _, k_ in keys])
        lo = np.array([boot.ci[k_][0] for _, k_ in keys])
        hi = np.array([boot.ci[k_][1] for _, k_ in keys])
        with np.errstate(invalid="ignore"):
            err = np.nan_to_num(np.vstack([k - lo, hi - k]), nan=0.0, posinf=0.0).clip(min=0)
        summary = key == "k_m"
        ax.errorbar(ws, k, yerr=err, color=s["color"], marker=s["marker"], capsize=3, ls="none",
                    label=f"{a}: k = {boot.est[f'k/{a}']:.3f}" if summary else a)
        if summary and np.isfinite(boot.est[f"k/{a}"]):
            ax.axhline(boot.est[f"k/{a}"], color=s["color"], lw=1, alpha=0.6)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    if not plotted:
        ax.set_ylim(0.5, 2.0)
    ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="k(m) = m_eq / m",
           title="effective-width multiplier" + ("" if key == "k_m" else " (measured baseline points)"))
    _plain_y(ax)  # 0.92, not 9.2×10⁻¹: k stays within a decade of 1
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def curves(series: list[tuple[str, int, int, list[tuple[int, float]]]]) -> Figure:
    """val/loss vs step, one line per run (arm, width, seed, points): colour by width, line style by arm."""
    fig = _figure()
    ax = fig.add_subplot()
    widths = sorted({w for _, w, _, _ in series})
    arms = sorted({a for a, _, _, _ in series})
    styles = ["-", "--", ":", "-."]
    seen = set()
    for a, w, _, pts in series:
        steps, vals = zip(*pts)
        label = f"{a} m={w}" if (a, w) not in seen else None
        seen.add((a, w))
        # a marker on every validation while there are few: a run validated once is a point, and a line needs two
        ax.plot(steps, vals, color=f"C{widths.index(w) % 10}", ls=styles[arms.index(a) % 4], lw=1, label=label,
                marker=_MARKERS[arms.index(a) % len(_MARKERS)] if len(pts) <= 30 else None, ms=4)
    ax.set(yscale="log", xlabel="step", ylabel="val/loss (nats/token)", title="validation loss per width")
    _plain_y(ax)
    ax.legend(fontsize=7, ncol=2)
    return fig


def render(fig: Figure) -> np.ndarray:
    """(H, W, 4) uint8 RGBA pixels of the figure, laid out so that no tick label or title is cut off."""
    canvas = FigureCanvasAgg(fig)
    fig.tight_layout(pad=0.6)  # from the labels' measured extents; ~10 ms, unlike constrained layout
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def save_png(rgba: np.ndarray, path: Path) -> None:
    """Write atomically: a reader (or a crash) never sees half a PNG."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        imsave(tmp, rgba, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def log_to_tensorboard(images: dict[str, np.ndarray], logdir: Path) -> None:
    """RGBA images as TensorBoard images under tag `compare/<name>`, so `tensorboard --logdir runs/` shows
    them next to the runs."""
    from torch.utils.tensorboard import SummaryWriter  # torch import is slow; only pay it here

    # The directory holds only these figures: a re-run replaces them, else every `compare` would add another
    # events file and TensorBoard would show each figure once per run.
    for old in Path(logdir).glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(str(logdir))
    try:
        for name, rgba in images.items():
            writer.add_image(f"compare/{name}", rgba[..., :3], global_step=0, dataformats="HWC")
    finally:
        writer.close()
