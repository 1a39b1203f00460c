"""`autopar sweep`: progress bar, and the rows as a table, CSV or JSONL; the sweep curves."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.errors import SpecError
from planner.commands.common import check_writable
from planner.commands.sweep import COLUMNS, SweepSpec, parse_vary
from planner.knobs import describe
from planner.render import plots

FORMATS = ("table", "csv", "json", "jsonl")
OUT_SUFFIXES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
GiB = 2**30


def check_options(fmt: str, out_path: Path | None, jobs: int | None) -> None:
    """The sweep's own output options (bad input: exit 2)."""
    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if out_path is not None and out_path.suffix.lower() not in OUT_SUFFIXES:
        raise SpecError(f"--out {out_path}: use a .csv, .json, .jsonl or .ndjson file name")
    if jobs is not None and jobs < 1:
        raise SpecError(f"--jobs must be >= 1 (got {jobs})")
    check_writable(out_path)  # before the sweep, not after every point is planned


@contextlib.contextmanager
def progress_bar(err: Console) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr (off when it is not a terminal); yields the ``progress(done, total)`` callback.
    No auto-refresh thread: the worker processes are forked while the bar is shown, and a fork
    must not copy a lock some other thread holds."""
    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        auto_refresh=False,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("points", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, refresh=True)

        yield progress


def summary_lines(rows: list[dict], wall_s: float) -> list[str]:
    """What stderr says after the rows."""
    feasible = sum(bool(r["feasible"]) for r in rows)
    out = [
        f"{len(rows)} points ({sum(bool(r['cached']) for r in rows)} from cache) in {wall_s:.1f} s: "
        f"{feasible} feasible, {sum(bool(r['pareto']) for r in rows)} on the time/cost Pareto front"
    ]
    if not feasible:
        out.append("no point of the sweep has a plan that fits (see the reason column)")
    return out


def render_text(rows: list[dict], keys: list[str], fmt: str) -> str:
    """CSV (``point.KEY`` columns, then COLUMNS), JSON (one array of the row dicts, as every other
    command's --format json) or JSONL (one row dict per line, ``point`` nested)."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r, default=str) + "\n" for r in rows)  # YAML values may be dates
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([f"point.{k}" for k in keys] + list(COLUMNS))
    for r in rows:
        w.writerow([r["point"][k] for k in keys] + ["" if r[c] is None else r[c] for c in COLUMNS])
    return buf.getvalue()


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _tokens(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:g}"


def _plan_text(r: dict) -> str:
    """``dp8 tp2 pp4 cp1 ep1 zero1 mb1 1f1b`` and the recompute when there is one."""
    rc = f" rc:{r['recompute']}" if r["recompute"] != "none" else ""
    return describe(r) + rc


def sweep_table(out: Console, rows: list[dict], keys: list[str], tokens: float | None) -> None:
    """One line per point; infeasible points show the first sentence of their reason."""
    priced = any(r["cost_usd"] is not None for r in rows)
    title = f"sweep ({len(rows)} points" + (f"; time to train {_tokens(tokens)} tokens)" if tokens else ")")
    t = Table(
        *keys,
        "fits",
        "plan (or why not)",
        "step s",
        "tokens/s",
        "MFU",
        "peak GiB",
        "train",
        "cost $" if priced else "GPU-h",
        "gap",
        "pareto",
        title=title,
        title_justify="left",
    )
    for r in rows:
        values = [str(r["point"][k]) for k in keys]
        if not r["feasible"]:
            t.add_row(*values, "no", r["reason"].split(". ")[0], *["-"] * 8)
            continue
        money = r["cost_usd"] if priced else r["gpu_hours"]
        t.add_row(
            *values,
            "yes",
            _plan_text(r),
            f"{r['step_time_s']:.3f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['mfu']:.1%}",
            f"{r['peak_memory_bytes'] / GiB:.1f}",
            _duration(r["time_to_train_hours"]),
            "-" if money is None else f"{money:,.0f}",
            "-" if r["gap"] is None else f"{r['gap']:.2%}",
            "*" if r["pareto"] else "",
        )
    out.print(t)


def plot_rows(rows: list[dict], spec: SweepSpec, path: Path, err: Console) -> None:
    """Sweep curves (planner.render.plots.plot_sweep): throughput and cost against the first --vary key,
    one line per value of the others; cost is GPU-hours when no price was given."""
    keys = [k for k, _ in parse_vary(spec.vary)]
    if not keys:
        raise SpecError("--plot needs at least one --vary key for the x axis")
    flat = [{**r, **r["point"]} for r in rows]
    priced = spec.price_per_gpu_hour is not None
    budget = _tokens(spec.tokens) if spec.tokens else "?"
    models = ", ".join(dict.fromkeys(str(r["model"]) for r in rows if r["model"])) or str(spec.model)
    price = f"${spec.price_per_gpu_hour} per GPU-hour" if priced else "no price: GPU-hours"
    plots.plot_sweep(
        flat,
        path,
        keys[0],
        keys[1:],
        cost_key="cost_usd" if priced else "gpu_hours",
        cost_label=f"cost of {budget} tokens (USD)" if priced else f"GPU-hours for {budget} tokens",
        title=f"{models}: sweep over {keys[0]}"
        + (f" (lines: {', '.join(keys[1:])})" if keys[1:] else "")
        + f" · {budget} training tokens · {price} · ringed: Pareto front per model",
    )
    err.print(f"wrote {path}", highlight=False)
