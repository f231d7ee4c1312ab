"""PerfMonitor: tokens/s and MFU against hand-computed numbers (accumulation 4, world size 2), the peak table,
and a tiny real CPU fit. Numbers only: a fake clock makes the fit's throughput exact; no timing thresholds."""
import time
from types import SimpleNamespace

import pytest
import torch
from helpers import scalars, tiny_args

import widthlab.callbacks.perf as perf
from widthlab.callbacks.perf import PerfMonitor, peak_flops, precision_dtype, table_peak, throughput
from widthlab.lightning_cli import run_lightning_cli
from widthlab.module import LitGPT

# seq 128 × batch 4 × accumulation 4 × world 2 = 4096 tokens per optimizer step
SEQ, B, ACCUM, WORLD = 128, 4, 4, 2
TOKENS_PER_STEP = SEQ * B * ACCUM * WORLD


def test_throughput_by_hand_under_accumulation_and_two_devices():
    # 10 optimizer steps in 2 s: 40960 tokens over all ranks → 20480 tok/s, 10240 per device;
    # 6e6 FLOPs/token × 10240 tok/s = 6.144e10 FLOP/s per device on a 1e12 peak → MFU 0.06144
    out = throughput(10 * TOKENS_PER_STEP, 2.0, WORLD, 6e6, 1e12)
    assert TOKENS_PER_STEP == 4096
    assert out["perf/tokens_per_sec"] == pytest.approx(20480.0)
    assert out["perf/tokens_per_sec_per_device"] == pytest.approx(10240.0)
    assert out["perf/mfu"] == pytest.approx(0.06144)
    # the two anchor bugs: one micro-batch per step (4× low) and global throughput over one device's peak (2× high)
    assert out["perf/mfu"] != pytest.approx(6e6 * 20480 / 1e12)
    assert "perf/mfu" not in throughput(4096, 1.0, 1, 6e6, None)  # no peak (CPU): no MFU at all


def test_tokens_per_step_counts_every_micro_batch_of_every_rank():
    m = LitGPT(d_model=32, n_layer=1, vocab_size=64, seq_len=SEQ)
    m._trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=B), accumulate_grad_batches=ACCUM,
                                 world_size=WORLD)
    assert m.tokens_per_step == TOKENS_PER_STEP


class FakeClock:
    def __init__(self, dt: float):
        self.t, self.dt = 0.0, dt

    def perf_counter(self) -> float:
        self.t += self.dt
        return self.t


