"""The toy model's result tables: one run directory's files, and the cross-run α_m table.

Per run (`python -m train toy --name NAME` → out_dir/NAME/):
    config.json      every setting of the run, the code commit, torch version, device, threads, start date
    results.csv/md   one row per trained model (final loss on fresh data, φ½, φ₁, overlaps, time)
    fits.csv         one row per fitted curve L ∝ m^(−α_m), i.e. per (distribution, γ, steps)
    trajectory.csv   per model, every `metric_every` steps: the mean train loss since the previous point, φ½, φ₁
                     and the overlaps; φ₁ (rows grown past norm 1) forms slowly, so it is the convergence record

Across runs: docs/results/toy/fits.csv holds one row per fitted curve of every run that was recorded, with the
settings that make rows comparable (n, dist, α, γ, steps, warm-up, batch, lr) and where the row came from (source
= the run directory, commit, date). `record` rebuilds it: the rows of a run replace that run's earlier rows, rows
of other sources (including hand-entered ones from before this table existed) stay.

    python -m widthlab.toy.results runs/toy/toy_paper_g-0.78 [--table docs/results/toy/fits.csv]
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import subprocess
from pathlib import Path

from widthlab import WidthlabError

ROW_FIELDS = ["gamma", "distribution", "m", "n", "steps", "batch_size", "loss", "train_loss_last100",
              "ideal_weak_loss", "phi_half", "m_over_n", "phi_one", "mean_cos2_all", "mean_cos2_gt1", "inv_m",
              "seconds", "ms_per_step"]
FIT_FIELDS = ["gamma", "distribution", "steps", "alpha_m", "se", "ci_low", "ci_high", "r2", "fit_ms"]
TRAJ_FIELDS = ["gamma", "distribution", "m", "steps", "step", "train_loss", "phi_half", "phi_one", "mean_cos2_all",
               "mean_cos2_gt1"]
# the cross-run table; ci_low/ci_high are the 95% t interval of the OLS slope (toy.fit_alpha_m)
TABLE_FIELDS = ["n", "dist", "alpha", "gamma", "steps", "warmup", "batch", "lr", "lr_rule", "seed", "alpha_m",
                "alpha_m_se", "ci_low", "ci_high", "r2", "fit_range", "source", "commit", "date", "note"]


def git_commit() -> str:
    """Short commit of the checked-out code, '+dirty' if tracked files differ from it; '' outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else ""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers never see a half-written table


def _csv(fields: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_config(out: Path, settings: dict, environment: dict) -> None:
    _atomic_write(out / "config.json", json.dumps(dict(settings, **environment), indent=2, default=str) + "\n")


def write_run(out: Path, rows: list[dict], fits: list[dict], trajectory: list[dict]) -> None:
    """results.csv, fits.csv, trajectory.csv and results.md of one run directory (rewritten after every model)."""
    _atomic_write(out / "results.csv", _csv(ROW_FIELDS, rows))
    _atomic_write(out / "fits.csv", _csv(FIT_FIELDS, fits))
    _atomic_write(out / "trajectory.csv", _csv(TRAJ_FIELDS, trajectory))

    def table(fields, data):
        lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
        lines += ["| " + " | ".join(_fmt(d.get(f, "")) for f in fields) + " |" for d in data]
        return "\n".join(lines)
    md = (f"# Toy model results ({out.name})\n\nLoss in paper units (sum over the n features = n × mean MSE), on "
          f"fresh data after training.\n\n{table(ROW_FIELDS, rows)}\n\n## α_m (L ∝ m^-α_m; se = OLS standard error)"
          f"\n\n{table(FIT_FIELDS, fits)}\n")
    _atomic_write(out / "results.md", md)


# ---------------------------------------------------------------------------------------------------- across runs
def _num(s: str, digits: int = 4) -> str:
    """A CSV number rounded for the shared table ('' stays '')."""
    return "" if s in ("", None) else f"{float(s):.{digits}g}"


def _source(run_dir: Path) -> str:
    rel = os.path.relpath(run_dir.resolve())
    return rel if not rel.startswith("..") else str(run_dir.resolve())


def table_rows(run_dir: str | Path) -> list[dict]:
    """The cross-run rows of one run directory, from its fits.csv and config.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "fits.csv").is_file() or not (run_dir / "config.json").is_file():
        raise WidthlabError(f"{run_dir} is not a toy run directory (needs fits.csv and config.json from "
                            f"`python -m train toy`)")
    cfg = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "fits.csv") as f:
        fits = list(csv.DictReader(f))
    warm = cfg["warmup"]
    rows = []
    for fit in fits:
        steps = int(fit["steps"])
        rows.append(dict(
            n=cfg["n"], dist=fit["distribution"], gamma=_num(fit["gamma"], 7), steps=steps, batch=cfg["batch_size"],
            alpha=f'{cfg["alpha"]:g}' if fit["distribution"] == "power" else "",
            warmup=int(round(warm * steps)) if warm < 1 else int(warm), lr=cfg["lr"], lr_rule=cfg["lr_rule"],
            seed=cfg["seed"], alpha_m=_num(fit["alpha_m"]), alpha_m_se=_num(fit["se"]), ci_low=_num(fit["ci_low"]),
            ci_high=_num(fit["ci_high"]), r2=_num(fit["r2"]), fit_range=fit["fit_ms"], source=_source(run_dir),
            commit=cfg.get("git_commit", ""), date=str(cfg.get("started", ""))[:10], note=""))
    return rows


def _order(row: dict) -> tuple:
    return (int(row["n"]), row["dist"], float(row["gamma"]), int(row["steps"]), int(row["batch"]), row["source"])


def upsert(table: str | Path, rows: list[dict]) -> None:
    """Put `rows` into the table at `table`: existing rows with the same source are replaced, others kept."""
    table = Path(table)
    old = []
    if table.is_file():
        with open(table) as f:
            old = list(csv.DictReader(f))
        missing = [k for k in TABLE_FIELDS if old and k not in old[0]]
        if missing:
            raise WidthlabError(f"{table} lacks the columns {missing}; it is not a toy fits table")
    sources = {r["source"] for r in rows}
    merged = sorted([r for r in old if r["source"] not in sources] + rows, key=_order)
    table.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(table, _csv(TABLE_FIELDS, merged))


def record(run_dir: str, table: str = "docs/results/toy/fits.csv") -> None:
    """Add the fitted curves of a finished (or partly finished) toy run to the cross-run α_m table.

    Args:
        run_dir: a toy run directory (out_dir/name of `python -m train toy`).
        table: the cross-run CSV; a run recorded again replaces its own rows.
    """
    upsert(table, table_rows(run_dir))
    print(f"[toy] recorded {run_dir} in {table}")


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


if __name__ == "__main__":
    import sys

    from jsonargparse import auto_cli
    try:
        auto_cli(record)
    except WidthlabError as e:  # one line, as `python -m train` prints it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
