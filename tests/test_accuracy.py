"""The cost model against published training runs (bench/accuracy.py), one constant set per GPU."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from accuracy import score, summarize  # noqa: E402
from cases import load_cases  # noqa: E402


def test_published_cases_within_targets():
    rows = [score(c) for c in load_cases()]
    s = summarize(rows)
    assert s["median_abs_error"] <= 0.10, rows
    assert s["worse_than_25pct"] <= 1
    assert s["worse_than_50pct"] == 0
