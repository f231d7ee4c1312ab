"""The plan as a reader sees it: one row per sweep point (Row) and the text table `sweep --dry_run` prints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Row:
    """One point of the plan table."""
    arm: str
    width: int
    seed: int
    costs: "widthlab.plan.Costs"  # noqa: F821 (named, not imported: plan imports this module)
    steps: int | None
    tokens: int | None
    per_param: int  # the parameter count tokens/param divides by
    hours: float | None
    done: bool = False
    limit_min: int | None = None  # the job's time limit, where the cluster takes it from the plan
    overrides: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> float | None:
        return None if self.tokens is None else float(self.costs.flops_per_token) * self.tokens


def si(x: float | None, digits: int = 3) -> str:
    """1234567 → 1.23M; None → –."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    for p, s in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.{digits}g}{s}"
    return f"{x:.{digits}g}"


def duration(h: float | None) -> str:
    """Hours as a reader wants them: 42 s, 3.5 min, 2.25 h."""
    if h is None:
        return "–"
    return f"{h * 3600:.2g} s" if h < 1 / 60 else f"{h * 60:.2g} min" if h < 1 else f"{h:.3g} h"


def table(rows: list[Row], per: str = "total") -> str:
    """The plan as one text table: a line per point, then each arm's sums and the sweep's (tokens, FLOPs, hours,
    and the hours still to run where points are finished)."""
    head = ["arm", "width", "seed", "params", "non-emb", "FLOPs/tok", "steps", "tokens", f"tok/param({per})",
            "FLOPs", "time"] + (["limit"] if any(r.limit_min is not None for r in rows) else []) + [""]
    lines = []
    for r in rows:
        tpp = None if r.tokens is None else r.tokens / r.per_param
        lines.append([r.arm, str(r.width), str(r.seed), si(r.costs.params), si(r.costs.params_nonembed),
                      si(r.costs.flops_per_token), "–" if r.steps is None else str(r.steps), si(r.tokens),
                      "–" if tpp is None else f"{tpp:.3g}", si(r.flops), duration(r.hours)]
                     + ([f"{r.limit_min} min" if r.limit_min is not None else "–"] if len(head) == 13 else [])
                     + ["done" if r.done else ""])

    def total(label: str, rs: list[Row]) -> list[str]:
        def s(xs):
            return None if any(x is None for x in xs) else sum(xs)
        left = s([0.0 if r.done else r.hours for r in rs])
        return ([label, f"{len(rs)} runs", "", "", "", "", "", si(s([r.tokens for r in rs])), "",
                 si(s([r.flops for r in rs])), duration(s([r.hours for r in rs]))] + [""] * (len(head) - 12)
                + ([f"{duration(left)} to run"] if any(r.done for r in rs) else [""]))

    arms = list(dict.fromkeys(r.arm for r in rows))
    sums = [total(f"{a} (sum)", [r for r in rows if r.arm == a]) for a in arms]
    sums.append(total("all (sum)", rows))
    cols = [max(len(x[i]) for x in [head] + lines + sums) for i in range(len(head))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 or i == len(cells) - 1 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, cols))).rstrip()
    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule] + [fmt(x) for x in lines] + [rule] + [fmt(x) for x in sums])
