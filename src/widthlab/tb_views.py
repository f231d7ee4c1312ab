"""TensorBoard views of runs and sweeps: the HPARAMS table (one session per run) and a CUSTOM SCALARS layout.

Both are protocol buffers written with TensorBoard's own event writer (no TensorFlow, no torch), so they can be
written at the end of a fit or by `sweep` afterwards:

- HPARAMS: a run's own event directory (not a subdirectory, so `--logdir runs/<sweep>` shows one session per run)
  gets the experiment definition (the table's columns), a session-start record (the run's hyperparameters), a
  session-end record (ok → success, diverged → failure) and its final metrics as scalars `final/<name>` at the last
  step. The HPARAMS tab reads a session's metric values from the last point of those scalar tags, so they carry
  metrics.json's numbers, the same as results.csv (to float32's 7 digits: see final_scalars_summary). Every run
  writes the same columns in the same order, because TensorBoard takes the experiment definition from whichever run
  it finds first.
- CUSTOM SCALARS: one layout, written into every run directory of a sweep (TensorBoard merges identical layouts
  into one), so the sweep root is not a run of its own. A chart selects tags by regex, never runs; the runs shown
  are those the run filter selects, and run names are `<arm>/d<width>/s<seed>`, so `^baseline/` puts every width
  of one arm in each chart and `/d64/` every arm at one width.
"""
from __future__ import annotations

import glob
import math
import os
import re
import time

from widthlab.tuning import split_arm

# (name, kind, description): the HPARAMS table's hyperparameter columns, in order. kind: "str" or "num".
HPARAMS = [
    ("arm", "str", "sweep arm (--arm, else the <arm>/d<width>/s<seed> directory layout, else 'baseline' or the "
                   "interventions' class names)"),
    ("d_model", "num", "width m"),
    ("n_layer", "num", "transformer blocks"),
    ("vocab_size", "num", "tokens the tokenizer can emit (n)"),
    ("lr", "num", "peak learning rate (of the base width under μP)"),
    ("mup_base_d_model", "num", "μP base width; 0 = standard parametrisation"),
    ("seed", "num", "data and init seed"),
    ("idea", "str", "the arm without its grid values: signed_decay for signed_decay@gamma=-0.3 (widthlab.tuning)"),
    ("knobs", "str", "the arm's grid values, e.g. gamma=-0.3; '' outside a grid"),
    ("interventions", "str", "packing ideas with their arguments; 'none' for the baseline"),
    ("params", "num", "parameters, embeddings included"),
    ("flops_per_token", "num", "training FLOPs per token (6N + attention, head included)"),
    ("tokens", "num", "training tokens seen"),
    ("status", "str", "ok, or diverged (the loss stopped being finite)"),
]

# The columns ticked when the HPARAMS tab opens: what one sorts and filters a sweep by. The tab ticks the first five
# hyperparameters after sorting them `differs` first (the plugin's backend_context sorts by (not differs, name);
# its query pane ticks Math.min(5, n)), so these five are flagged `differs` and the others are one click away.
# The arm, width and seed are also in every row's name (the Trial ID column), <arm>/d<width>/s<seed>.
SHOWN = ("d_model", "seed", "params", "tokens", "status")

# (tag, display name, description, metrics.json keys tried in order): the metric columns.
# The head is U; a tied model has no separate U, so its head is E.
METRICS = [
    ("final/val_loss_best", "val loss best", "lowest validation loss of the run, nats/token", ["val_loss_best"]),
    ("final/val_loss", "val loss last", "last validation loss, nats/token", ["val_loss"]),
    ("final/val_word_ppl", "word ppl", "last validation word perplexity", ["val_word_ppl"]),
    ("final/val_bpb", "bpb", "last validation bits per byte", ["val_bpb"]),
    ("final/head_mean_cos2", "head mean cos²", "head rows' mean squared cosine",
     ["geom_unembed_mean_cos2", "geom_embed_mean_cos2"]),
    ("final/head_mean_cos2_centred", "head mean cos² centred", "the same after subtracting the mean row",
     ["geom_unembed_mean_cos2_centred", "geom_embed_mean_cos2_centred"]),
    ("final/head_kappa", "head κ", "m · head mean cos² (1 = random packing)",
     ["geom_unembed_kappa", "geom_embed_kappa"]),
    ("final/embed_mean_cos2", "embed mean cos²", "embedding rows' mean squared cosine", ["geom_embed_mean_cos2"]),
    ("final/embed_mean_cos2_centred", "embed mean cos² centred", "the same after subtracting the mean row",
     ["geom_embed_mean_cos2_centred"]),
]

_RUN_LAYOUT = re.compile(r"(?P<arm>[^/]+)/d(?P<width>\d+)/s(?P<seed>-?\d+)$")


