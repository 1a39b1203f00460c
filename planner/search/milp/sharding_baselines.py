"""Baselines for the sharding ILP, returning the same ``ShardingPlan``: exhaustive enumeration
(the oracle on small graphs) and fixed patterns — Megatron's alternating column/row linears
(Shoeybi et al. 2019 §3), its mirror, every linear column-parallel, every linear replicated, and
every linear row-split (data parallelism inside the group). A fixed pattern fixes only the
matmuls; the ILP chooses the best layouts of the other ops around them, so a baseline is the best
plan with that pattern."""

from __future__ import annotations

import itertools

from planner.config import PlanError
from planner.search.milp.sharding import Mesh, build_problem, plan_from_choice, solve
from planner.search.milp.sharding_graph import OpGraph
from planner.search.milp.sharding_plan import ShardingPlan

PATTERNS = ("megatron", "megatron-row-first", "column", "replicated", "data")
MAX_BRUTE_FORCE = 200_000


def brute_force(graph: OpGraph, mesh: Mesh, budget_bytes: int | None = None) -> ShardingPlan:
    """The cheapest assignment by enumerating all ``Π_i |K_i|`` of them (boundary and budget checked)."""
    p = build_problem(graph, mesh)
    sizes = [len(s) for s in p.strategies]
    total = 1
    for n in sizes:
        total *= n
    if total > MAX_BRUTE_FORCE:
        raise ValueError(f"brute force over {total} assignments exceeds {MAX_BRUTE_FORCE}")
    best: tuple[int, tuple[int, ...]] | None = None
    for choice in itertools.product(*[range(n) for n in sizes]):
        if graph.tie_boundary and p.strategies[0][choice[0]].output != p.strategies[-1][choice[-1]].output:
            continue
        if budget_bytes is not None and p.memory_bytes(choice) > budget_bytes:
            continue
        cost = p.cost_ns(choice)
        if cost is not None and (best is None or cost < best[0]):
            best = (cost, choice)
    if best is None:
        raise PlanError(f"brute force: no feasible sharding of {graph.name} at tp={mesh.tp}")
    return plan_from_choice(p, best[1], "brute-force")


def pattern_strategies(graph: OpGraph, pattern: str) -> dict[str, str]:
    """The matmul strategies a fixed pattern prescribes, in graph order."""
    mats = [op.name for op in graph.ops if op.kind == "matmul"]
    if pattern == "megatron":
        return {m: ("col", "row")[j % 2] for j, m in enumerate(mats)}
    if pattern == "megatron-row-first":
        return {m: ("row", "col")[j % 2] for j, m in enumerate(mats)}
    single = {"column": "col", "replicated": "rep", "data": "tok"}
    if pattern not in single:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    return dict.fromkeys(mats, single[pattern])


def fixed_pattern(
    graph: OpGraph, mesh: Mesh, pattern: str, budget_bytes: int | None = None, backend: str = "cp-sat"
) -> ShardingPlan | None:
    """The best plan whose matmuls follow ``pattern``; None if the pattern is illegal here
    (a dimension tp does not divide, 'data' without token splitting, over the memory budget)."""
    want = pattern_strategies(graph, pattern)
    p = build_problem(graph, mesh)
    names = {op.name: {s.name for s in ss} for op, ss in zip(graph.ops, p.strategies)}
    if any(s not in names[op] for op, s in want.items()):
        return None
    try:
        plan = solve(graph, mesh, budget_bytes, fixed=want, backend=backend)
    except PlanError:
        return None
    return plan


def best_fixed_pattern(graph: OpGraph, mesh: Mesh, budget_bytes: int | None = None) -> tuple[str, ShardingPlan]:
    """The cheapest of the legal fixed patterns (within the budget) and its name."""
    plans = [(name, fixed_pattern(graph, mesh, name, budget_bytes)) for name in PATTERNS]
    legal = [(name, plan) for name, plan in plans if plan is not None]
    if not legal:
        raise PlanError(f"no fixed pattern is legal for {graph.name} at tp={mesh.tp}")
    return min(legal, key=lambda t: t[1].time_s)
