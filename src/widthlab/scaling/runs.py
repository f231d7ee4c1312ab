"""Loading a sweep's runs for `compare`: results.csv rows or run dirs' metrics.json, filled from event files.

A row is one run: arm, d_model, seed, its losses (val_loss = last validation, val_loss_best, val_history,
train_loss_eval), costs (params, params_nonembed, flops) and final geometry (geom_<matrix>_<stat>). Only arm,
d_model and a loss column are required (numbers copied from a paper are a valid input).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import yaml

from widthlab import WidthlabError
from widthlab.archive import run_settings
from widthlab.plan import describe_rule
from widthlab.plan_table import si
from widthlab.scaling import events

RECIPE_KEYS = ("data_source", "vocab_size", "n_layer", "seq_len")  # must agree for runs to share one curve
STR_COLS = {"arm", "run_dir", "data_source", "status", "interventions", "val_history"}
INT_COLS = {"d_model", "seed", "vocab_size", "n_layer", "seq_len", "params", "params_nonembed", "tokens", "steps",
            "best_step", "diverged_step"}


# ---------------------------------------------------------------------------------------------- loading

def _coerce(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, str) and v.strip() == ""):
            continue  # missing: absent key, never ""
        if k in STR_COLS or not isinstance(v, (str, int, float)):
            out[k] = v
            continue
        try:
            x = float(v)
        except ValueError:
            out[k] = v
            continue
        out[k] = int(x) if k in INT_COLS and math.isfinite(x) and x.is_integer() else x
    return out


def _run_dir(row: dict, sweep: Path) -> Path | None:
    """results.csv's run_dir may be absolute, relative to the sweep dir (an archive's runs/<arm>/...), or to where
    the sweep ran. The sweep dir is tried first: from inside another archive, cwd/runs/<arm>/... is that archive's."""
    cands = []
    if "run_dir" in row:
        p = Path(str(row["run_dir"]))
        cands += [p] if p.is_absolute() else [sweep / p, Path.cwd() / p, sweep.parent / p, sweep / p.name]
    if {"arm", "d_model", "seed"} <= row.keys():
        cands.append(sweep / str(row["arm"]) / f"d{row['d_model']}" / f"s{row['seed']}")
    return next((c.resolve() for c in cands if c.is_dir()), None)


