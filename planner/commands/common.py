"""What several commands share: writing an output file, checking a --format value, and the
command-line options they declare as data (``Opt``)."""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from models.errors import SpecError
from planner.inputs import Opt


class Interrupted(Exception):
    """Ctrl-C after a partial result was printed (plan, sweep): the CLI exits 130 with the message."""


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path``; an unwritable path is bad input (SpecError, exit 2) for every command."""
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_writable(path: Path | None, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written before any work is done (exit 2): its folder
    must exist and be writable, and the path must not be a folder."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise SpecError(f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise SpecError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise SpecError(f"{flag} {path}: not writable")


def positive_seconds(opts: dict, name: str) -> float:
    """``opts[name]`` as a finite number of seconds > 0 (``--rank-timeout nan`` is bad input)."""
    value = opts[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise SpecError(f"--{name.replace('_', '-')} must be a finite number of seconds > 0 (got {value})")
    return float(value)


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise SpecError(f"--format must be one of {', '.join(allowed)} (got {fmt!r})")


FMT_OPTION = Opt("fmt", str, "table", ("--format", "-f"), "Output format: table or json.")
SETS_OPTION = Opt(
    "sets",
    list[str] | None,
    None,
    ("--set",),
    "Override a spec field: model.KEY=VALUE, cluster.KEY=VALUE or training.grad_reduce_dtype="
    "auto|fp32|bf16 or training.tp_overlap=backward|full|none (repeatable).",
)
PLOT_OPTIONS = (
    Opt("plot", Path | None, None, ("--plot",), "Draw the plan to this .png/.svg/.pdf (needs autopar[plots])."),
    Opt(
        "plot_kind",
        str,
        "gantt",
        ("--plot-kind",),
        "gantt, memory, breakdown, or all (PATH-gantt, -memory, -breakdown).",
    ),
)


# Wall-clock seconds a search gets unless --time-limit says otherwise (plan, sweep per point, explain).
TIME_LIMIT_S = 60.0


def parameters(
    opts: Sequence[Opt | inspect.Parameter], option: Callable[..., Any], argument: Callable[..., Any]
) -> list[inspect.Parameter]:
    """Function parameters of declared options, made with the CLI framework's ``option(default,
    *flags, help=)`` and ``argument(default, help=)`` (ready-made parameters pass through: the
    knob registry builds its own)."""
    out = []
    for o in opts:
        if not isinstance(o, inspect.Parameter):
            info = argument(o.default, help=o.help) if o.argument else option(o.default, *o.flags, help=o.help)
            o = inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=o.kind, default=info)
        out.append(o)
    return out


def with_options(
    option: Callable[..., Any], argument: Callable[..., Any], **groups: Sequence[Opt | inspect.Parameter]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that replaces each parameter named in ``groups`` by that group's options (as
    ``parameters`` makes them) and hands the command their values as a dict under the group's name.
    A group must not share its name with an option (typer reads the command's annotations)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        params = [
            q
            for p in sig.parameters.values()
            for q in (parameters(groups[p.name], option, argument) if p.name in groups else [p])
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            names = {g: [o.name for o in opts] for g, opts in groups.items()}
            grouped = {g: {n: kwargs.pop(n) for n in ns if n in kwargs} for g, ns in names.items()}
            return fn(*args, **grouped, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return deco
