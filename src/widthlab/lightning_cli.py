"""LightningCLI wiring: fit / validate / test with YAML recipes.

A run lives in one directory, `trainer.default_root_dir` (e.g. runs/smoke): TensorBoard events, config.yaml,
env.json, metrics.json and checkpoints/{last,best}.ckpt. `fit --ckpt_path last` resumes it exactly. A fit ends with
a summary (FitSummary) and an HPARAMS session (HParamsWriter); a bad option or checkpoint is one line, not a usage
block or a traceback (the usage is for --help).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
import zipfile
from typing import Optional

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table, get_human_readable_count

from widthlab import WidthlabError
from widthlab.callbacks.checkpoint import StepCheckpoint
from widthlab.callbacks.hparams import HParamsWriter
from widthlab.callbacks.overlap import OverlapMonitor
from widthlab.callbacks.perf import PerfMonitor
from widthlab.callbacks.run_info import RunRecorder
from widthlab.callbacks.summary import FitSummary
from widthlab.data import TokenDataModule
from widthlab.device import default_precision
from widthlab.errors import one_line_parse_error
from widthlab.module import LitGPT


class WidthlabCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict:
        # no predict: LitGPT has no predict_step, and the front door (widthlab.cli) refuses the command
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # n and the context come from the data: the tokenizer decides how many rows E and U need.
        parser.link_arguments("data.model_vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.real_vocab_size", "model.real_vocab_size", apply_on="instantiate")
        parser.link_arguments("data.seq_len", "model.seq_len", apply_on="parse")
        parser.add_argument("--arm", type=Optional[str], default=None,
                            help="the run's arm name in TensorBoard's HPARAMS table (a sweep's arm); default: "
                                 "guessed from runs/<sweep>/<arm>/d<width>/s<seed>, else 'baseline'")
        parser.add_lightning_class_args(OverlapMonitor, "overlap")
        parser.add_lightning_class_args(PerfMonitor, "perf")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(StepCheckpoint, "step_checkpoint")  # last.ckpt every N steps and on SIGTERM
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.monitor": "val/loss",
                             "checkpoint.filename": "best", "checkpoint.save_top_k": 1, "checkpoint.mode": "min",
                             "checkpoint.auto_insert_metric_name": False,
                             # StepCheckpoint writes the same last.ckpt: overwrite it, never version it to last-v1
                             "checkpoint.enable_version_counter": False})

    def instantiate_trainer(self, **kwargs):
        root = self._get(self.config_init, "trainer.default_root_dir") or "runs/default"
        if kwargs.get("logger") in (None, True) and self._get(self.config_init, "trainer.logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=root, name="", version="", default_hp_metric=False)
        if self._get(self.config_init, "trainer.precision") is None:  # bf16-mixed on a GPU, 32-true on a CPU
            kwargs["precision"] = default_precision(self._get(self.config_init, "trainer.accelerator"))
            sub = f"{self.subcommand}." if self.subcommand else ""  # run=False (coord_check): no subcommand level
            self.config[f"{sub}trainer.precision"] = kwargs["precision"]  # config.yaml records what ran
        # Keep the recipe's own callbacks (a kwarg would replace them) and add the run recorder, then what reads its
        # metrics.json at fit end (callbacks run in this order).
        kwargs["callbacks"] = list(self._get(self.config_init, "trainer.callbacks") or []) + [
            RunRecorder(), HParamsWriter(arm=self._get(self.config_init, "arm")), FitSummary()]
        if self._get(self.config_init, "trainer.enable_model_summary") is not False:
            kwargs["callbacks"].append(FlopsSummary())
            kwargs["enable_model_summary"] = False  # Lightning's own, which ours replaces (else it says it skips it)
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            argv = list(args if args is not None else sys.argv[1:])
            command = argv[0] if argv and argv[0] in self._subcommand_parsers else ""
            sub = self._subcommand_parsers.get(command, self.parser)
            options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
            raise WidthlabError(one_line_parse_error(str(e), options, command)) from None
        command = self.config.get("subcommand")
        if command:  # before the trainer exists, so the error is the only line printed
            check_ckpt_path(self.config[command].get("ckpt_path"))

    def _parse_ckpt_path(self) -> None:
        """Lightning would overwrite the recipe's model settings with the checkpoint's; we keep the recipe, so a
        checkpoint of another shape is reported (LitGPT.on_load_checkpoint) instead of silently overriding."""

    def _ckpt_defaults(self) -> None:
        sub = self.config_init[self.subcommand]
        if sub.get("weights_only") is None:
            sub["weights_only"] = True  # checkpoints hold tensors and plain types only

    def before_fit(self) -> None:
        self._ckpt_defaults()
        sub = self.config_init["fit"]
        last = self._ckpt_file("last")
        if sub.get("ckpt_path") is None and os.path.exists(last):
            raise WidthlabError(f"{self.trainer.default_root_dir} already holds a run; resume it with "
                                "--ckpt_path last, or start a new one with --trainer.default_root_dir runs/<new name>")
        if sub.get("ckpt_path") == "last" and not os.path.exists(last):
            raise WidthlabError(f"nothing to resume: {last} does not exist; drop --ckpt_path to start the run")

    def _ckpt_file(self, name: str) -> str:
        return os.path.join(self.trainer.default_root_dir, "checkpoints", f"{name}.ckpt")

    def _best(self) -> None:
        """`--ckpt_path best` for validate/test: Lightning knows a best checkpoint only inside the fit that wrote it
        (a validate/test process never is one: it raises with a traceback); the run's checkpoints/best.ckpt is it."""
        sub = self.config_init[self.subcommand]
        if sub.get("ckpt_path") == "best":
            best = self._ckpt_file("best")
            if not os.path.isfile(best):
                raise WidthlabError(f"--ckpt_path best: {best} does not exist; train the run first (python -m train "
                                    "fit with the same --config) or give a checkpoint's path")
            sub["ckpt_path"] = best

    def before_validate(self) -> None:
        self._ckpt_defaults()
        self._best()

    def before_test(self) -> None:
        self._ckpt_defaults()
        self._best()