def read_csv(path: Path) -> list[dict]:
    """Rows of a results.csv; a file that is not one (no header, no arm/d_model column, ragged rows) is a
    one-line error naming what is wrong."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ("d_model",) if c not in cols]
            if missing:
                raise WidthlabError(f"{path} has no {missing[0]} column (columns: {cols}); a results.csv needs at "
                                    "least d_model and val_loss (arm and seed optional)")
            rows = []
            for i, r in enumerate(reader, start=2):
                if None in r or any(v is None for v in r.values()):
                    raise WidthlabError(f"{path} line {i}: {len(cols)} columns in the header but not in this row")
                rows.append(_coerce(r))
    except (UnicodeDecodeError, csv.Error) as e:
        raise WidthlabError(f"{path} is not a readable CSV file ({e})") from None
    for i, r in enumerate(rows, start=2):
        if not isinstance(r.get("d_model"), int) or r["d_model"] <= 0:
            raise WidthlabError(f"{path} line {i}: d_model must be a positive integer, got {r.get('d_model')!r}")
    if "seed" not in cols:  # rows of one (arm, width) are then its replicates in file order: seeds 0, 1, …
        count: dict[tuple, int] = {}
        for r in rows:
            key = (r.get("arm", "baseline"), r["d_model"])
            r["seed"] = count[key] = count.get(key, -1) + 1
    return rows


def load_runs(paths: list[str]) -> list[dict]:
    """One dict per run from sweep dirs (results.csv), run dirs (metrics.json), or dirs holding run dirs.
    Adds `_dir` (resolved run dir or None) and `_scalars` (event-file scalars); fills missing metrics from
    the event files and `flops` from flops_per_token·tokens. A run seen twice is kept once (see below)."""
    found: dict[object, dict] = {}
    for p in map(Path, paths):
        if (p / "results.csv").is_file() or (p.is_file() and p.suffix == ".csv"):
            csv_path, p = (p / "results.csv", p) if p.is_dir() else (p, p.parent)
            rows = [(r, _run_dir(r, p)) for r in read_csv(csv_path)]
        elif p.is_dir():
            files = [p / "metrics.json"] if (p / "metrics.json").is_file() else sorted(p.rglob("metrics.json"))
            rows = [(_coerce(json.loads(f.read_text())), f.parent.resolve()) for f in files
                    if "tb_compare" not in f.parts]
        else:
            continue
        budget = _budget_of(p)
        for r, d in rows:
            r.setdefault("arm", "baseline")  # a plain `fit` run is its own baseline
            r["_dir"] = d
            entry = (budget.get("points") or {}).get(f"{r['arm']}/d{r.get('d_model')}") if budget else None
            if entry is not None:  # trained under its sweep's token budget: see _by_rule
                r["_budget"] = (budget.get("rule") or {}, entry)
            # One configuration (arm, width, seed) is one run: runs are deterministic, so the same one listed
            # by two sources (a sweep dir and an archived results.csv) has the same loss and is kept once, with
            # its run dir if either has one; two different losses mean two different experiments.
            key = (r["arm"], r.get("d_model"), r.get("seed", 0))
            old = found.get(key)
            if old is not None and old["_dir"] != d and old.get("val_loss") != r.get("val_loss"):
                raise WidthlabError(f"two different runs of arm {key[0]!r} at d_model={key[1]}, seed {key[2]} "
                                    f"(val_loss {old.get('val_loss')} vs {r.get('val_loss')}; second from {p}): "
                                    "compare one sweep's runs, or rename an arm")
            if old is None or old["_dir"] is None:
                found[key] = r
    runs = list(found.values())
    for r in runs:
        r["_scalars"] = events.read_scalars(r["_dir"]) if r["_dir"] is not None else {}
        for k, v in events.summary_from_scalars(r["_scalars"]).items():
            r.setdefault(k, v)
        if isinstance(r.get("val_history"), str):
            try:
                r["val_history"] = [(int(s_), float(v)) for s_, v in json.loads(r["val_history"])]
            except (ValueError, TypeError):
                raise WidthlabError(f"arm {r['arm']!r} d_model={r.get('d_model')}: val_history is not a list of "
                                    f"[step, loss] pairs") from None
        if "flops" not in r and {"flops_per_token", "tokens"} <= r.keys():
            r["flops"] = r["flops_per_token"] * r["tokens"]
    return runs


def _settings(r: dict) -> dict | None:
    """The settings that decide a run's result (widthlab.archive.run_settings of its config.yaml), with the
    interventions collapsed into one value, or None for a row without a run dir or config (numbers from a paper)."""
    f = r["_dir"] / "config.yaml" if r.get("_dir") is not None else None
    if f is None or not f.is_file():
        return None
    try:
        flat = run_settings(yaml.safe_load(f.read_text()) or {})
    except yaml.YAMLError:
        raise WidthlabError(f"{f} is not valid YAML; re-run that point or delete its run dir") from None
    iv = {k: v for k, v in flat.items() if k.startswith("model.interventions")}
    out = {k: v for k, v in flat.items() if k not in iv}
    out["model.interventions"] = json.dumps({k: v for k, v in iv.items() if v is not None}, sort_keys=True,
                                            default=str)
    return out


def _budget_of(sweep: Path) -> dict | None:
    """The token budget a sweep dir's sweep.json records (widthlab.sweep: the rule, and each arm/width's settings)."""
    found = _sweep_jsons([str(sweep)]) if sweep.is_dir() else []
    b = found[0][1].get("budget") if found else None
    return b if isinstance(b, dict) else None


# The settings a budget rule sets per point (widthlab.plan.Budget.keys), and what each is compared as.
_BY_RULE = {"trainer.max_steps": lambda rule: {k: rule[k] for k in ("tokens_per_param", "params", "tokens")
                                               if k in rule},
            "model.warmup_steps": lambda rule: {"warmup_frac": rule.get("warmup_frac")},
            "trainer.val_check_interval": lambda rule: {"val_checks": rule.get("val_checks")}}


def _by_rule(r: dict, s: dict | None) -> dict | None:
    """A run trained under its sweep's token budget: each setting the rule gave its width must be what sweep.json
    recorded for it (else it is a real mismatch, refused), and is then compared as the rule itself, so widths and
    arms may differ in it, but two rules, or a rule and a fixed length, may not. Its tokens must be the rule's for
    its own model (_rule_tokens), so an entry edited by hand is refused too."""
    if not r.get("_budget"):
        return s
    rule, entry = r["_budget"]
    for k, part in _BY_RULE.items():
        if s is None or k not in entry:
            continue
        if k in s and s[k] != entry[k]:
            raise WidthlabError(f"{_where(r)} was trained with {k}={s[k]!r}, but its sweep's budget "
                                f"({describe_rule(rule)}) gives {entry[k]!r}; re-run it with the sweep's command, or "
                                "compare it on its own")
        s[k] = "budget " + json.dumps(part(rule), sort_keys=True)
    _rule_tokens(r, rule)
    return s


def _rule_tokens(r: dict, rule: dict) -> None:
    """The run's tokens against its rule, recomputed from the run itself: tokens_per_param × its own parameters (or
    the token table's entry for its width), within one step's tokens (the sweep rounds up to whole steps). A run
    that diverged stopped early; a row without tokens, steps or parameter counts cannot be checked."""
    tokens, steps = r.get("tokens"), r.get("steps")
    if r.get("status") == "diverged" or not all(isinstance(x, (int, float)) for x in (tokens, steps)) or steps <= 0:
        return
    if "tokens_per_param" in rule:
        per = rule.get("params", "non_embedding")
        n = r.get("params_nonembed" if per == "non_embedding" else "params")
        if not isinstance(n, (int, float)):
            return
        want = rule["tokens_per_param"] * n
        how = f"{rule['tokens_per_param']:g} × its {n:g} {per.replace('_', '-')} params"
    else:
        want = float((rule.get("tokens") or {}).get(str(r.get("d_model")), math.nan))
        how = f"the token table's entry for d_model={r.get('d_model')}"
    step = tokens / steps
    if not abs(tokens - want) <= step * (1 + 1e-9):
        raise WidthlabError(f"{_where(r)} trained on {tokens:g} tokens, but its sweep's budget ({describe_rule(rule)}) "
                            f"gives {want:g} ({how}), more than one step ({step:g} tokens) away: its sweep.json budget "
                            "entry was not made by the rule (edited by hand?); re-run the sweep command, which "
                            "rewrites it, and re-run that point")


def budget_lines(budget: dict | None) -> list[str]:
    """report.md's lines for a sweep's token budget: the rule, and each arm/width's planned tokens and tokens/param."""
    if not isinstance(budget, dict) or not budget.get("rule"):
        return []
    rule = budget["rule"]
    order = lambda kv: (kv[0].split("/d")[0], int(kv[0].split("/d")[1]))  # noqa: E731
    pts = [f"{k.replace('/d', ' d=')} {si(v.get('tokens'))} ({v.get('tokens_per_param', float('nan')):.3g})"
           for k, v in sorted((budget.get("points") or {}).items(), key=order)]
    per = rule.get("params", "non_embedding").replace("_", "-")
    return [f"  - token budget: {describe_rule(rule)}; each width's trainer.max_steps = ceil(tokens / tokens per "
            f"step). Tokens (tokens per {per} parameter) by point: " + ", ".join(pts)]


