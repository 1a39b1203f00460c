"""Every command and option has help text and is documented in README.md or docs/cli.md.

The typer app is walked as click sees it (typer.main.get_command), groups recursively, so a
command added anywhere is covered without touching this file. Typer ships its own copy of click
(``typer._click``), so groups and options are recognised by their attributes (``commands``,
``param_type_name``), not by isinstance checks against the ``click`` package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md").read_text(encoding="utf-8") + "\n" + (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def _walk(cmd, path: tuple[str, ...]) -> list[tuple[str, object]]:
    """(command path without the program name, command) for every group and command."""
    found = [(" ".join(path), cmd)] if path else []
    if hasattr(cmd, "commands"):  # a group
        for name, sub in sorted(cmd.commands.items()):
            found += _walk(sub, path + (name,))
    return found


COMMANDS = _walk(typer.main.get_command(app), ())
IDS = [name for name, _ in COMMANDS]


def _params(cmd) -> list:
    """The command's own parameters (click's --help is added by the context, not listed here)."""
    return [p for p in cmd.params if p.name != "help"]


def _documented(text: str) -> bool:
    """``text`` (``autopar`` + a command path, or a long flag) appears as a whole word in the docs."""
    return re.search(rf"(?<![\w-]){re.escape(text)}(?![\w-])", DOCS) is not None


def test_the_walk_finds_the_known_commands():
    assert (typer.main.get_command(app).help or "").strip(), "`autopar --help` has no description"
    for name in ("estimate", "plan", "run", "presets list", "presets show", "schema plan", "schema model",
                 "schema cluster", "import-hf", "doctor"):
        assert name in IDS, name


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=IDS)
def test_command_has_help(name, cmd):
    assert (cmd.help or "").strip(), f"`autopar {name}` has no help text (docstring)"


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=IDS)
def test_every_option_and_argument_has_help(name, cmd):
    missing = [p.name for p in _params(cmd) if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"`autopar {name}`: no help for {missing}"


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=IDS)
def test_command_and_its_long_flags_are_documented(name, cmd):
    assert _documented(f"autopar {name}"), f"`autopar {name}` is not mentioned in README.md or docs/cli.md"
    flags = [o for p in _params(cmd) if p.param_type_name == "option" for o in p.opts + p.secondary_opts
             if o.startswith("--")]
    missing = [f for f in flags if not _documented(f)]
    assert not missing, f"`autopar {name}`: {missing} not documented in README.md or docs/cli.md"


def test_the_check_can_fail():
    assert not _documented("--no-such-flag") and not _documented("autopar import")  # only import-hf
    assert _documented("--tp") and not _documented("--t")
