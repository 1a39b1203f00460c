"""Tensor vs pipeline split against measurement: BLOOM's 2022 benchmarks on 384 A100-80GB.

BigScience benchmarked ~176B GPTs on Jean Zay under several (tp, pp) splits before training
BLOOM (bench/data/tp_split_cases.json). tp 4 · pp 12 beat tp 8 · pp 12 by 7-19%: the measurement
behind autopar's preference for tp 4 over tp 8 for ~175B models at large data-parallel degree
(docs/validation.md). `python bench/tp_split.py` prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from planner.cost.estimate import estimate
from planner.search import Knobs, search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from tp_split import case_setup, load_tp_cases, run_par, score  # noqa: E402

CASES = load_tp_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_every_measured_tp4_run_is_predicted_faster_than_tp8(case):
    s = score(case)
    tp8 = [r for r in s["runs"] if r["tp"] == 8]
    tp4 = [r for r in s["runs"] if r["tp"] == 4]
    assert tp8 and tp4
    assert max(r["step_s"] for r in tp4) < min(r["step_s"] for r in tp8)  # the measurement
    assert max(r["predicted_s"] for r in tp4) < min(r["predicted_s"] for r in tp8)  # the model agrees
    for r in s["runs"]:
        assert r["fits"] and abs(r["error"]) < 0.20, r


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_planner_in_the_frameworks_space_does_not_pick_tp8(case):
    """Restricted to what Megatron-DeepSpeed ran (ZeRO-1, full recompute, 1F1B, no SP), with tp,
    pp, dp and micro-batch free, the certified plan keeps tp below 8, as the measurement says,
    and is faster than every measured run's prediction."""
    spec, cluster, train = case_setup(case)
    knobs = Knobs({"zero": (1,), "recompute": ("full",), "schedule": ("1f1b",), "sequence_parallel": (False,)})
    res = search(spec, cluster, train, knobs, time_limit_s=60)
    assert res.certificate["status"] in ("optimal", "within_gap")
    assert res.best.par.tp < 8
    for run in case["runs"]:
        ref = estimate(spec, cluster, train, run_par(case, run)).predicted["step_time_s"]
        assert res.best.predicted["step_time_s"] <= ref * (1 + 1e-9)
