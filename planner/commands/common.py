"""What several commands share: writing an output file, checking a --format value, and the
command-line options they declare as data (``Opt``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from models.errors import SpecError


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path``; an unwritable path is bad input (SpecError, exit 2) for every command."""
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise SpecError(f"--format must be one of {', '.join(allowed)} (got {fmt!r})")


@dataclass(frozen=True)
class Opt:
    """A command-line option (or, with ``argument``, a positional argument) as data: the command
    modules declare theirs, and cli.py turns each into a typer parameter (``cli._params``)."""

    name: str  # the Python name the command receives
    kind: Any  # its type (typer parses and checks it)
    default: Any  # ``...``: required
    flags: tuple[str, ...]
    help: str
    argument: bool = False


FMT_OPTION = Opt("fmt", str, "table", ("--format", "-f"), "Output format: table or json.")
SETS_OPTION = Opt("sets", Optional[list[str]], None, ("--set",),
                  "Override a spec field: model.KEY=VALUE, cluster.KEY=VALUE or training.grad_reduce_dtype="
                  "auto|fp32|bf16 or training.tp_overlap=backward|none (repeatable).")
PLOT_OPTIONS = (
    Opt("plot", Optional[Path], None, ("--plot",), "Draw the plan to this .png/.svg/.pdf (needs autopar[plots])."),
    Opt("plot_kind", str, "gantt", ("--plot-kind",), "gantt, memory, breakdown, or all (PATH-gantt, -memory, "
        "-breakdown)."),
)