def _where(r: dict) -> str:
    d = r.get("_dir")
    rel = os.path.relpath(d) if d else None
    return f"{r['arm']} d={r.get('d_model')} s{r.get('seed', 0)}" + (
        f" in {d if rel.startswith('..') else rel}" if d else "")


def check_recipe(runs: list[dict], overrides: dict[str, set[str]] | None = None, allow: tuple[str, ...] = ()) -> None:
    """Refuse runs that do not share one recipe: the coarse keys of every row, then, for runs with a config.yaml,
    every setting that decides a result (one value per setting over all runs that have it; a setting only some
    runs have is an option added since, read at its default). Runs of one arm may differ only in width. An arm
    may differ from the others in the settings its sweep.json declares as its overrides (`overrides`: arm → keys,
    e.g. model.lr in an LR scan); an arm no sweep.json declares, in its interventions. `allow`: settings no run is
    checked on (a short sweep's length, checked on its own beforehand)."""
    for k in RECIPE_KEYS:
        vals = sorted({str(r[k]) for r in runs if k in r})
        if len(vals) > 1:
            raise WidthlabError(f"runs mix {k} values {vals}: compare runs of one recipe at a time "
                                f"(pass only the sweep/run dirs that share {k})")
    overrides = overrides or {}

    def own(k: str, arm: str) -> bool:  # may this arm's value differ from the other arms'?
        if arm not in overrides:
            return k == "model.interventions"
        return any(k == o or k.startswith(o + ".") or o.startswith(k + ".") for o in overrides[arm])

    seen = [(r, s) for r in runs if (s := _by_rule(r, _settings(r))) is not None]
    for k in sorted({k for _, s in seen for k in s} - set(allow)):
        have = [(r, s[k]) for r, s in seen if k in s]
        for r, v in have:  # within an arm: one value
            r0, v0 = next((q, w) for q, w in have if q["arm"] == r["arm"])
            if v != v0:
                raise WidthlabError(f"runs of arm {r['arm']!r} differ in {k}: {v0!r} ({_where(r0)}) vs {v!r} "
                                    f"({_where(r)}); an arm's runs must differ only in width: re-run one with "
                                    "the sweep's settings")
        common = [(r, v) for r, v in have if not own(k, r["arm"])]  # between arms: one value but declared ones
        for r, v in common[1:]:
            if v != common[0][1]:
                raise WidthlabError(f"runs differ in {k}: {common[0][1]!r} ({_where(common[0][0])}) vs {v!r} "
                                    f"({_where(r)}); compare runs of one recipe at a time, or declare {k} in the "
                                    "sweep's arms: block if that arm changes it")


