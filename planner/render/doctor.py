"""`autopar doctor` as a table or JSON, and its verdict on stderr."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from planner.commands.doctor import Check, report_json, verdict


def render_table(out: Console, checks: list[Check]) -> None:
    table = Table("section", "check", "status", "detail", title="autopar doctor", title_justify="left")
    for c in checks:
        status = {True: Text("ok", style="green"), False: Text("FAILED", style="red"), None: Text("")}[c.ok]
        table.add_row(c.section, Text(c.name), status, Text(c.detail))  # Text: details are not markup
    out.print(table)


def render(out: Console, err: Console, checks: list[Check], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(report_json(checks), indent=2))
    else:
        render_table(out, checks)
    err.print(verdict(checks), highlight=False, markup=False)
