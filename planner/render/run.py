"""The run report of `autopar run`: per-step losses and times, then measured vs predicted."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def run_report_table(out: Console, rep: dict) -> None:
    """Per-step losses and times, then measured vs predicted with relative errors."""
    title = f"run on {rep['world_size']} {rep['device_type']} ranks"
    steps = Table("step", "loss", "grad norm", "lr", "step s", "tokens/s", title=title, title_justify="left")
    for s in rep["steps"]:
        norm, lr = s.get("grad_norm"), s.get("lr")
        steps.add_row(
            str(s["step"]),
            f"{s['loss']:.5f}",
            f"{norm:.4g}" if norm is not None else "-",
            f"{lr:.3g}" if lr is not None else "-",
            f"{s['step_time_s']:.4f}",
            f"{s['tokens_per_s']:,.0f}",
        )
    out.print(steps)
    cmp = Table(
        "figure", "measured", "predicted", "relative error", title="measured vs predicted", title_justify="left"
    )
    for key, pred in rep["predicted"].items():
        meas = rep["measured"].get(key)
        rel = rep["relative_error"].get(key)
        cmp.add_row(
            key,
            _figure(key, meas) if meas is not None else "-",
            _figure(key, pred),
            f"{rel:+.1%}" if rel is not None else "n/a (CPU counts activations only)",
        )
    for state in rep.get("model_state") or []:
        pred = state["predicted"] or {}
        for key, meas in state["measured_mean"].items():
            exact = "equal" if pred.get(key) == meas else "differs"
            row = _figure(key, pred[key]) if key in pred else "-"
            cmp.add_row(f"pp {state['pp_rank']} {key} (model state)", _figure(key, meas), row, exact if pred else "-")
    out.print(cmp)
    if rep.get("phases"):
        _phase_table(out, rep["phases"])
    cores = rep.get("cpu_cores")
    if cores and rep["world_size"] > cores:
        out.print(
            f"[yellow]note:[/yellow] {rep['world_size']} ranks shared {cores} CPU cores: the measured step time "
            "includes waiting for a core, so its error says nothing about the plan (memory still does)."
        )


def _phase_table(out: Console, ph: dict) -> None:
    """Per phase: measured (slowest rank, mean step) beside the plan's prediction; collectives by kind."""
    table = Table("phase", "measured", "predicted", title="step phases (seconds)", title_justify="left")
    measured, predicted = ph["measured_s"], ph["predicted_s"]
    for key in dict.fromkeys([*measured, *predicted]):
        m, p = measured.get(key), predicted.get(key)
        label = "recomputed blocks (a count)" if key == "recomputed_blocks" else key
        table.add_row(label, f"{m:.4g}" if m is not None else "-", f"{p:.4g}" if p is not None else "-")
    for kind, seconds in ph["communication_s"].items():
        table.add_row(f"collective {kind} (step {ph['profiled_step']}, in flight)", f"{seconds:.4g}", "-")
    out.print(table)


def _figure(key: str, value: float) -> str:
    """Bytes in binary units (as the rest of autopar prints memory), times in seconds, rates with commas."""
    if key.endswith("_bytes"):
        for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= scale:
                return f"{value / scale:,.2f} {unit}"
        return f"{value:,.0f} B"
    if key.endswith("_s") and not key.endswith("per_s"):
        return f"{value:.4g} s"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