def guess_arm(run_dir: str) -> str | None:
    """The arm of a sweep run from its directory, runs/<sweep>/<arm>/d<width>/s<seed>; None if it does not match."""
    m = _RUN_LAYOUT.search(os.path.abspath(run_dir).replace(os.sep, "/"))
    return m.group("arm") if m else None


def sweep_root(run_dir: str) -> str | None:
    """runs/<sweep> for a run at runs/<sweep>/<arm>/d<width>/s<seed>, else None."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(run_dir)))) if guess_arm(run_dir) else None


def interventions_text(interventions: list[str] | None) -> str:
    return " + ".join(interventions) if interventions else "none"


def run_hparams(metrics: dict, module_hparams: dict, arm: str | None, run_dir: str) -> dict:
    """One run's hyperparameter values, every column of HPARAMS present (strings or numbers, never None).

    metrics: the run's metrics.json; module_hparams: LitGPT's saved init args (lr, mup_base_d_model, ...)."""
    ivs = metrics.get("interventions") or []
    if arm is None:
        arm = guess_arm(run_dir) or ("+".join(s.split("(")[0] for s in ivs) if ivs else "baseline")
    src = {**module_hparams, **metrics}
    idea, knobs = split_arm(arm)
    out = {"arm": arm, "idea": idea, "knobs": " ".join(f"{k}={v}" for k, v in knobs.items()),
           "interventions": interventions_text(ivs), "status": str(metrics.get("status") or "ok"),
           "mup_base_d_model": src.get("mup_base_d_model") or 0}
    for name, kind, _ in HPARAMS:
        if name not in out:
            v = src.get(name)
            out[name] = (str(v) if v is not None else "") if kind == "str" else (float(v) if v is not None else 0.0)
    return out


def final_metrics(metrics: dict) -> dict[str, float]:
    """{tag: value} of the METRICS present and finite in metrics.json (a diverged run's NaN losses are left out)."""
    out = {}
    for tag, _, _, keys in METRICS:
        v = next((metrics[k] for k in keys if metrics.get(k) is not None), None)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[tag] = float(v)
    return out


# --- protocol buffers ------------------------------------------------------------------------------------------

def _hparams_summary(tag: str, plugin_data):
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(plugin_data),
                                        tensor=metadata.NULL_TENSOR)])


def hparams_summaries(hparams: dict, status: str, start_time: float, end_time: float) -> list:
    """The three Summary protos of one HPARAMS session: experiment (columns), session start, session end."""
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams import plugin_data_pb2 as pd

    types = {"str": api_pb2.DATA_TYPE_STRING, "num": api_pb2.DATA_TYPE_FLOAT64}
    experiment = api_pb2.Experiment(
        description="widthlab runs: one session per run directory; see docs/tensorboard.md",
        hparam_infos=[api_pb2.HParamInfo(name=n, type=types[k], description=d, differs=n in SHOWN)
                      for n, k, d in HPARAMS],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t), display_name=dn, description=d)
                      for t, dn, d, _ in METRICS])
    start = pd.SessionStartInfo(start_time_secs=start_time)
    for name, value in hparams.items():
        if isinstance(value, str):
            start.hparams[name].string_value = value
        else:
            start.hparams[name].number_value = float(value)
    end = pd.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if status == "ok" else api_pb2.STATUS_FAILURE,
                            end_time_secs=end_time)
    return [_hparams_summary(metadata.EXPERIMENT_TAG, pd.HParamsPluginData(experiment=experiment)),
            _hparams_summary(metadata.SESSION_START_INFO_TAG, pd.HParamsPluginData(session_start_info=start)),
            _hparams_summary(metadata.SESSION_END_INFO_TAG, pd.HParamsPluginData(session_end_info=end))]


def final_scalars_summary(metrics: dict[str, float]):
    """The `final/*` values as classic float32 scalars (`simple_value`, what SummaryWriter.add_scalar writes).

    Not float64 tensors: TensorBoard's default fast loader (the Rust data server) drops DT_DOUBLE scalars, and the
    HPARAMS table of the documented `tensorboard --logdir runs/<sweep>` was left without any metric value. float32
    keeps 7 significant digits, more than any loss difference worth reading; metrics.json keeps the float64."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.scalar import metadata

    info = {t: (dn, d) for t, dn, d, _ in METRICS}
    return Summary(value=[Summary.Value(tag=t, simple_value=v, metadata=metadata.create_summary_metadata(
        *info.get(t, (t, "")))) for t, v in metrics.items()])


def write_run_hparams(log_dir: str, hparams: dict, metrics: dict[str, float], step: int,
                      start_time: float | None = None) -> str:
    """Write one run's HPARAMS session and `final/*` scalars into log_dir (its own event directory).

    Returns the event file's path. It replaces an earlier one (a run resumed after it finished): TensorBoard would
    keep the first session record's hyperparameters."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    now = time.time()
    before = _event_files(log_dir, ".hparams")
    writer = EventFileWriter(log_dir, filename_suffix=".hparams")
    try:
        for s in hparams_summaries(hparams, hparams.get("status", "ok"), start_time or now, now):
            writer.add_event(Event(wall_time=now, step=step, summary=s))
        writer.add_event(Event(wall_time=now, step=step, summary=final_scalars_summary(metrics)))
    finally:
        writer.close()
    for fn in before:
        os.remove(fn)
    return (_event_files(log_dir, ".hparams") - before).pop()