def check_ckpt_path(path: str | None) -> None:
    """A --ckpt_path that is not a checkpoint is one line here, before torch's unpickler fails with a traceback.

    Lightning's names (last, best, hpc, registry...) and remote URLs are left to Lightning."""
    if path is None or path in ("last", "best", "hpc") or path.startswith("registry") or "://" in path:
        return
    fix = "give a checkpoint file such as <run>/checkpoints/last.ckpt, or 'last' to resume this run"
    if not os.path.exists(path):
        raise WidthlabError(f"--ckpt_path {path} does not exist; {fix}")
    # torch.save writes a zip archive whose pickle is <archive>/data.pkl; anything else cannot be a checkpoint
    if os.path.isdir(path) or not zipfile.is_zipfile(path):
        raise WidthlabError(f"--ckpt_path {path} is not a checkpoint (not a torch.save archive); {fix}")
    with zipfile.ZipFile(path) as z:
        if not any(n.endswith("data.pkl") for n in z.namelist()):
            raise WidthlabError(f"--ckpt_path {path} is a zip archive but not a torch checkpoint; {fix}")


class FlopsSummary(ModelSummary):
    """Lightning's model summary with its last line telling the truth: "Total Flops" counts a forward pass of
    `example_input_array`, which LitGPT does not set, so it always read 0. It shows the training FLOPs per token that
    widthlab computes (6N + attention, head included; the figure behind perf/mfu and compare's k_C) instead."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self._flops_per_token = getattr(pl_module, "flops_per_token", None)
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **kwargs) -> None:
        if not total_flops:  # and no per-layer FLOPs column of zeros either
            summary_data = [col for col in summary_data if col[0] != "FLOPs"]
        lines = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data).splitlines()
        if lines[-1].endswith("Total Flops"):
            lines.pop()
            if self._flops_per_token:
                lines.append(f"{get_human_readable_count(self._flops_per_token):<10}Training FLOPs per token")
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + "\n".join(lines))


@contextlib.contextmanager
def _no_false_alarms():
    """Silences exactly three messages Lightning prints at every fit or resume, each wrong for widthlab:

    - "...your dataloader is not resumable. This can cause unreliable results...": training windows are a pure
      function of (seed, step) (widthlab.data.sampling), so a resumed run draws the batches it would have drawn;
      test_train.py checks a resumed run against an uninterrupted one, and they are identical.
    - "Checkpoint directory ... exists and is not empty": a resume writes into its own run's checkpoints, and a new
      fit into a directory that holds a run is refused before this (WidthlabCLI.before_fit).
    - torch's FutureWarning that `LeafSpec` is deprecated: raised inside Lightning's own pytree helper, nothing a
      user can act on (scoped to that module, so the same warning from other code still shows)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch "
                                                  r"ended and your dataloader is not resumable")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty\.$")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
        yield


class _DropLightningTips(logging.Filter):
    """Lightning advertises its cloud services (litlogger, litmodels) at every fit; the run's own summary says
    where its logs are."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_TIPS = _DropLightningTips()
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_TIPS)  # the loggers rank_zero_info writes through


def run_lightning_cli(argv: list[str]) -> WidthlabCLI:
    with _no_false_alarms():
        return WidthlabCLI(
            LitGPT, TokenDataModule, args=None if argv == sys.argv[1:] else argv,
            parser_kwargs={"exit_on_error": False},  # errors come back as ArgumentError: one line (parse_arguments)
            seed_everything_default=1337,
            save_config_kwargs={"overwrite": True, "config_filename": "config.yaml"},
            trainer_defaults={"use_distributed_sampler": False,  # our samplers shard by rank themselves
                              "default_root_dir": "runs/default", "log_every_n_steps": 10},
        )