class Recorder:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def test_monitor_times_optimizer_steps_not_micro_batches(monkeypatch):
    """The callback driven by hand as a 2-rank, accumulation-4 Trainer would: 4 micro-batches per global_step."""
    monkeypatch.setattr(perf, "time", FakeClock(0.5))  # every clock read advances 0.5 s
    rec = Recorder()
    trainer = SimpleNamespace(global_step=0, world_size=WORLD, precision="bf16-mixed", loggers=[rec],
                              callback_metrics={}, sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"), tokens_per_step=TOKENS_PER_STEP, flops_per_token=6e6)
    mon = PerfMonitor(every_n_steps=4)
    mon.on_train_start(trainer, module)
    assert mon.peak is None  # CPU
    mon.peak = 1e12  # pretend a GPU with a 1 TFLOP/s peak
    for micro in range(12 * ACCUM):
        mon.on_train_batch_start(trainer, module, None, micro)
        if micro % ACCUM == ACCUM - 1:
            trainer.global_step += 1  # Lightning steps the optimizer on the last micro-batch
        mon.on_train_batch_end(trainer, module, None, None, micro)
    # clock starts after step 1 (t=0.5); windows end at steps 4, 8, 12, one clock read each (0.5 s)
    assert [s for s, _ in rec.rows] == [4, 8, 12]
    assert mon.windows == [(4, 3 * 4096, 0.5), (8, 4 * 4096, 0.5), (12, 4 * 4096, 0.5)]
    last = rec.rows[-1][1]
    assert last["perf/tokens_per_sec"] == pytest.approx(4 * 4096 / 0.5)  # 32768
    assert last["perf/tokens_per_sec_per_device"] == pytest.approx(16384.0)
    assert last["perf/mfu"] == pytest.approx(6e6 * 16384 / 1e12)  # 0.098304
    assert float(trainer.callback_metrics["perf/tokens_per_sec"]) == pytest.approx(32768.0)


def test_validation_time_is_left_out_of_the_window(monkeypatch):
    monkeypatch.setattr(perf, "time", FakeClock(1.0))
    trainer = SimpleNamespace(global_step=0, world_size=1, precision="32-true", loggers=[], callback_metrics={},
                              sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"), tokens_per_step=100, flops_per_token=1.0)
    mon = PerfMonitor(every_n_steps=2)
    mon.on_train_start(trainer, module)
    for i in range(4):
        mon.on_train_batch_start(trainer, module, None, i)
        trainer.global_step += 1
        mon.on_train_batch_end(trainer, module, None, None, i)
        if trainer.global_step == 3:
            mon.on_validation_start(trainer, module)
    # clock reads: start t=1 (step 1); step 2 at t=2 → (2, 100, 1 s); validation pauses at t=3, the next batch start
    # reads t=4 and shifts the window start by 1 s; step 4 reads t=5 → 5 - 3 = 2 s (3 s if validation counted)
    assert mon.windows == [(2, 100, 1.0), (4, 200, 2.0)]


def test_peak_table_dense_16_bit():
    assert table_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4e12  # SXM
    assert table_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert table_peak("NVIDIA H100 NVL", torch.float16) == 835e12
    assert table_peak("NVIDIA H200", torch.bfloat16) == 989e12  # Lightning 2.6: None
    assert table_peak("NVIDIA GH200 480GB", torch.bfloat16) == 989e12
    assert table_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert table_peak("NVIDIA L40S", torch.bfloat16) == 362e12  # Lightning 2.6: the L4's 121e12
    assert table_peak("NVIDIA L4", torch.bfloat16) == 121e12
    assert table_peak("NVIDIA A10G", torch.bfloat16) == 125e12
    assert table_peak("NVIDIA H100 80GB HBM3", torch.float32) is None  # fp32/tf32: Lightning's table decides
    assert table_peak("Some Future GPU", torch.bfloat16) is None
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None
    assert precision_dtype("bf16-mixed") is torch.bfloat16 and precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is torch.float32


def _fit(root, cache, steps, extra=()):
    cli = run_lightning_cli(tiny_args(root, cache, steps, ["--model.dropout", "0", *extra]))
    return cli, next(cb for cb in cli.trainer.callbacks if isinstance(cb, PerfMonitor))


def test_real_fit_with_accumulation_logs_exact_tokens_per_sec(tmp_path, cache_dir, monkeypatch):
    """A real CPU fit (accumulation 2) with a clock that advances exactly 1 s per read: tokens/s must equal
    Δsteps × seq 32 × batch 4 × accumulation 2 per window, logged once per optimizer step, never MFU on CPU."""
    monkeypatch.setattr(perf, "time", FakeClock(1.0))
    root = tmp_path / "acc"
    # validation only at the very end (val_check_interval counts micro-batches), so no pauses
    cli, mon = _fit(root, cache_dir, 8, ["--perf.every_n_steps", "2", "--trainer.accumulate_grad_batches", "2",
                                         "--trainer.val_check_interval", "16"])
    per_step = 32 * 4 * 2
    assert cli.model.tokens_per_step == per_step
    tags = scalars(root)
    assert "perf/mfu" not in tags
    # clock starts after step 1; windows end at steps 2, 4, 6, 8 and each spans one clock read (1 s)
    assert tags["perf/tokens_per_sec"] == [(2, 1 * per_step), (4, 2 * per_step), (6, 2 * per_step), (8, 2 * per_step)]
    assert mon.windows == [(2, per_step, 1.0), (4, 2 * per_step, 1.0), (6, 2 * per_step, 1.0), (8, 2 * per_step, 1.0)]


def test_real_fit_tokens_per_sec_matches_steps_over_elapsed(tmp_path, cache_dir):
    root = tmp_path / "real"
    t = time.perf_counter()
    cli, mon = _fit(root, cache_dir, 8, ["--perf.every_n_steps", "2"])
    wall = time.perf_counter() - t
    tags = dict(scalars(root)["perf/tokens_per_sec"])
    assert sorted(tags) == [2, 4, 6, 8]
    for step, tokens, seconds in mon.windows:
        assert tokens == (step - (step - 2 if step > 2 else 1)) * 32 * 4  # Δsteps × tokens/step
        assert tags[step] == pytest.approx(tokens / seconds, rel=1e-5)  # TB stores float32
    # the windows are disjoint slices of the fit, so they cannot add up to more than its wall time, and the
    # whole-window rate is at least the naive steps·tokens_per_step / elapsed
    window_tokens, window_s = sum(w[1] for w in mon.windows), sum(w[2] for w in mon.windows)
    assert window_s <= wall
    assert window_tokens / window_s >= 7 * 32 * 4 / wall
    m = cli.trainer.callback_metrics
    assert float(m["perf/tokens_per_sec"]) == pytest.approx(mon.last["perf/tokens_per_sec"])


def test_the_device_check_script_runs_its_cpu_fallback(tmp_path):
    """benchmarks/device_check.py (what a lent GPU runs: `benchmarks/run.py --device-check`) at tiny size on the CPU:
    every row a real Lightning fit on the GPU path (bf16-mixed, fused AdamW, clipping), throughput from PerfMonitor,
    the divergence flag read on the logging cadence only where the fused kernel can skip."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import device_check
    out = device_check.main(["--tiny", "--widths", "16", "32", "--steps", "12", "--every", "4", "--out", str(tmp_path)])
    assert out["facts"] == {"foreach_norm_inf_keeps_nan": True, "fused_adamw_skips_on_found_inf": True}
    rows = {r["row"]: r for r in out["rows"]}
    assert list(rows) == ["gpt2 (tiny)", "d16", "d32", "d32 fused=false"]  # no compile on the CPU: no CE variant
    for r in rows.values():
        assert r["precision"] == "bf16-mixed" and r["steps"] == 12 and r["tokens_per_sec"] > 0
        assert r["mfu"] is None and r["syncs_per_step_off_cadence"] is None  # CPU: no peak, no CUDA syncs to count
    # fused: the flag read at steps 4, 8, 12 and at the end; foreach AdamW: every step, and at the end
    assert [(r["fused"], r["device_reads"]) for r in rows.values()] == [(True, 4)] * 3 + [(False, 13)]
    assert json.loads((tmp_path / "device_check.json").read_text())["rows"][1]["d_model"] == 16


def test_the_cuda_branches_of_the_monitor_on_a_cpu(monkeypatch):
    """peak_flops and the window-edge sync take their CUDA branch for a cuda device (the device object needs no GPU)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 989.4e12
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    PerfMonitor._now(SimpleNamespace(device=torch.device("cuda")))
    assert synced == [torch.device("cuda")]
