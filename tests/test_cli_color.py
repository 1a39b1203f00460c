"""No colour when stdout is not a terminal or when NO_COLOR is set — for every command.

Colour is decided when the consoles are created (rich reads the stream, FORCE_COLOR and NO_COLOR
then), so each scenario runs in a fresh interpreter whose stdout is a pipe: the child imports
the CLI under the scenario's environment and runs every case with typer's CliRunner (colour
codes kept, ``color=True``), then reports what each case printed.

- piped (no variables): no escape sequence at all on stdout or stderr;
- FORCE_COLOR=1 and NO_COLOR=1 (a forced terminal): no colour SGR parameter (30-38, 40-48,
  90-97, 100-107); bold/italic may remain, as the NO_COLOR convention allows;
- control, FORCE_COLOR=1 alone: colour does appear, so the detector can fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from cli import app
ROOT = Path(__file__).resolve().parents[1]

# (command path, arguments); {plan} and {tmp} are filled in. Every command needs a case here.
CASES = [
    ("estimate", ["estimate", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32"]),
    ("estimate", ["estimate", "-m", "llama3-70b", "-c", "h100-sxm-80gb:8", "-b", "8", "-s", "8192"]),  # no fit
    ("estimate", ["estimate", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--tp", "3"]),  # bad input
    ("estimate", ["estimate", "--no-such-option"]),  # typer's own usage error
    ("plan", ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--out", "{plan}"]),
    ("run", ["run", "{plan}", "--nnodes", "2"]),
    ("sweep", ["sweep", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32",
               "--vary", "cluster.num_gpus=2,4", "--no-cache", "-j", "1"]),
    ("validate", ["validate", "{plan}"]),
    ("explain", ["explain", "{plan}"]),
    ("diff", ["diff", "{plan}", "{plan}"]),
    ("export", ["export", "{plan}", "--to", "megatron"]),
    ("import-hf", ["import-hf", str(ROOT / "tests" / "data" / "hf" / "gpt2")]),
    ("doctor", ["doctor"]),
    ("presets list", ["presets", "list"]),
    ("presets show", ["presets", "show", "llama3-8b"]),
    ("schema plan", ["schema", "plan"]),
    ("schema model", ["schema", "model"]),
    ("schema cluster", ["schema", "cluster"]),
]

CHILD = """
import json, sys
from typer.testing import CliRunner
from cli import app
runner, results = CliRunner(), []
for args in json.loads(sys.argv[1]):
    r = runner.invoke(app, args, color=True)
    results.append({"args": args, "exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
sys.__stdout__.write(json.dumps(results))
"""
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _has_colour(text: str) -> bool:
    """Whether an SGR sequence sets a foreground or background colour."""
    for params in SGR.findall(text):
        codes = [int(p) for p in params.split(";") if p]
        if any(30 <= c <= 38 or 40 <= c <= 48 or 90 <= c <= 97 or 100 <= c <= 107 for c in codes):
            return True
    return False


def _leaf_commands(cmd, path=()) -> list[str]:
    if hasattr(cmd, "commands"):
        return [n for name, sub in cmd.commands.items() for n in _leaf_commands(sub, path + (name,))]
    return [" ".join(path)]


def _run(cases, tmp_path, env: dict[str, str]) -> list[dict]:
    fill = {"{plan}": str(tmp_path / "p.json"), "{tmp}": str(tmp_path)}
    argv = [[fill.get(a, a) for a in args] for _, args in cases]
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE",
                                                              "PY_COLORS", "GITHUB_ACTIONS", "COLUMNS")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)], capture_output=True, text=True,
                          cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _present(cases) -> list:
    """The cases whose command exists in this build (helpers add commands concurrently)."""
    have = set(_leaf_commands(typer.main.get_command(app)))
    return [c for c in cases if c[0] in have]


def test_every_command_has_a_case():
    missing = set(_leaf_commands(typer.main.get_command(app))) - {name for name, _ in CASES}
    assert not missing, f"add a case to CASES for {sorted(missing)}"


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1", "NO_COLOR": "1"}], ids=["piped", "NO_COLOR+FORCE_COLOR"])
def test_no_colour(tmp_path, env):
    results = _run(_present(CASES), tmp_path, env)
    for r in results:
        assert r["exit"] in (0, 1, 2), r  # never an internal error
        for stream in ("stdout", "stderr"):
            if env:
                assert not _has_colour(r[stream]), (r["args"], stream, r[stream][:400])
            else:
                assert "\x1b" not in r[stream], (r["args"], stream, r[stream][:400])


def test_control_forced_terminal_does_colour(tmp_path):
    """Without NO_COLOR, FORCE_COLOR colours the error and the verdict: the checks above can fail."""
    cases = [c for c in CASES if c[0] == "estimate"][1:3]
    no_fit, bad = _run(cases, tmp_path, {"FORCE_COLOR": "1"})
    assert no_fit["exit"] == 1 and _has_colour(no_fit["stdout"]), "DOES NOT FIT is red"
    assert bad["exit"] == 2 and _has_colour(bad["stderr"]), "error: is red"
