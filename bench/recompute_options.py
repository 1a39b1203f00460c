"""Would the placement MILP be faster choosing among a block's Pareto recompute options
instead of none / selective / full? An experiment on the exact-schedule placement MILP.

    python bench/recompute_options.py [--time-limit 60]

Per setting: the block's Pareto set of (recompute seconds, kept bytes) from the two-phase
program (planner/search/milp/recompute.py on block_graph.py), the placement MILP solved exactly
(schedule DAG form, planner/search/milp/placement.py) once with the three hand-written options
and once with those plus every Pareto point, and both optima. A Pareto option's time is the
program's forward kernel time plus each tensor-parallel region's forward collective when a
matmul of that region re-runs (half of ``LayerCost.comm_fwd_s`` per region: an approximation).
``--search`` instead runs what ``autopar plan`` does (planner/search/kept_options.py: kept sets
of matmul and attention outputs on the front's lower hull, at most 4, for candidates where none
does not fit) on the same settings with the mesh and micro-batch fixed, once with
``--recompute none,selective,full`` and once with auto recompute, and prints both step times.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.layer import LayerCost, graph_costs
from planner.search import Knobs, search
from planner.search.milp.block_graph import block_graph
from planner.search.milp.data import build_data
from planner.search.milp.placement import build_placement_model, read_assignment
from planner.search.milp.recompute import RecomputeOption, pareto
from planner.stacks import load_stack

BASE = ("none", "selective", "full")
REGIONS = {"attn": ("attn.qkv", "attn.out"), "ffn": ("ffn.gate_up", "ffn.down", "ffn.fc1", "ffn.fc2")}
SETTINGS = [
    # memory-bound: recompute none does not fit (rank 0: 126.9 GiB), full does (47.7 GiB)
    ("llama3-8b", "h100-sxm-80gb:8", Training(32, 8192), Parallel(tp=1, pp=4, micro_batch=2)),
    # torchtitan's stack: 'selective' is its op policy (rank 0: none 126.9, selective 76.1 GiB)
    (
        "llama3-8b",
        "h100-sxm-80gb:8",
        Training(32, 8192, stack=load_stack("torchtitan")),
        Parallel(tp=1, pp=4, micro_batch=2),
    ),
    # rank 0: none 94.2 GiB, full 44.3 GiB
    ("llama3-70b", "h100-sxm-80gb:64", Training(64, 8192), Parallel(tp=8, pp=4, micro_batch=2, sequence_parallel=True)),
    # not memory-bound: none fits, nothing to gain
    ("llama3-70b", "h100-sxm-80gb:32", Training(64, 4096), Parallel(tp=8, pp=4, sequence_parallel=True)),
]


def lower_hull(front: list[RecomputeOption]) -> list[RecomputeOption]:
    """The points of the front on its lower convex hull (memory against time): a block count
    can mix two hull points, which reaches every average between them."""
    hull: list[RecomputeOption] = []
    for p in sorted(front, key=lambda o: (o.memory, o.time)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a–p
            if (b.time - a.time) * (p.memory - a.memory) >= (p.time - a.time) * (b.memory - a.memory):
                hull.pop()
            else:
                break
        hull.append(p)
    return sorted(hull, key=lambda o: o.time)


def option_seconds(opt: RecomputeOption, unit_s: float, comm_fwd_s: float) -> float:
    regions = sum(any(o.split(":")[0] in mm for o in opt.rerun) for mm in REGIONS.values())
    return opt.time * unit_s + regions * comm_fwd_s / 2


def with_pareto(cost: LayerCost, front: list[RecomputeOption], unit_s: float) -> tuple[LayerCost, tuple[str, ...]]:
    names = tuple(f"pareto{k}" for k in range(len(front)))
    rec, act, hw = dict(cost.recompute_s), dict(cost.act_bytes), dict(cost.hw_flops)
    for name, opt in zip(names, front):
        rec[name] = option_seconds(opt, unit_s, cost.comm_fwd_s)
        act[name] = float(opt.memory)
        hw[name] = cost.hw_flops["none"]  # not used by the MILP's objective
    return replace(cost, recompute_s=rec, act_bytes=act, hw_flops=hw), names


def solve_placement(graph, costs, cluster, train, par, options, limit):
    d = build_data(graph, costs, cluster, train, par, options)
    model, v = build_placement_model(d, exact=True)
    t0 = time.perf_counter()
    sol = model.solve("ortools", time_limit_s=limit, rel_gap=1e-6)
    wall = time.perf_counter() - t0
    if sol.objective is None:
        return None, sol.status, wall, model.size, ()
    return sol.objective, sol.status, wall, model.size, read_assignment(d, v, sol.values)[1]


def plan_with_kept_sets(limit: float) -> None:
    """Each setting planned as ``autopar plan`` does, without and with kept sets (``--search``)."""
    for model, cluster_name, train, par in SETTINGS:
        fixed = {"tp": (par.tp,), "pp": (par.pp,), "micro_batch": (par.micro_batch,)}
        print(
            f"{model} on {cluster_name} ({train.stack.name} stack), tp{par.tp} pp{par.pp} mb{par.micro_batch}, "
            f"batch {train.global_batch} × {train.seq_len}:"
        )
        steps = []
        for label, extra in (("3 options", {"recompute": BASE}), ("+ kept sets", {})):
            t0 = time.perf_counter()
            res = search(
                load_model(model), load_cluster(cluster_name), train, Knobs({**fixed, **extra}), time_limit_s=limit
            )
            wall = time.perf_counter() - t0
            steps.append(res.best.predicted["step_time_s"])
            p = res.best.par
            print(
                f"  {label}: step {steps[-1]:.4f} s ({res.certificate['status']}, gap {res.certificate['gap']:.2%}, "
                f"{wall:.1f} s); {p.describe('compact')} · recompute {p.recompute_summary()}"
            )
        print(f"  step time with kept sets: {100 * (steps[1] / steps[0] - 1):+.2f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--search", action="store_true", help="plan as autopar plan does, without and with kept sets")
    args = ap.parse_args()
    if args.search:
        plan_with_kept_sets(args.time_limit)
        return 0
    for model, cluster_name, train, par in SETTINGS:
        spec, cluster = load_model(model), load_cluster(cluster_name)
        graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
        par = par.with_(dp=cluster.num_gpus // (par.tp * par.pp))
        costs = graph_costs(graph, cluster, train, par)
        g = block_graph(graph.blocks[0], graph, cluster, train, par)
        t0 = time.perf_counter()
        front = pareto(g)
        front_s = time.perf_counter() - t0
        full_front = len(front)
        front = lower_hull(front)
        ext = [with_pareto(c, front, g.unit_s)[0] if 0 < i <= len(graph.blocks) else c for i, c in enumerate(costs)]
        names = tuple(f"pareto{k}" for k in range(len(front)))
        print(f"{model} on {cluster_name}, {par.describe('compact')}, batch {train.global_batch} × {train.seq_len}:")
        print(f"  block Pareto set: {full_front} points in {front_s:.2f} s, {len(front)} on its lower hull")
        base = solve_placement(graph, costs, cluster, train, par, BASE, args.time_limit)
        more = solve_placement(graph, ext, cluster, train, par, BASE + names, args.time_limit)
        for label, (obj, status, wall, size, rec) in (("3 options", base), ("+ Pareto", more)):
            mix = {o: rec.count(o) for o in sorted(set(rec))}
            step = f"{obj:.4f} s" if obj is not None else "none"
            print(f"  {label}: step {step} ({status}, {wall:.1f} s, {size['integer_variables']} integers); {mix}")
        if base[0] and more[0]:
            print(f"  step time with the Pareto options: {100 * (more[0] / base[0] - 1):+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
