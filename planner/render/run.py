"""The run report of `autopar run`: per-step losses and times, then measured vs predicted."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def run_report_table(out: Console, rep: dict) -> None:
    """Per-step losses and times, then measured vs predicted with relative errors."""
    steps = Table(
        "step",
        "loss",
        "step s",
        "tokens/s",
        title=f"run on {rep['world_size']} {rep['device_type']} ranks",
        title_justify="left",
    )
    for s in rep["steps"]:
        steps.add_row(str(s["step"]), f"{s['loss']:.5f}", f"{s['step_time_s']:.4f}", f"{s['tokens_per_s']:,.0f}")
    out.print(steps)
    cmp = Table(
        "figure", "measured", "predicted", "relative error", title="measured vs predicted", title_justify="left"
    )
    for key, pred in rep["predicted"].items():
        meas = rep["measured"].get(key)
        rel = rep["relative_error"].get(key)
        cmp.add_row(
            key,
            f"{meas:,.4g}" if meas is not None else "-",
            f"{pred:,.4g}",
            f"{rel:+.1%}" if rel is not None else "n/a (CPU counts activations only)",
        )
    out.print(cmp)
