"""Memory reuse (dynamic storage allocation) per pipeline stage: the max-live lower bound, the
CP-SAT arena, their gap, greedy best-fit, and the solve time (planner/search/milp/arena.py).

    python bench/memory_reuse.py [--time-limit 1.0]

Stages come from real plans scored by the cost model (planner/search/milp/stage_buffers.py);
then random interval sets of 1,000 buffers, where best fit is not optimal: for each, the arena
the solve returns within the limit (greedy portfolio, then CP-SAT: planner/search/milp/arena.py),
its gap to max-live (a lower bound, not the optimum: the gap is an upper bound on the distance to
the optimal arena), the greedy order that gave it, and best fit's gap. Target (issue 22): ≤ 1 s
per stage of 1,000 buffers, arena within 1% of max-live on transformer stages.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.search.milp.arena import Buffer, best_fit, check_packing, solve_arena
from planner.search.milp.stage_buffers import stage_buffers

GiB = 2**30
PLANS = [
    ("llama3-8b", "h100-sxm-80gb:32", Training(32, 4096), Parallel(dp=4, tp=2, pp=4)),
    ("llama3-70b", "h100-sxm-80gb:64", Training(16, 4096), Parallel(tp=8, pp=8, recompute="selective")),
    (
        "llama3-70b",
        "h100-sxm-80gb:64",
        Training(32, 4096),
        Parallel(tp=8, pp=8, recompute="full", schedule="interleaved", vpp=2),
    ),
]


def random_buffers(n: int, seed: int) -> list[Buffer]:
    """n buffers with random lifetimes over 2n time points and sizes of 1-64 × 512 bytes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = rng.randint(0, 2 * n)
        out.append(Buffer(f"b{i}", s, s + rng.randint(1, n // 5), rng.randint(1, 64) * 512))
    return out


def size(nbytes: float) -> str:
    return f"{nbytes / GiB:.3f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.3f} MiB"


def report(label: str, buffers: list[Buffer], limit: float) -> tuple[float, float]:
    t0 = time.perf_counter()
    _, bf = best_fit(buffers)
    bf_s = time.perf_counter() - t0
    res = solve_arena(buffers, time_limit_s=limit)
    forced = solve_arena(buffers, time_limit_s=limit, shortcut=False)
    check_packing(buffers, forced.offsets)
    print(
        f"{label}: {len(buffers)} buffers; max-live {size(res.max_live_bytes)}, "
        f"arena {size(res.arena_bytes)} (gap {res.gap:.3%}, {res.status}, {res.wall_time_s:.2f} s), "
        f"best fit {size(bf)} ({bf_s:.2f} s); CP-SAT run regardless: {forced.status} "
        f"gap {forced.gap:.3%} in {forced.wall_time_s:.2f} s; answer from {res.backend}"
    )
    return res.gap, res.wall_time_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=1.0, help="seconds per stage (greedy portfolio + CP-SAT)")
    ap.add_argument("--seeds", type=int, default=4, help="random interval sets of 1,000 buffers")
    args = ap.parse_args()
    for model, cluster, train, par in PLANS:
        est = estimate(load_model(model), load_cluster(cluster), train, par, keep_events=True)
        for r in sorted({0, par.pp - 1}):
            label = f"{model} {par.describe('compact')} rank {r}"
            report(label, stage_buffers(est, r), args.time_limit)
    gaps, times = [], []
    for seed in range(args.seeds):
        gap, wall = report(f"random intervals seed {seed}", random_buffers(1000, seed), args.time_limit)
        gaps.append(gap)
        times.append(wall)
    if gaps:
        print(
            f"1,000 random buffers, {len(gaps)} seeds: gap to max-live {min(gaps):.2%} to {max(gaps):.2%} "
            f"(mean {sum(gaps) / len(gaps):.2%}), solve {max(times):.2f} s at most"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