def flag_limited(r: dict, max_gap: float, max_epochs: float, max_rise: float = 0.02) -> str:
    """'' or why a run looks data-limited rather than width-limited (the fit assumes the latter): its validation
    loss rose from its best by more than max_rise (overfitting), its eval-mode train loss sits more than max_gap
    below its validation loss, or it ran more than max_epochs epochs."""
    why = []
    if isinstance(r.get("val_loss"), float) and isinstance(r.get("val_loss_best"), float) \
            and r["val_loss"] - r["val_loss_best"] > max_rise:
        why.append(f"val rose {r['val_loss'] - r['val_loss_best']:.3f}>{max_rise:g} from its best")
    # Only the eval-mode train loss (no dropout, fixed subset, final weights) measures overfitting; the running
    # train loss of older runs had dropout on and, in archived rows, an early-training bias, so it is not used.
    if isinstance(r.get("val_loss"), float) and isinstance(r.get("train_loss_eval"), float) \
            and r["val_loss"] - r["train_loss_eval"] > max_gap:
        why.append(f"gap {r['val_loss'] - r['train_loss_eval']:.3f}>{max_gap:g}")
    if "epochs" in r and r["epochs"] > max_epochs:
        why.append(f"epochs {r['epochs']:.3g}>{max_epochs:g}")
    return ", ".join(why)




