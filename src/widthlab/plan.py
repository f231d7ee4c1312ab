"""A sweep's cost before it runs: each point's parameters, FLOPs/token, token budget, steps and hours, from configs.

Nothing here reads a corpus or tokenises anything, so `sweep --dry_run` answers offline in seconds:
- resolve(points): each arm's config as `fit --print_config` resolves it (recipe + overrides + defaults), and its
  LitGPT built on the meta device at every width, interventions applied. The model's own counts are what
  metrics.json and perf/mfu use later (GPT.num_params, LitGPT.flops_per_token), and building it runs every
  intervention's own checks before any run starts. The vocabulary comes from the config alone (vocab_sizes).
- Budget: a sweep-level token budget that follows the width, tokens = r × params (or a table per width), turned
  into each point's trainer.max_steps (and warm-up, validation cadence) by budget_overrides.
- PlanOptions: hours = FLOPs / (peak × MFU × devices), with the peak from the table PerfMonitor uses, or tokens /
  a measured tokens/s. plan_rows gives each point's row of the table (widthlab.plan_table) `sweep --dry_run` prints.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import yaml

from widthlab import WidthlabError
from widthlab.plan_table import Row


@dataclass
class Budget:
    """Training tokens per width (sweep recipe key `budget:`): each point's trainer.max_steps =
    ceil(tokens / (batch_size × seq_len × devices × num_nodes × accumulate_grad_batches)).

    Args:
        tokens_per_param: tokens = this × the point's own model parameters (interventions included), e.g. 20
        params: which parameters: non_embedding (Kaplan's N: lookup tables out, an untied head in) or total
        tokens: an explicit table {width: tokens} instead of tokens_per_param (every width of the sweep listed)
        warmup_frac: model.warmup_steps = round(this × max_steps) (at least 1); null: the recipe's warmup_steps
        val_checks: trainer.val_check_interval = max_steps // this, so every width validates as often in its
            own training (what compare's convergence check reads at a fraction of training); null: the recipe's
    """
    tokens_per_param: float | None = None
    params: Literal["non_embedding", "total"] = "non_embedding"
    tokens: dict[int, float] | None = None
    warmup_frac: float | None = None
    val_checks: int | None = None

    def check(self, widths: list[int]) -> None:
        if (self.tokens_per_param is None) == (self.tokens is None):
            raise WidthlabError("budget: give either tokens_per_param (e.g. 20) or tokens ({width: tokens}), "
                                "not both and not neither")
        if self.tokens_per_param is not None and not self.tokens_per_param > 0:
            raise WidthlabError(f"budget.tokens_per_param must be positive (got {self.tokens_per_param})")
        if self.params not in ("non_embedding", "total"):
            raise WidthlabError(f"budget.params must be non_embedding or total (got {self.params!r})")
        if self.tokens is not None:
            table = {int(k): v for k, v in self.tokens.items()}
            missing = sorted(set(widths) - set(table))
            if missing:
                raise WidthlabError(f"budget.tokens has no entry for widths {missing}; list every width of the sweep")
            if not all(isinstance(v, (int, float)) and v > 0 for v in table.values()):
                raise WidthlabError(f"budget.tokens values must be positive numbers (got {self.tokens})")
        if self.warmup_frac is not None and not 0 < self.warmup_frac < 1:
            raise WidthlabError(f"budget.warmup_frac must be in (0, 1) (got {self.warmup_frac})")
        if self.val_checks is not None and self.val_checks < 1:
            raise WidthlabError(f"budget.val_checks must be at least 1 (got {self.val_checks})")

    def keys(self) -> list[str]:
        """The recipe settings this rule sets per point."""
        return (["trainer.max_steps"] + (["model.warmup_steps"] if self.warmup_frac is not None else [])
                + (["trainer.val_check_interval"] if self.val_checks is not None else []))

    def rule(self) -> dict:
        """The rule as sweep.json records it (JSON keys are strings)."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if "tokens" in d:
            d["tokens"] = {str(int(k)): v for k, v in d["tokens"].items()}
            d.pop("params")
        return d


def describe_rule(rule: dict) -> str:
    """One line for a recorded rule (sweep.json's budget.rule): what report.md and the plan say."""
    how = (f"{rule['tokens_per_param']:g} tokens per {rule.get('params', 'non_embedding').replace('_', '-')} "
           "parameter" if "tokens_per_param" in rule else "a token table per width")
    if "warmup_frac" in rule:
        how += f", warm-up {rule['warmup_frac']:.3g} of the steps"
    if "val_checks" in rule:
        how += f", {rule['val_checks']} validations a run"
    return how


@dataclass
class PlanOptions:
    """How the plan turns FLOPs into hours (sweep recipe key `plan:`, or --plan.device / --plan.mfu).

    Args:
        device: a device name matched like torch.cuda.get_device_name() in the peak table PerfMonitor uses
            (widthlab.callbacks.perf.PEAK_BF16_DENSE: h100, h100 pcie, h200, a100, l40s, l4, a10, b200): its dense
            bf16 peak FLOP/s
        mfu: the model FLOPs utilisation you expect on that device (a stated assumption until measured; small
            widths reach far less than large ones)
        tokens_per_sec: measured training tokens/s of one run instead (all its devices): one number, or
            {width: tokens/s}
    """
    device: str | None = None
    mfu: float | None = None
    tokens_per_sec: float | dict[int, float] | None = None

    def peak(self) -> float | None:
        if self.device is None:
            return None
        import torch

        from widthlab.callbacks.perf import PEAK_BF16_DENSE, table_peak
        p = table_peak(self.device, torch.bfloat16)
        if p is None:
            raise WidthlabError(f"plan.device {self.device!r} is not in the peak table; use one of "
                                f"{[k for k, _ in PEAK_BF16_DENSE]}, or give plan.tokens_per_sec")
        return p

    def check(self, widths: list[int]) -> None:
        if self.tokens_per_sec is not None:
            tps = self.tokens_per_sec
            table = {int(k): v for k, v in tps.items()} if isinstance(tps, dict) else {w: tps for w in widths}
            missing = sorted(set(widths) - set(table))
            if missing or not all(v > 0 for v in table.values()):
                raise WidthlabError(f"plan.tokens_per_sec needs a positive number for every width (missing "
                                    f"{missing}); give one number or {{width: tokens/s}}")
        elif (self.device is None) != (self.mfu is None):
            raise WidthlabError("plan: give both device and mfu (e.g. {device: h100, mfu: 0.35}), or tokens_per_sec")
        elif self.mfu is not None and not 0 < self.mfu <= 1:
            raise WidthlabError(f"plan.mfu must be in (0, 1] (got {self.mfu})")
        self.peak()  # an unknown device name fails here, before anything else

    def describe(self) -> str | None:
        if self.tokens_per_sec is not None:
            return "hours from the measured tokens/s given in plan.tokens_per_sec"
        if self.device is None:
            return None
        return (f"hours on {self.device}: {self.peak() / 1e12:.0f} TFLOP/s dense bf16 peak × MFU {self.mfu:g} "
                "(stated, not measured)")


@dataclass
class Costs:
    """One model's counts: GPT.num_params() / num_params(True), LitGPT.flops_per_token (training, per token)."""
    params: int
    params_nonembed: int
    flops_per_token: int


# ------------------------------------------------------------------------------------ the model, without data

def vocab_sizes(data: dict) -> tuple[int, int]:
    """(tokens the tokenizer emits, rows of E and U) from a resolved data config, as TokenDataModule will find them:
    a tokens:<dir>'s tokens.json, else a tokenizer_path's own size, else data.vocab_size (trained BPE gives
    exactly that or refuses); the model's rows are that rounded up to a multiple of data.pad_vocab_to."""
    source, spec = str(data.get("source") or ""), data.get("tokenizer_path")
    if source.startswith("tokens:"):
        fn = os.path.join(source[len("tokens:"):], "tokens.json")
        try:
            with open(fn) as f:
                real = int(json.load(f)["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise WidthlabError(f"{fn} is missing or has no vocab_size; the plan reads the vocabulary from "
                                "it") from None
    elif spec:
        real = _tokenizer_vocab(str(spec))
    else:
        real = int(data.get("vocab_size", 4096))
    k = max(1, int(data.get("pad_vocab_to") or 1))
    return real, -(-real // k) * k


def _tokenizer_vocab(spec: str) -> int:
    from widthlab.data.tokenizer import is_hub_name, load_tokenizer

    if not os.path.isfile(spec) and is_hub_name(spec):  # offline: only the hub cache, never the network
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(spec, "tokenizer.json")
        if not isinstance(cached, str):
            raise WidthlabError(f"the plan needs tokenizer '{spec}''s vocabulary size offline, and it is not in the "
                                "Hugging Face cache: run `python -m train prepare --config <recipe>` once where there "
                                "is internet, or set data.tokenizer_path to a tokenizer.json file")
        spec = cached
    return load_tokenizer(spec).get_vocab_size()


_PARSER = None


def model_costs(config: dict, width: int) -> Costs:
    """Build the config's LitGPT at `width` on the meta device (no memory, no init work) and count it. Raises the
    model's or an intervention's own WidthlabError (a bad value, a head swap on a tied model)."""
    import torch
    from jsonargparse import ArgumentParser

    from widthlab.module import LitGPT

    global _PARSER
    if _PARSER is None:
        _PARSER = ArgumentParser(exit_on_error=False)
        _PARSER.add_class_arguments(LitGPT, "model")
    data = config.get("data") or {}
    real, rows = vocab_sizes(data)
    # The links fit performs (data → model), and no compile: counting needs no graph. Instantiating turns the
    # config's dicts into objects in place, hence the copy.
    model = {**copy.deepcopy(config.get("model") or {}), "d_model": width, "vocab_size": rows,
             "real_vocab_size": real, "seq_len": int(data.get("seq_len", 128)), "compile": False}
    cfg = _PARSER.parse_object({"model": model})
    with torch.device("meta"):
        lit = (_PARSER.instantiate if hasattr(_PARSER, "instantiate") else _PARSER.instantiate_classes)(cfg)["model"]
    return Costs(lit.model.num_params(), lit.model.num_params(True), lit.flops_per_token)


def resolve(points: list) -> tuple[dict[str, dict], dict[tuple[str, int], Costs]]:
    """Before any training: parse each arm's first point with --print_config (an unknown key or a bad value fails),
    then build its model at every width (model_costs), so an intervention's own checks fail here too, not minutes
    into the sweep. Returns {arm: the resolved config of its first point} (what config.yaml of its runs will hold,
    but for what a budget sets per point) and {(arm, width): Costs}."""
    from widthlab.cli import _widthlab_cause
    from widthlab.lightning_cli import run_lightning_cli

    widths: dict[str, list[int]] = {}
    for p in points:
        widths.setdefault(p.arm, []).append(p.width)
    configs: dict[str, dict] = {}
    costs: dict[tuple[str, int], Costs] = {}
    for p in points:
        if p.arm in configs:
            continue
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                run_lightning_cli(p.args + ["--print_config"])
        except SystemExit as e:
            if e.code:
                msg = [line for line in err.getvalue().splitlines() if "error" in line.lower()] or ["invalid override"]
                raise WidthlabError(f"arm '{p.arm}': {msg[-1].strip()}") from None
        except Exception as e:
            cause = _widthlab_cause(e)
            if cause is None:
                raise
            raise WidthlabError(f"arm '{p.arm}': {cause}") from None
        configs[p.arm] = yaml.safe_load(out.getvalue()) or {}
        for w in dict.fromkeys(widths[p.arm]):
            try:
                costs[p.arm, w] = model_costs(configs[p.arm], w)
            except Exception as e:
                cause = _widthlab_cause(e)
                raise WidthlabError(f"arm '{p.arm}' at d_model={w}: {cause or str(e).splitlines()[0]}") from None
    return configs, costs


# ------------------------------------------------------------------------------------------------ pure math

def devices_per_run(trainer: dict, launcher: str, gpus_per_run: int = 1) -> int:
    """Processes one run trains on: trainer.devices × num_nodes. 'auto' is one device under the local launcher
    (each run gets one GPU of its own, or is one CPU process) and the job's GPUs under a submitit launcher."""
    dev = trainer.get("devices", "auto")
    if isinstance(dev, (list, tuple)):
        n = len(dev)
    elif str(dev).lstrip("-").isdigit() and int(dev) > 0:
        n = int(dev)
    else:  # auto, -1: everything visible to the run
        n = 1 if launcher == "local" else gpus_per_run
    return n * int(trainer.get("num_nodes") or 1)


def tokens_per_step(config: dict, devices: int) -> int:
    """Training tokens per optimizer step: seq_len × batch_size × accumulate_grad_batches × devices (PerfMonitor's
    and metrics.json's tokens/step; data.batch_size is per device)."""
    data, trainer = config.get("data") or {}, config.get("trainer") or {}
    return (int(data.get("seq_len", 128)) * int(data.get("batch_size", 32))
            * int(trainer.get("accumulate_grad_batches") or 1) * devices)


def budget_overrides(budget: Budget, width: int, costs: Costs, step_tokens: int, config: dict) -> dict[str, int]:
    """The settings the budget gives one point: {trainer.max_steps, [model.warmup_steps], [trainer.val_check_interval]}.
    A recipe warm-up or validation cadence that the point's steps cannot hold is a one-line error."""
    if budget.tokens is not None:
        tokens = float({int(k): v for k, v in budget.tokens.items()}[width])
    else:
        n = costs.params_nonembed if budget.params == "non_embedding" else costs.params
        tokens = budget.tokens_per_param * n
    steps = max(1, math.ceil(tokens / step_tokens))
    out = {"trainer.max_steps": steps}
    model, trainer = config.get("model") or {}, config.get("trainer") or {}
    if budget.warmup_frac is not None:
        out["model.warmup_steps"] = max(1, round(budget.warmup_frac * steps))
    elif int(model.get("warmup_steps") or 0) >= steps:
        raise WidthlabError(f"the budget gives d_model={width} {steps} steps, not more than the recipe's "
                            f"model.warmup_steps={model.get('warmup_steps')}; set budget.warmup_frac (e.g. 0.05)")
    if budget.val_checks is not None:
        out["trainer.val_check_interval"] = max(1, steps // budget.val_checks)
    else:
        vci = trainer.get("val_check_interval")
        if isinstance(vci, int) and not isinstance(vci, bool) and vci > steps:
            raise WidthlabError(f"the budget gives d_model={width} {steps} steps, fewer than the recipe's "
                                f"trainer.val_check_interval={vci} (it would never validate); set budget.val_checks")
    return out


def run_hours(tokens: float, flops_per_token: float, devices: int, opts: PlanOptions | None,
              width: int) -> float | None:
    """Planned wall hours of one run's training: tokens·FLOPs/token / (peak × MFU × devices), or tokens /
    tokens_per_sec; None when the plan has neither."""
    if opts is None:
        return None
    if opts.tokens_per_sec is not None:
        tps = opts.tokens_per_sec
        rate = float({int(k): v for k, v in tps.items()}[width] if isinstance(tps, dict) else tps)
        return tokens / rate / 3600
    peak = opts.peak()
    if peak is None:
        return None
    return tokens * flops_per_token / (peak * opts.mfu * devices) / 3600


def plan_rows(points: list, configs: dict[str, dict], costs: dict[tuple[str, int], Costs], budget: Budget | None,
              opts: PlanOptions | None, launcher: str = "local", gpus_per_run: int = 1) -> list[Row]:
    """Each point's plan: its model's counts, the settings the budget gives it, its tokens, FLOPs and hours.
    Without a budget the tokens are the recipe's max_steps × tokens/step (unknown, –, for a run bounded by
    epochs)."""
    rows = []
    for p in points:
        cfg, c = configs[p.arm], costs[p.arm, p.width]
        devices = devices_per_run(cfg.get("trainer") or {}, launcher, gpus_per_run)
        step_tokens = tokens_per_step(cfg, devices)
        ov = budget_overrides(budget, p.width, c, step_tokens, cfg) if budget is not None else {}
        steps = ov.get("trainer.max_steps", (cfg.get("trainer") or {}).get("max_steps"))
        steps = steps if isinstance(steps, int) and steps > 0 else None
        tokens = None if steps is None else steps * step_tokens
        hours = None if tokens is None else run_hours(tokens, c.flops_per_token, devices, opts, p.width)
        per = c.params_nonembed if budget is not None and budget.params == "non_embedding" else c.params
        rows.append(Row(p.arm, p.width, p.seed, c, steps, tokens, per, hours, overrides=ov))
    return rows


def with_overrides(config: dict, overrides: dict[str, Any]) -> dict:
    """A resolved config with dotted settings replaced (a point's config.yaml, given its arm's and its budget)."""
    out = copy.deepcopy(config)
    for key, v in overrides.items():
        *parents, last = key.split(".")
        d = out
        for k in parents:
            d = d.setdefault(k, {})
        d[last] = v
    return out