def write_missing_sessions(root: str) -> list[str]:
    """HPARAMS sessions for the finished runs under root that have none (runs from before HParamsWriter existed),
    from each run's metrics.json and config.yaml. Returns the run directories written to."""
    import json

    import yaml

    written = []
    for fn in sorted(glob.glob(os.path.join(root, "**", "metrics.json"), recursive=True)):
        run_dir = os.path.dirname(fn)
        if _event_files(run_dir, ".hparams"):
            continue
        with open(fn) as f:
            m = json.load(f)
        cfg_fn = os.path.join(run_dir, "config.yaml")
        cfg = (yaml.safe_load(open(cfg_fn)) or {}) if os.path.isfile(cfg_fn) else {}
        hp = run_hparams(m, cfg.get("model") or {}, cfg.get("arm"), run_dir)
        write_run_hparams(run_dir, hp, final_metrics(m), int(m.get("steps") or 0))
        written.append(run_dir)
    return written


def _event_files(log_dir: str, suffix: str) -> set[str]:
    return set(glob.glob(os.path.join(log_dir, f"events.out.tfevents.*{suffix}")))


# --- custom scalars ----------------------------------------------------------------------------------------------

# (chart title, tag regex): the charts of a sweep's layout. Regexes are anchored: TensorBoard uses re.match.
CHARTS = {
    "loss": [("val/loss (nats/token)", r"val/loss$"), ("val/word_ppl", r"val/word_ppl$"),
             ("val/bpb", r"val/bpb$"), ("train/loss", r"train/loss$")],
    "overlap": [("head mean cos²", r"geometry/unembed/mean_cos2$"),
                ("head κ = m · mean cos²", r"geometry/unembed/kappa$"),
                ("head mean cos² centred", r"geometry/unembed/mean_cos2_centred$"),
                ("embedding mean cos²", r"geometry/embed/mean_cos2$")],
}


def sweep_layout(name: str, arms: list[str]):
    """The custom-scalars Layout of a sweep: a loss and an overlap category, one chart per metric.

    The category titles name the arms and the run filter that selects one (a chart cannot select runs itself)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    hint = f"filter runs by ^<arm>/ — arms: {', '.join(arms)}" if arms else "filter runs by ^<arm>/"
    return layout_pb2.Layout(category=[
        layout_pb2.Category(title=f"{name}: {group} ({hint})", chart=[
            layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
            for title, regex in charts])
        for group, charts in CHARTS.items()])


def write_sweep_layout(root: str, arms: list[str]) -> list[str]:
    """Write the CUSTOM SCALARS layout of the sweep at `root` into each of its run directories; replaces earlier ones.

    Returns the event files written. Not into `root` itself: every directory holding an event file is a run, and
    the tab's run list would show an empty run `.`. TensorBoard merges the layouts of all runs (categories by title,
    charts by equality), so the same layout in every run shows once. Call it once a sweep's runs exist (a run
    directory made later gets it when the sweep next finishes)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    bad = [a for a in arms if not a or "/" in a or os.sep in a]
    if bad:
        from widthlab import WidthlabError
        raise WidthlabError(f"arm names {bad} cannot be directory names; use letters, digits, '_' or '-'")
    layout = sweep_layout(os.path.basename(os.path.normpath(os.path.abspath(root))), list(arms))
    # the layout travels as a scalar string tensor under the plugin's config tag (what TensorBoard's own pb() writes)
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    summary = Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                                           metadata=metadata.create_summary_metadata())])
    for fn in _event_files(root, ".layout"):  # written at the root before: that made the root an empty run
        os.remove(fn)
    written = []
    for run_dir in run_dirs(root):
        old = _event_files(run_dir, ".layout")
        writer = EventFileWriter(run_dir, filename_suffix=".layout")
        try:
            writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))
        finally:
            writer.close()
        written.append((_event_files(run_dir, ".layout") - old).pop())
        for fn in old:  # one layout per run: a stale one (other arms in its titles) would add a category
            os.remove(fn)
    return written


def run_dirs(root: str) -> list[str]:
    """The run directories under root: those holding training event files; compare's figures (tb_compare/) and the
    root itself are not runs."""
    found = {os.path.dirname(fn) for fn in glob.glob(os.path.join(root, "**", "events.out.tfevents.*"),
                                                     recursive=True)
             if not fn.endswith(".layout")}
    rel = {d: os.path.relpath(d, root) for d in found}
    return sorted(d for d, r in rel.items() if r != "." and "tb_compare" not in r.split(os.sep))
