"""Renderings of a `validate` report: a rich table, JSON, or GitHub Actions annotation lines."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from planner.commands.validate import DRIFT_KEYS, Report, fmt_figure


def _escape_data(text: str) -> str:
    """GitHub workflow-command message escaping (actions/toolkit ``escapeData``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """Property values additionally escape ':' and ',' (actions/toolkit ``escapeProperty``)."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_line(file: str, severity: str, title: str, message: str) -> str:
    """``::error file=plan.json,title=parallelism.tp::message`` (one annotation in the Actions log)."""
    return f"::{severity} file={_escape_property(file)},title={_escape_property(title)}::{_escape_data(message)}"


def _table(out: Console, rep: Report) -> None:
    t = Table("severity", "field", "finding", title=f"validate {rep.plan}", title_justify="left")
    for f in rep.findings:
        colour = "red" if f.severity == "error" else "yellow"
        t.add_row(f"[{colour}]{f.severity}[/{colour}]", escape(f.field), escape(f.message))
    if rep.findings:
        out.print(t)
    else:
        out.print(f"validate {escape(rep.plan)}: no findings")
    keys = DRIFT_KEYS
    cols = ["figure", "recorded", "re-estimated"] + (["golden"] if rep.against else [])
    fig = Table(
        *cols,
        title="predicted figures" + ("" if rep.predicted else " (not re-estimated: errors above)"),
        title_justify="left",
    )
    for k in keys:
        row = [k, fmt_figure(k, rep.recorded.get(k)), fmt_figure(k, (rep.predicted or {}).get(k))]
        fig.add_row(*row + ([fmt_figure(k, rep.against.get(k))] if rep.against else []))
    if rep.recorded:
        out.print(fig)


def render(out: Console, err: Console, rep: Report, fmt: str) -> None:
    """Data on stdout in the chosen format; the one-line verdict on stderr."""
    if fmt == "json":
        print(json.dumps(rep.as_json(), indent=2))
    elif fmt == "github":
        for f in rep.findings:
            print(github_line(rep.plan, f.severity, f.field, f.message))
    else:
        _table(out, rep)
    verdict = "valid" if rep.valid else "NOT VALID"
    err.print(
        f"{rep.plan}: {verdict} ({rep.count('error')} error(s), {rep.count('warning')} warning(s))",
        highlight=False,
        markup=False,
    )
