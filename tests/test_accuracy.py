"""The cost model against the published runs, leave-one-source-out (bench/accuracy.py): the
targets of issue 18 on the shared reference's runs, and the ranking of every comparison group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from accuracy import report, shared_ids  # noqa: E402

SHARED = shared_ids()

# Two runs of one group whose published figures are closer than this are a tie: the sources
# print 2-3 significant digits (Narayanan et al. 2021 Table 1: 137 vs 138 TFLOP/s).
TIE = 0.03


@pytest.fixture(scope="module")
def rep():
    return report()


def test_leave_one_source_out_throughput_on_the_shared_runs(rep):
    s = rep["shared"]
    assert s["runs"] == 40
    assert s["median_abs_error"] <= 0.10, s
    assert s["p90_abs_error"] <= 0.30, s
    assert s["over_50pct"] == 0, s
    assert s["ratio_to_baseline"] <= 0.6, s


def test_intervals_cover_70_to_90_percent_out_of_sample(rep):
    assert 0.70 <= rep["shared"]["interval_coverage"] <= 0.90, rep["shared"]
    assert 0.70 <= rep["summary"]["interval_coverage"] <= 0.90, rep["summary"]  # all 103 runs


def test_the_band_is_the_split_conformal_order_statistic():
    """k_lo = floor(0.1 (n + 1)), k_hi = ceil(0.9 (n + 1)), clamped: the extremes for n = 9, the
    10th and 94th of 103, where sample percentiles would interpolate inside."""
    from fit import conformal_band

    assert conformal_band([float(i) for i in range(9)]) == (0.0, 8.0)
    assert conformal_band([float(i) for i in range(103)]) == (9.0, 93.0)
    assert conformal_band([float(i) for i in range(19)]) == (1.0, 17.0)
    assert conformal_band([5.0]) == (5.0, 5.0)


def test_every_shared_run_fits_under_its_stack_defaults(rep):
    assert rep["shared"]["not_fitting"] == []


def test_memory_on_the_runs_that_published_it(rep):
    s = rep["shared"]
    assert s["memory_runs"] >= 12
    assert s["memory_median_abs_error"] <= 0.10, s
    # Issue 18: never under-predicted by more than 5% (torchtitan's 70B 2D run, TP 8 + FSDP with a
    # vocab-parallel loss, is the closest: 71.9 GiB reserved, 70.2 predicted)
    assert s["memory_worst_under"] >= -0.05, s
    under = [r for r in rep["rows"] if r.get("mem_error", 0) < -0.05 and r["id"] in SHARED]
    assert under == [], under


def test_comparison_groups_in_measured_order(rep):
    rows = {r["id"]: r for r in rep["rows"]}
    for g in rep["ranking"]:
        for a, b in g["misordered"]:
            pa, pb = rows[a]["published"], rows[b]["published"]
            assert abs(pa - pb) / max(pa, pb) < TIE, (g["group"], a, b, pa, pb)
