"""`autopar diff` as a table of steps (change of each figure) with totals, or its JSON document."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from planner.commands.diff import FIGURES, DiffResult


def _fmt(fig: str, x: float, signed: bool = True) -> str:
    sign = "+" if signed else ""
    if fig == "step_time_s":
        return f"{x:{sign}.4f} s"
    if fig == "tokens_per_s":
        return f"{x:{sign},.0f}"
    return f"{x / 2**30:{sign}.2f} GiB"


def render(out: Console, res: DiffResult, fmt: str) -> None:
    """JSON document, or a table of steps (change of each figure, share of the total) with totals."""
    if fmt == "json":
        print(json.dumps(res.as_json(), indent=2))
        return
    head = Table("figure", "A", "B", "change", title=escape(f"{res.a} -> {res.b} (re-estimated)"), title_justify="left")
    for f in FIGURES:
        rel = res.total[f] / res.a_predicted[f] if res.a_predicted[f] else 0.0
        head.add_row(
            f,
            _fmt(f, res.a_predicted[f], False),
            _fmt(f, res.b_predicted[f], False),
            f"{_fmt(f, res.total[f])} ({rel:+.1%})",
        )
    out.print(head)
    if not res.steps:
        out.print("no knob changed between the two plans")
        return
    t = Table(
        "#",
        "knob",
        "A -> B",
        *(f"Δ {f}" for f in FIGURES),
        title="attribution (knobs applied in this order)",
        title_justify="left",
    )
    for i, s in enumerate(res.steps, 1):
        shown = "; ".join(f"{c['field']}: {c['a']} -> {c['b']}" for c in s.changes[:4])
        more = f" (+{len(s.changes) - 4} more)" if len(s.changes) > 4 else ""
        t.add_row(str(i), escape(" + ".join(s.knobs)), escape(shown + more), *(_fmt(f, s.delta[f]) for f in FIGURES))
        for note in s.merged_because:
            t.add_row("", f"[dim]merged: {escape(note)}[/dim]", "", "", "", "")
    t.add_row("", "total", "", *(_fmt(f, res.total[f]) for f in FIGURES))
    out.print(t)
