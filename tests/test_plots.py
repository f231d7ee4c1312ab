"""compare's figures as a reader sees them: every label inside the image, a run validated once still visible."""
import matplotlib.colors
import numpy as np

from widthlab.scaling import plots
from widthlab.scaling.inference import Bootstrap


def _boot(ks: dict[int, float], rel: float) -> Bootstrap:
    est = {f"k_m/packed/{w}": k for w, k in ks.items()}
    ci = {f"k_m/packed/{w}": (k * (1 - rel), k * (1 + rel)) for w, k in ks.items()}
    est["k/packed"] = float(np.exp(np.mean(np.log(list(ks.values())))))
    return Bootstrap(est=est, ci=ci, samples={}, noise={}, n_ok=10)


def _cut_labels(fig) -> list[str]:
    """Texts of the axes (tick labels, axis labels, title) reaching outside the rendered figure."""
    rgba = plots.render(fig)
    h, w = rgba.shape[:2]
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    texts = ([t for t in ax.get_yticklabels(which="both") if y0 <= t.get_position()[1] <= y1]  # drawn ones only
             + [t for t in ax.get_xticklabels(which="both") if x0 <= t.get_position()[0] <= x1]
             + [ax.yaxis.label, ax.xaxis.label, ax.title])
    out = []
    for t in texts:
        if t.get_visible() and t.get_text():
            bb = t.get_window_extent(r)
            if bb.x0 < 0 or bb.y0 < 0 or bb.x1 > w or bb.y1 > h:
                out.append(t.get_text())
    return out


def test_multiplier_keeps_its_tick_labels_inside():
    # k near 1 puts several minor ticks in range: their labels were the widest and lost their first characters
    for ks, rel in [({32: 0.95, 64: 1.02, 128: 1.01}, 0.02), ({32: 0.3, 64: 3.0}, 0.5)]:
        fig = plots.multiplier(_boot(ks, rel), ["baseline", "packed"], "baseline")
        assert _cut_labels(fig) == []
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels(which="both") if t.get_text()]
        assert labels and not any("times" in t for t in labels)  # plain numbers, not 9.2×10⁻¹


def test_curves_show_a_run_validated_once():
    series = [("baseline", 32, 0, [(60, 5.1)]), ("baseline", 64, 0, [(60, 4.9)]), ("bigram", 32, 0, [(60, 5.0)])]
    fig = plots.curves(series)
    assert _cut_labels(fig) == []
    rgba = plots.render(fig)[..., :3].astype(int)
    ax_box = fig.axes[0].get_window_extent()
    h = rgba.shape[0]
    inside = rgba[int(h - ax_box.y1) + 2:int(h - ax_box.y0) - 2, int(ax_box.x0) + 2:int(ax_box.x1) - 2]
    for colour in ["C0", "C1"]:  # width 32 and width 64: a marker of each in the plot area, not only the legend
        target = np.array(matplotlib.colors.to_rgb(colour)) * 255
        hits = (np.abs(inside - target).sum(-1) < 30).sum()
        assert hits > 40, colour
    long = plots.curves([("baseline", 32, 0, [(s, 5 - s / 1000) for s in range(0, 1000, 10)])])
    assert long.axes[0].lines[0].get_marker() in (None, "None", "")  # 100 validations: a line, no markers
