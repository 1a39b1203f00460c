"""Usage errors (issue 21, item 1): an unknown option, a value of the wrong type, a missing
argument, an unknown command, for every command and group, end as one line on stderr naming the
field and exit 2, like every other bad input; ``--help`` still prints the usage and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main
from conftest import ROOT
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
PROBLEM = ["-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64"]
CASES = [
    (["plan", "--bogus", "1"], "no such option: --bogus"),
    (["plan", *PROBLEM, "--top-k", "abc"], "invalid value for '--top-k'"),
    (["plan", *PROBLEM, "--time-limit", "soon"], "invalid value for '--time-limit'"),
    (["estimate", *PROBLEM, "--tp", "abc"], "invalid value for '--tp'"),
    (["estimate", "-m", "debug", "-b", "x"], "invalid value for '--global-batch'"),
    (["run", "--steps", "x", "p.json"], "invalid value for '--steps'"),
    (["run"], "missing argument"),
    (["diff", "a.json"], "missing argument 'b'"),
    (["presets", "show"], "missing argument 'name'"),
    (["presets", "show", "debug", "--nope"], "no such option: --nope"),
    (["schema", "plans"], "no such command 'plans'"),
    (["nosuch"], "no such command 'nosuch'"),
    (["--bogus"], "no such option: --bogus"),
    (["sweep", *PROBLEM, "--jobs", "two"], "invalid value for '--jobs'"),
    (["explain", "--time-limit"], "option '--time-limit' requires an argument"),
]


def _commands(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    found = [path] if path else []
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


def _one_line(r, needle: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr and "Usage" not in r.stderr


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_usage_error_is_one_line_naming_the_field(args, needle):
    _one_line(runner.invoke(app, args), needle)


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_every_command_refuses_an_unknown_option_in_one_line(path):
    _one_line(runner.invoke(app, [*path, "--no-such-flag"]), "no such option: --no-such-flag")


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_help_is_unchanged(path):
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.stdout and r.stderr == "", r.stderr


def test_the_installed_entry_point_prints_one_line():
    """As a user's shell sees it: stderr of the real process, not the test runner's capture."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "cli", "plan", *PROBLEM, "--top-k", "abc"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: invalid value for '--top-k'")
