"""`autopar export`: its options; the exports themselves are planner/export."""

from __future__ import annotations

from pathlib import Path

from planner.commands.common import Opt
from planner.export import DEFAULT_TT_VERSION, EXPORTERS

_TARGETS = ", ".join(f"{name} ({e.writes})" for name, e in EXPORTERS.items())

EXPORT_OPTIONS = (
    Opt("plan_file", Path, ..., (), "Plan JSON written by `autopar plan --out`.", argument=True),
    Opt("to", str, ..., ("--to",), f"Target runtime: {_TARGETS}."),
    Opt("out_path", Path | None, None, ("--out", "-o"), "Write the configuration to this file (default: stdout)."),
    Opt("fmt", str, "text", ("--format", "-f"), "text (the runtime's own file) or json (config, notes, text)."),
    Opt(
        "torchtitan_version",
        str,
        DEFAULT_TT_VERSION,
        ("--torchtitan-version",),
        "torchtitan release to export for: 0.3 (a Python config module for --module/--config) or 0.2 "
        "(a TOML job config).",
    ),
)
