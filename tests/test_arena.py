"""Memory reuse (planner/search/milp/arena.py): CP-SAT's arena against an exhaustive optimum on
small random instances, never above greedy best fit, and within 1% of max-live on transformer
stages built from scored plans (planner/search/milp/stage_buffers.py)."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.search.milp.arena import Buffer, best_fit, check_packing, lowest_fit, max_live_bytes, solve_arena
from planner.search.milp.stage_buffers import ALIGNMENT_BYTES, stage_buffers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from memory_reuse import random_buffers  # noqa: E402


def random_set(rng: random.Random, n: int, horizon: int = 10, max_size: int = 9) -> list[Buffer]:
    out = []
    for i in range(n):
        s = rng.randint(0, horizon - 2)
        out.append(Buffer(f"b{i}", s, rng.randint(s + 1, horizon), rng.randint(1, max_size)))
    return out


def exhaustive_arena(buffers: list[Buffer]) -> int:
    """The optimum: some order placed at the lowest free offset reaches it (compact any optimal
    packing downward in the order of its offsets), so trying every order is exact."""
    best = None
    for order in itertools.permutations(range(len(buffers))):
        offsets: dict[int, int] = {}
        for i in order:
            busy = [(o, o + buffers[j].size_bytes) for j, o in offsets.items() if buffers[j].overlaps(buffers[i])]
            offsets[i] = lowest_fit(buffers[i].size_bytes, busy)
        top = max(o + buffers[i].size_bytes for i, o in offsets.items())
        best = top if best is None else min(best, top)
    assert best is not None
    return best


def test_cp_sat_equals_exhaustive_optimum_on_small_instances():
    rng = random.Random(18)  # a seed whose 40 instances include 4 where best fit is not optimal
    below_best_fit = 0
    for _ in range(40):
        buffers = random_set(rng, rng.randint(2, 6))
        res = solve_arena(buffers, time_limit_s=5.0, shortcut=False)
        assert res.status == "optimal"
        assert check_packing(buffers, res.offsets) == res.arena_bytes == exhaustive_arena(buffers)
        assert res.max_live_bytes <= res.arena_bytes <= res.best_fit_bytes
        below_best_fit += res.arena_bytes < res.best_fit_bytes
    assert below_best_fit >= 1  # the instances include one where best fit is not optimal


def test_never_worse_than_best_fit_on_random_sets():
    rng = random.Random(3)
    for n in (20, 60, 120):
        buffers = random_set(rng, n, horizon=3 * n, max_size=64)
        offsets, arena = best_fit(buffers)
        assert check_packing(buffers, offsets) == arena
        res = solve_arena(buffers, time_limit_s=0.5)
        assert check_packing(buffers, res.offsets) == res.arena_bytes <= arena
        assert res.arena_bytes >= max_live_bytes(buffers)


def test_thousand_random_buffers_in_a_second_well_below_best_fit():
    """The greedy portfolio's breadth orders (arena_greedy) more than halve best fit's excess
    over max-live on bench/memory_reuse.py's random sets (seed 0: 8.7% → 0.5%, seed 1: 11.8% →
    1.0%), within the one-second limit (slack for a loaded machine)."""
    for seed in (0, 1):
        buffers = random_buffers(1000, seed)
        res = solve_arena(buffers, time_limit_s=1.0)
        assert check_packing(buffers, res.offsets) == res.arena_bytes
        assert res.max_live_bytes < res.arena_bytes < res.best_fit_bytes == best_fit(buffers)[1]
        assert res.arena_bytes - res.max_live_bytes < 0.5 * (res.best_fit_bytes - res.max_live_bytes)
        assert res.wall_time_s <= 1.5


@pytest.mark.parametrize(
    "par",
    [Parallel(dp=2, tp=2, pp=4), Parallel(dp=1, tp=2, pp=4, recompute="selective", schedule="interleaved", vpp=2)],
    ids=["1f1b", "interleaved-selective"],
)
def test_transformer_stages_within_one_percent_of_max_live(par):
    est = estimate(load_model("llama3-8b"), load_cluster(f"h100-sxm-80gb:{par.world}"), Training(16, 2048), par)
    for r in range(par.pp):
        buffers = stage_buffers(est, r)
        res = solve_arena(buffers, time_limit_s=1.0)
        assert res.arena_bytes <= 1.01 * res.max_live_bytes
        assert check_packing(buffers, res.offsets) == res.arena_bytes
        # The buffers' max-live is the estimate's peak without the allocator's reserve.
        m = est.predicted.stages[r].memory
        assert res.max_live_bytes == pytest.approx(m.total_bytes - m.fragmentation_bytes, abs=len(buffers) * ALIGNMENT_BYTES)


def test_stage_buffers_refuse_a_rank_outside_the_pipeline():
    par = Parallel(dp=2, tp=2, pp=2)
    est = estimate(load_model("llama3-8b"), load_cluster("h100-sxm-80gb:8"), Training(8, 1024), par)
    with pytest.raises(ValueError, match="pp = 2"):
        stage_buffers(est, 2)


def test_bad_buffers_are_one_line_errors():
    with pytest.raises(ValueError, match="lifetime"):
        solve_arena([Buffer("x", 3, 3, 8)])
    with pytest.raises(ValueError, match="size"):
        solve_arena([Buffer("x", 0, 3, 0)])
