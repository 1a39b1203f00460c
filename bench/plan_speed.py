"""Planning time and certified gap on large clusters (median of several runs).

    python bench/plan_speed.py [--repeat 3] [--time-limit 60] [--compare]

Prints, per scenario: median wall time, the reported gap, the chosen plan, the phase times
(enumerate / bound / heuristic / solve) and the MILP sizes. Targets (issue 3): llama3-70b on
1,024 H100s in <= 2 s and llama3-405b on 16,384 H100s in <= 10 s, each with gap <= 1%.
``--compare`` also plans each scenario with ``--recompute none,selective,full`` (no kept-set
options, planner/search/kept_options.py), the two runs alternating so that both see the same
machine load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Training
from planner.knobs import RECOMPUTE_OPTIONS
from planner.search import Knobs, search

SCENARIOS = [
    ("llama3-70b", "h100-sxm-80gb:1024", 1024, 8192, 2.0),
    ("llama3-405b", "h100-sxm-80gb:16384", 2048, 8192, 10.0),
]


def run(model: str, cluster: str, gbs: int, seq: int, time_limit: float, knobs: Knobs):
    t0 = time.perf_counter()
    res = search(load_model(model), load_cluster(cluster), Training(gbs, seq), knobs, time_limit_s=time_limit)
    return time.perf_counter() - t0, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--compare", action="store_true", help="also plan with the three recompute options only")
    args = ap.parse_args()
    variants = {"default": Knobs()}
    if args.compare:
        variants["three options"] = Knobs({"recompute": RECOMPUTE_OPTIONS})
    for model, cluster, gbs, seq, target in SCENARIOS:
        times: dict[str, list[float]] = {v: [] for v in variants}
        last = {}
        for _ in range(args.repeat):
            for v, knobs in variants.items():
                wall, last[v] = run(model, cluster, gbs, seq, args.time_limit, knobs)
                times[v].append(wall)
        for v in variants:
            report(model, cluster, gbs, seq, target, v if args.compare else "", times[v], last[v])
    return 0


def report(model: str, cluster: str, gbs: int, seq: int, target: float, label: str, times: list[float], last) -> None:
    c, p = last.certificate, last.best.par
    solved = [r for r in last.candidates if r.iterations]
    sizes = (
        max((r.model_size.get("variables", 0) for r in solved), default=0),
        max((r.model_size.get("constraints", 0) for r in solved), default=0),
    )
    print(f"{model} on {cluster} (global batch {gbs}, seq {seq}){f' [{label}]' if label else ''}:")
    print(
        f"  median wall {statistics.median(times):.2f} s over {len(times)} runs (target <= {target:g} s); "
        f"status {c['status']}, gap {c['gap']:.2%} (target <= 1%)"
    )
    print(
        f"  plan: dp{p.dp} tp{p.tp} pp{p.pp} cp{p.cp} zero{p.zero} mb{p.micro_batch} {p.schedule}"
        f"{f' v{p.vpp}' if p.vpp > 1 else ''}; step {last.best.predicted['step_time_s']:.3f} s, "
        f"MFU {last.best.predicted['mfu']:.1%}"
    )
    deeper = c.get("deeper_interleaving")
    if deeper:
        print(
            f"  searched space (vpp <= {max(deeper['searched_vpp'])}): best {deeper['step_time_s'][0]:.3f} s, bound "
            f"{c['best_bound_s']:.3f} s; then {deeper['vpp'][1]} virtual stages: {deeper['step_time_s'][1]:.3f} s "
            "(re-scored, not certified)"
        )
    print("  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in last.phases_s.items()))
    print(
        f"  candidates {c['candidates']} (+{c['rejected_invalid']} invalid): {c['settled']}; "
        f"MILPs solved {sum(r.iterations for r in solved)}, largest {sizes[0]} variables / {sizes[1]} constraints"
    )
    print(f"  recompute: {p.recompute_summary()}")


if __name__ == "__main__":
    raise SystemExit(main())
