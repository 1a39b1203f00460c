"""Usage errors (an unknown option, a value of the wrong type, a missing argument or command) as
one line on stderr and exit 2, the contract every other bad input keeps (cli.py ``_guard``):
``error: invalid value for '--tp': 'abc' is not a valid integer``.

The framework's own rendering is a usage line, a hint and a boxed message: several lines a CI log
or a script cannot take as one error. ``OneLineUsageGroup`` is the top-level group (``typer.Typer(
cls=...)``): the parsing of every sub-command and sub-group happens inside its ``invoke``, so one
override covers them all. ``--help`` is not an error (it exits 0) and is left as it is; so is a
group called without a command, which prints its help (``NoArgsIsHelpError``).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

# typer ships its own copy of click (typer._click): its commands raise these, not click's.
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

USAGE_EXIT = 2  # bad input, as for every other bad input (click's FileError would exit 1)


def one_line(exc: ClickException) -> str:
    """The framework's message as one line, lower case first as autopar's other errors
    (``"Missing option '--model'."`` → ``"missing option '--model'"``)."""
    msg = " ".join(exc.format_message().split())  # messages may wrap or embed newlines
    if msg[:1].isupper() and not msg[1:2].isupper():  # "Invalid ..." but not "HF ..."
        msg = msg[0].lower() + msg[1:]
    return msg.rstrip(".")


class OneLineUsageGroup(TyperGroup):
    """A typer group whose usage errors, its own and its sub-commands', end as one line and exit 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except ClickException as exc:  # the top level's own options: `autopar --bogus`
            _fail(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as exc:  # a sub-command's (or sub-group's) parsing
            _fail(exc)


def _fail(exc: ClickException) -> Any:
    """Print the one line and leave with exit 2; a bare group's help passes through."""
    if isinstance(exc, NoArgsIsHelpError):
        raise exc
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(one_line(exc))}", highlight=False)
    raise typer.Exit(USAGE_EXIT) from None