def _sweep_jsons(paths: list[str]) -> list[tuple[Path, dict]]:
    out = []
    for p in map(Path, paths):
        p = p.parent if p.is_file() else p  # a results.csv: its sweep dir
        f = p / "sweep.json"
        if f.is_file():
            try:
                out.append((p, dict(json.loads(f.read_text()))))
            except (ValueError, TypeError):
                raise WidthlabError(f"{f} is not valid JSON; re-run the sweep command to rewrite it") from None
    return out


def provenance(paths: list[str], runs: list[dict], short_sweep: str | None = None,
               short_runs: list[dict] | None = None) -> dict:
    """What made these results: each sweep's recipe and command (sweep.json), the matched short sweep's too (it
    decides convergence), and the runs' wall times."""
    short_dir = Path(short_sweep).resolve() if short_sweep else None
    sweeps = [{"dir": str(p), **{k: js.get(k) for k in ("name", "recipe", "command", "devices", "launcher", "budget")},
               "role": "matched short sweep, convergence" if p.resolve() == short_dir else None}
              for p, js in _sweep_jsons(paths + ([short_sweep] if short_sweep else []))]
    walls = [float(r["wall_s"]) for r in runs + (short_runs or [])
             if isinstance(r.get("wall_s"), (int, float)) and math.isfinite(r["wall_s"])]
    return {"sweeps": sweeps, "n_timed": len(walls), "wall_s_total": sum(walls)}


def _find(rel: str, sweep: Path) -> str:
    """A path a sweep recipe wrote (relative to where it ran): as given if it exists from here, else found from the
    sweep dir or one of its parents (a repository's docs/results/<name> from outside the repository)."""
    p = Path(rel)
    if p.is_absolute() or p.exists():
        return rel
    return next((str(a / p) for a in [sweep, *sweep.resolve().parents] if (a / p).exists()), rel)


def sweep_defaults(paths: list[str], given: set[str] = frozenset()) -> dict:
    """The `compare` sections the sweep recipes left in <sweep>/sweep.json (e.g. {"loss": "val_loss_best"}), merged
    over every sweep compared; two sweeps that set one key differently are a one-line error unless the key is in
    `given` (set on the command line)."""
    merged: dict = {}
    for p, js in _sweep_jsons(paths):
        try:
            section = dict(js.get("compare") or {})
        except (TypeError, ValueError):
            raise WidthlabError(f"{p / 'sweep.json'}: compare must be a mapping") from None
        if isinstance(section.get("short_sweep"), str):
            section["short_sweep"] = _find(section["short_sweep"], p)
        for k, v in section.items():
            if k in given:
                continue
            old = merged.setdefault(k, (v, p))
            same = old[0] == v or (k == "short_sweep" and Path(old[0]).resolve() == Path(v).resolve())
            if not same:
                raise WidthlabError(f"sweeps {old[1]} and {p} set compare.{k} differently ({old[0]!r} vs {v!r}): "
                                    f"pass --{k} to choose")
    return {k: v for k, (v, _) in merged.items()}


def arm_override_keys(paths: list[str]) -> dict[str, set[str]]:
    """arm → the settings the compared sweeps declare as that arm's overrides (sweep.json arms); they may differ
    from the other arms'. An arm declared by no sweep.json is absent."""
    out: dict[str, set[str]] = {}
    for p, js in _sweep_jsons(paths):
        arms = js.get("arms") or {}
        if not isinstance(arms, dict):
            raise WidthlabError(f"{p / 'sweep.json'}: arms must be a mapping of arm → overrides")
        for arm, ov in arms.items():
            out.setdefault(arm, set()).update(k for k in (ov if isinstance(ov, dict) else ()) if k != "seeds")
    return out


def loss_at_fraction(r: dict, frac: float, best: bool) -> float:
    """The run's validation loss at `frac` of its training (the last validation at or before that step; the
    best so far if `best`), from val_history; NaN when the run has no history."""
    hist = r.get("val_history")
    steps = r.get("steps") or (max(s for s, _ in hist) if hist else None)
    if not hist or not steps:
        return math.nan
    pts = [v for s, v in hist if s <= frac * steps]
    if not pts:
        return math.nan
    return float(min(pts) if best else pts[-1])
