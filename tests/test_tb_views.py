"""TensorBoard views, checked through a real TensorBoard server on loopback (not by reading event files back):
the HPARAMS table of a sweep (one session per run, columns, filters, sort, failed runs), the CUSTOM SCALARS
layout, and the summary a fit ends with."""
import contextlib
import io
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO
from helpers import tiny_args

from widthlab import WidthlabError, tb_views
from widthlab.callbacks.summary import summary_lines
from widthlab.cli import main

ALL_STATUSES = ["STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_UNKNOWN", "STATUS_RUNNING"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    """A sweep directory: one real tiny fit (the whole path: RunRecorder → metrics.json → HParamsWriter), plus two
    older runs given sessions afterwards (another arm, and a diverged run), plus the sweep's layout."""
    root = tmp_path_factory.mktemp("tb") / "demo"
    real = root / "baseline" / "d32" / "s0"
    out, records = io.StringIO(), []
    handler = logging.Handler()
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    # Lightning's default level, whatever earlier tests in this process left (the test is about our filter)
    level, _ = lightning_log.level, lightning_log.setLevel(logging.INFO)
    t = time.time()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
            mp.chdir(REPO)
            main(tiny_args(real, cache_dir, 8, ["--overlap.every_n_steps", "4", "--trainer.val_check_interval", "4"]))
    finally:
        lightning_log.removeHandler(handler)
        lightning_log.setLevel(level)
    fit_s = time.time() - t
    m = json.load(open(real / "metrics.json"))
    others = {
        root / "bigram" / "d64" / "s0": {**m, "d_model": 64, "val_loss": m["val_loss"] - 0.5,
                                         "val_loss_best": m["val_loss"] - 0.6,
                                         "interventions": ["BigramHashEmbedding(table_size=64)"]},
        root / "baseline" / "d64" / "s0": {**m, "d_model": 64, "val_loss": float("nan"), "val_loss_best": 7.0,
                                           "status": "diverged", "diverged_step": 5},
    }
    for d, metrics in others.items():  # runs without a session (finished before HParamsWriter existed)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "config.yaml").write_text("model:\n  lr: 0.003\n  mup_base_d_model: 32\n")
    assert sorted(tb_views.write_missing_sessions(str(root))) == sorted(map(str, others))
    assert tb_views.write_missing_sessions(str(root)) == []  # once
    tb_views.write_sweep_layout(str(root), ["baseline", "bigram"])
    return {"root": root, "real": real, "metrics": m, "stdout": out.getvalue(), "fit_s": fit_s,
            "log": [r.getMessage() for r in records]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(sweep):
    """TensorBoard as docs/tensorboard.md starts it: `tensorboard --logdir <sweep>`, the default (fast, Rust) data
    loader, on a free port; ready once every session's metric values are loaded; always terminated."""
    log = sweep["root"].parent / "tensorboard.log"
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # the venv's console script
    with open(log, "w") as f:
        proc = subprocess.Popen([exe, "--logdir", str(sweep["root"]), "--port", str(_free_port())],
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        url = None
        while url is None:
            found = re.search(r"http://localhost:\d+/", log.read_text())
            url = found.group(0) if found else None
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, f"TensorBoard did not start: {log.read_text()}"
            time.sleep(0.2)
        assert "fast data loading" in log.read_text()  # the Rust loader the plain command uses, not the Python one
        server = Server(url)
        while True:  # the first load runs in the background
            try:
                groups = server.session_groups()["sessionGroups"]
            except OSError:
                groups = []
            if len(groups) == 3 and all(g["metricValues"] for g in groups):
                break
            assert time.time() < deadline, (groups, log.read_text())
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    # no proxy: these requests never leave the machine, whatever http_proxy says
    _open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open

    def __init__(self, url):
        self.url = url

    def get(self, path):
        with self._open(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
        with self._open(req, timeout=10) as r:
            return json.loads(r.read())

    def experiment(self):
        return self.post("data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self, col_params=(), statuses=ALL_STATUSES):
        return self.post("data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": list(statuses), "colParams": list(col_params),
            "startIndex": 0, "sliceSize": 100})


def _metrics(group):
    return {v["name"]["tag"]: v["value"] for v in group["metricValues"]}


def f32(x: float) -> float:
    return float(np.float32(x))


def test_hparams_table_has_one_session_per_run_with_the_columns(tensorboard, sweep):
    exp = tensorboard.experiment()
    assert {h["name"] for h in exp["hparamInfos"]} == {n for n, _, _ in tb_views.HPARAMS}
    assert {m["name"]["tag"] for m in exp["metricInfos"]} == {t for t, *_ in tb_views.METRICS}
    assert {m["displayName"] for m in exp["metricInfos"]} >= {"val loss best", "head κ", "word ppl"}
    # the tab ticks the first five hyperparameters after sorting them `differs` first, and the first five metrics
    shown = [h["name"] for h in sorted(exp["hparamInfos"], key=lambda h: not h.get("differs", False))][:5]
    assert sorted(shown) == ["d_model", "params", "seed", "status", "tokens"]
    assert [m["displayName"] for m in exp["metricInfos"]][:5] == ["val loss best", "val loss last", "word ppl",
                                                                  "bpb", "head mean cos²"]
    groups = {g["name"]: g for g in tensorboard.session_groups()["sessionGroups"]}
    assert set(groups) == {"baseline/d32/s0", "baseline/d64/s0", "bigram/d64/s0"}  # runs, not subdirectories
    real, m = groups["baseline/d32/s0"], sweep["metrics"]
    assert real["hparams"] | {"lr": pytest.approx(3e-3)} == {
        "arm": "baseline", "idea": "baseline", "knobs": "", "d_model": 32, "n_layer": 1, "vocab_size": m["vocab_size"],
        "lr": pytest.approx(3e-3), "mup_base_d_model": 0, "seed": m["seed"], "interventions": "none", "params": m["params"],
        "flops_per_token": m["flops_per_token"], "tokens": 8 * 4 * 32, "status": "ok"}
    # every metric column has metrics.json's value (to float32, what a TensorBoard scalar holds), in every session
    values = _metrics(real)
    expected = {"final/val_loss": m["val_loss"], "final/val_word_ppl": m["val_word_ppl"],
                "final/val_bpb": m["val_bpb"], "final/val_loss_best": m["val_loss_best"],
                "final/head_mean_cos2": m["geom_unembed_mean_cos2"], "final/head_kappa": m["geom_unembed_kappa"],
                "final/head_mean_cos2_centred": m["geom_unembed_mean_cos2_centred"],
                "final/embed_mean_cos2": m["geom_embed_mean_cos2"],
                "final/embed_mean_cos2_centred": m["geom_embed_mean_cos2_centred"]}
    assert values == {k: f32(v) for k, v in expected.items()}
    assert _metrics(real["sessions"][0]) == values
    bigram = json.load(open(sweep["root"] / "bigram" / "d64" / "s0" / "metrics.json"))
    assert _metrics(groups["bigram/d64/s0"])["final/val_loss"] == f32(bigram["val_loss"])
    assert _metrics(groups["bigram/d64/s0"])["final/val_loss_best"] == f32(bigram["val_loss_best"])
    assert real["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert groups["bigram/d64/s0"]["hparams"]["interventions"] == "BigramHashEmbedding(table_size=64)"
    assert groups["bigram/d64/s0"]["hparams"]["mup_base_d_model"] == 32


def test_validation_is_at_the_step_of_metrics_json(tensorboard, sweep):
    m = sweep["metrics"]
    assert [s for s, _ in m["val_history"]] == [4, 8]
    for tag in ["val/loss", "val/bpb", "val/loss_decile/0"]:
        points = tensorboard.get(f"data/plugin/scalars/scalars?run=baseline/d32/s0&tag={tag}")
        assert [p[1] for p in points] == [4, 8], tag  # [wall time, step, value]
    points = tensorboard.get("data/plugin/scalars/scalars?run=baseline/d32/s0&tag=val/loss")
    assert [p[2] for p in points] == [pytest.approx(v, rel=1e-6) for _, v in m["val_history"]]


def test_hparams_filters_sort_and_failed_runs(tensorboard):
    by_arm = tensorboard.session_groups([{"hparam": "arm", "filterRegexp": "^bigram$", "includeInResult": True}])
    assert [g["name"] for g in by_arm["sessionGroups"]] == ["bigram/d64/s0"]
    wide = tensorboard.session_groups([{"hparam": "d_model", "filterInterval": {"minValue": 48, "maxValue": 1e9},
                                        "includeInResult": True}])
    assert {g["name"] for g in wide["sessionGroups"]} == {"baseline/d64/s0", "bigram/d64/s0"}
    ranked = tensorboard.session_groups([{"metric": {"tag": "final/val_loss_best"}, "order": "ORDER_ASC",
                                          "includeInResult": True}])
    assert [g["name"] for g in ranked["sessionGroups"]][:2] == ["bigram/d64/s0", "baseline/d32/s0"]
    # a diverged run is a failed session, shown with its status and without a NaN loss
    diverged = {g["name"]: g for g in tensorboard.session_groups()["sessionGroups"]}["baseline/d64/s0"]
    assert diverged["sessions"][0]["status"] == "STATUS_FAILURE" and diverged["hparams"]["status"] == "diverged"
    assert "final/val_loss" not in _metrics(diverged) and _metrics(diverged)["final/val_loss_best"] == 7.0
    ok = tensorboard.session_groups(statuses=["STATUS_SUCCESS"])
    assert "baseline/d64/s0" not in {g["name"] for g in ok["sessionGroups"]}


def test_custom_scalars_layout_puts_each_metric_in_one_chart(tensorboard, sweep):
    # the layout sits in every run, not at the root: no empty run "." in the run list
    assert sorted(tensorboard.get("data/runs")) == ["baseline/d32/s0", "baseline/d64/s0", "bigram/d64/s0"]
    layout = tensorboard.get("data/plugin/custom_scalars/layout")
    assert len(layout["category"]) == 2  # the same layout in three runs shows once
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert all("arms: baseline, bigram" in cat["title"] for cat in layout["category"])
    for title in ["val/loss (nats/token)", "val/word_ppl", "head mean cos²", "head κ = m · mean cos²"]:
        (regex,) = charts[title]
        res = tensorboard.get(f"data/plugin/custom_scalars/scalars?run=baseline/d32/s0&tag={regex}")
        assert res["regex_valid"] and len(res["tag_to_events"]) == 1, (title, res)  # one tag: no final/ duplicate
        (events,) = res["tag_to_events"].values()
        assert events and all(math.isfinite(v) for _, _, v in events)


def test_a_second_finish_replaces_the_session(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"val_loss": 5.0, "tokens": 100}))
    assert tb_views.write_missing_sessions(str(tmp_path)) == [str(tmp_path)]
    again = tb_views.write_run_hparams(str(tmp_path), {"arm": "x"}, {"final/val_loss": 4.0}, step=20)
    assert [p.name for p in tmp_path.glob("events.*")] == [os.path.basename(again)]  # TensorBoard keeps the first


def test_layout_is_replaced_not_repeated(tmp_path):
    runs = [tmp_path / "a" / "d8" / "s0", tmp_path / "b" / "d8" / "s0"]
    for d in runs + [tmp_path / "tb_compare"]:
        tb_views.write_run_hparams(str(d), {"arm": "x"}, {"final/val_loss": 4.0}, step=2)
    (tmp_path / "events.out.tfevents.1.host.layout").write_bytes(b"")  # an older version's, at the root
    first = tb_views.write_sweep_layout(str(tmp_path), ["a"])
    second = tb_views.write_sweep_layout(str(tmp_path), ["a", "b"])
    assert [os.path.dirname(p) for p in second] == list(map(str, runs)) and not set(first) & set(second)
    assert sorted(p.name for p in tmp_path.rglob("*.layout")) == sorted(os.path.basename(p) for p in second)
    with pytest.raises(WidthlabError, match="cannot be directory names"):
        tb_views.write_sweep_layout(str(tmp_path), ["a/b"])


def test_fit_ends_with_a_summary_and_no_advert(sweep):
    lines = sweep["stdout"].strip().splitlines()
    summary = [line for line in lines if line.startswith(("fit finished", "  "))][-5:]
    assert lines[-5:] == summary, lines[-8:]  # the last thing printed
    m = sweep["metrics"]
    assert summary[0].startswith("fit finished: 8 steps, 1.02k tokens in ")
    assert f"val loss  {m['val_loss']:.4f} last" in summary[1]
    assert f"{m['val_word_ppl']:.1f}" in summary[2] and f"bpb {m['val_bpb']:.3f}" in summary[2]
    assert summary[3].strip() == f"run       {sweep['real']}"
    assert summary[4].strip() == f"view      tensorboard --logdir {sweep['root']}"  # the sweep, not the one run
    assert any("GPU available" in r for r in sweep["log"])  # Lightning's own info lines still go through ...
    assert not any("litlogger" in r or "litmodels" in r for r in sweep["log"])  # ... its advertising does not


def test_summary_of_a_diverged_or_partial_run():
    lines = summary_lines({"status": "diverged", "diverged_step": 41, "val_loss": float("nan"), "tokens": 5000},
                          "runs/x", 41, None, 75.0)
    assert lines[0].startswith("fit finished: DIVERGED at step 41") and "1 min 15 s" in lines[0]
    assert "nan last" in lines[1] and "best" not in lines[1]
    assert summary_lines({}, "runs/x", 0, 12345.0, 3.0)[2] == "  word ppl  – · bpb –"  # no metrics.json


def test_arm_name(tmp_path):
    assert tb_views.guess_arm("runs/ptb/bigram/d64/s3") == "bigram"
    assert tb_views.guess_arm("runs/smoke") is None
    assert tb_views.sweep_root("runs/ptb/bigram/d64/s3") == "runs/ptb"
    m = {"interventions": ["ZLoss(weight=0.0001)", "LogitSoftCap(cap=30.0)"]}
    assert tb_views.run_hparams(m, {}, None, "runs/smoke")["arm"] == "ZLoss+LogitSoftCap"
    assert tb_views.run_hparams({}, {}, None, "runs/smoke")["arm"] == "baseline"
    assert tb_views.run_hparams(m, {}, "zloss_capped", "runs/ptb/bigram/d64/s3")["arm"] == "zloss_capped"
    # a grid's sub-arm: its idea and knob values are columns of their own (filter/sort by value)
    hp = tb_views.run_hparams(m, {}, None, "runs/tune/unitnorm@init_scale=0.3@lr=0.01/d8/s10")
    assert (hp["arm"], hp["idea"], hp["knobs"]) == ("unitnorm@init_scale=0.3@lr=0.01", "unitnorm",
                                                    "init_scale=0.3 lr=0.01")


def test_arm_option_reaches_the_hparams_writer(tmp_path, cache_dir):
    from widthlab.callbacks.hparams import HParamsWriter
    from widthlab.lightning_cli import WidthlabCLI
    from widthlab.data import TokenDataModule
    from widthlab.module import LitGPT

    args = tiny_args(tmp_path / "run", cache_dir, 4, ["--arm", "wide_head"])[1:]  # no subcommand with run=False
    cli = WidthlabCLI(LitGPT, TokenDataModule, args=args, run=False, parser_kwargs={"exit_on_error": False})
    (writer,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, HParamsWriter)]
    assert writer.arm == "wide_head"
    assert not (tmp_path / "run").exists()
