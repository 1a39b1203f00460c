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
