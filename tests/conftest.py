"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root. Tests that patch code the
    ranks run, and so must fork, use it: forking inside a pytest-xdist worker (which has an I/O
    thread) can deadlock the child."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print how many inputs each hostile-input test generated (tests/test_hostile_inputs.py):
    the counts travel in the reports' user_properties (set at teardown), so they show under
    pytest-xdist too."""
    counts = {
        rep.nodeid: value
        for reports in terminalreporter.stats.values()
        for rep in reports
        for key, value in getattr(rep, "user_properties", [])
        if key == "hostile_inputs"
    }
    if counts:
        terminalreporter.write_sep("-", "hostile inputs generated per entry point")
        for nodeid, count in sorted(counts.items()):
            terminalreporter.write_line(f"{count:6d}  {nodeid}")
