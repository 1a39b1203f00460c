"""Which activations of one layer to keep for backward and which to recompute: a 0/1 program
(Checkmate, Jain et al. 2020, MLSys) in its two-phase form, and its (time, memory) Pareto set.

Data (``RecomputeGraph``): tensors ``t`` with an integer size ``m_t`` (bytes in ``unit_bytes``),
the op ``op(t)`` that produces them, whether the backward pass reads them (``needed_t``); ops
``o`` with an integer forward time ``c_o`` (in ``unit_s``) and the tensors they read ``in(o)``;
sources (the layer input), always kept.

Two-phase form. Checkmate schedules a stage per node; for one layer between its forward and its
backward under a pipeline schedule only two moments matter: what the micro-batch holds while it
waits (the kept set, times the in-flight micro-batches, is what the placement MILP budgets) and
what the backward re-runs before it starts (one recompute pass, as ``torch.utils.checkpoint``
and selective activation checkpointing do). Freeing recomputed tensors during that pass
(Checkmate's multi-stage schedule) changes the backward's transient peak, not the kept bytes;
``planner/search/milp/revolve.py`` keeps the stages for the multi-level chain problem.

Variables: ``keep[tensor=t] ∈ {0,1}`` (fixed to 1 for sources), ``rerun[op=o] ∈ {0,1}``.
Constraint families, one function each:

- **need** (``add_need_constraint``): a tensor the backward reads is kept or its op re-runs,
  ``keep[t] + rerun[op(t)] ≥ 1`` for every ``t`` with ``needed_t``.
- **inputs** (``add_inputs_constraint``): an op re-runs only on inputs that are kept or
  themselves recomputed, ``rerun[o] ≤ keep[u] + rerun[op(u)]`` for every ``u ∈ in(o)``
  (a recomputed tensor's own inputs, recursively: multi-op recompute chains).
- **budget** (``add_budget_constraint``): ``Σ_t m_t·keep[t] ≤ B``.

Objective: minimise ``Σ_o c_o·rerun[o]``; the memory of a solution is ``Σ_t m_t·keep[t]``.
Given a kept set the least recompute is the closure of the needed, unkept tensors' ops over
unkept inputs (``recompute_closure``), which is what the exhaustive reference enumerates.

Pareto set (ε-constraint method, Haimes et al. 1971): ``B = Σ m``; repeat: the least time ``T``
under ``B``, then the least memory ``M`` with time ``≤ T``; record ``(T, M)``; ``B = M − 1``; stop
when infeasible. With integer data every Pareto point is found exactly once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from planner.cost.recompute_graph import OpNode, RecomputeGraph, Tensor, recompute_closure
from planner.search.milp.intmodel import IntModel, IntSolution
from planner.search.milp.model import SolveStatus

__all__ = [
    "OpNode",
    "RecomputeGraph",
    "RecomputeOption",
    "Tensor",
    "evaluate",
    "front",
    "pareto",
    "pareto_exhaustive",
    "recompute_closure",
    "solve",
]


@dataclass(frozen=True)
class RecomputeOption:
    """One way to run the layer: what it keeps, what its backward re-runs, and their cost."""

    time: int  # unit_s
    memory: int  # unit_bytes, sources included
    kept: frozenset[str]
    rerun: frozenset[str]
    status: SolveStatus = SolveStatus.OPTIMAL
    backend: str = ""


def evaluate(g: RecomputeGraph, kept: frozenset[str]) -> RecomputeOption:
    """Time and memory of keeping ``kept`` (sources are added): the least recompute it allows."""
    kept = kept | {t.name for t in g.tensors if not t.op}
    rerun = recompute_closure(g, kept)
    mem = sum(t.size for t in g.tensors if t.name in kept)
    return RecomputeOption(sum(g.op(o).time for o in rerun), mem, kept, rerun, backend="closure")


def add_need_constraint(m: IntModel, g: RecomputeGraph) -> None:
    """A tensor the backward reads is kept or recomputed: keep[t] + rerun[op(t)] ≥ 1."""
    for t in g.tensors:
        if t.needed and t.op:
            m.add({f"keep[tensor={t.name}]": 1, f"rerun[op={t.op}]": 1}, ">=", 1, f"need[tensor={t.name}]")


def add_inputs_constraint(m: IntModel, g: RecomputeGraph) -> None:
    """An op re-runs on kept or recomputed inputs: rerun[o] ≤ keep[u] + rerun[op(u)], u ∈ in(o)."""
    producer = {t.name: t.op for t in g.tensors}
    for o in g.ops:
        for u in dict.fromkeys(o.inputs):
            terms = {f"rerun[op={o.name}]": 1, f"keep[tensor={u}]": -1}
            if producer[u]:
                terms[f"rerun[op={producer[u]}]"] = terms.get(f"rerun[op={producer[u]}]", 0) - 1
            m.add(terms, "<=", 0, f"inputs[op={o.name},tensor={u}]")


def add_budget_constraint(m: IntModel, g: RecomputeGraph, budget: int) -> None:
    """The kept bytes fit the budget: Σ_t m_t·keep[t] ≤ B."""
    m.add({f"keep[tensor={t.name}]": t.size for t in g.tensors}, "<=", budget, "budget")


def build_model(
    g: RecomputeGraph, budget: int, max_time: int | None = None, kept: frozenset[str] | None = None
) -> IntModel:
    """The program of the module docstring; with ``max_time`` it minimises memory instead,
    under ``Σ c_o·rerun[o] ≤ max_time`` (the second step of the ε-constraint sweep); ``kept``
    fixes the kept set (a named policy: what the program charges for exactly that set)."""
    m = IntModel("recompute")
    for t in g.tensors:
        fixed = 1 if not t.op else (None if kept is None else int(t.name in kept))
        m.bool_var(f"keep[tensor={t.name}]", fixed=fixed)
    for o in g.ops:
        m.bool_var(f"rerun[op={o.name}]")
    add_need_constraint(m, g)
    add_inputs_constraint(m, g)
    add_budget_constraint(m, g, budget)
    time_terms = {f"rerun[op={o.name}]": o.time for o in g.ops}
    if max_time is None:
        m.minimize(time_terms)
    else:
        m.add(time_terms, "<=", max_time, "time")
        m.minimize({f"keep[tensor={t.name}]": t.size for t in g.tensors})
    return m


def _option(g: RecomputeGraph, sol: IntSolution) -> RecomputeOption:
    kept = frozenset(t.name for t in g.tensors if sol.values[f"keep[tensor={t.name}]"])
    rerun = frozenset(o.name for o in g.ops if sol.values[f"rerun[op={o.name}]"])
    mem = sum(t.size for t in g.tensors if t.name in kept)
    return RecomputeOption(sum(g.op(o).time for o in rerun), mem, kept, rerun, sol.status, sol.backend)


def solve(
    g: RecomputeGraph, budget: int, backend: str = "cp-sat", kept: frozenset[str] | None = None
) -> RecomputeOption | None:
    """The least-recompute option within ``budget``, with the least memory among those;
    None when even keeping only the sources exceeds it. ``kept``: only that kept set."""
    g.check()
    first = build_model(g, budget, kept=kept).solve(backend)
    if first.status == SolveStatus.INFEASIBLE:
        return None
    if first.objective is None:
        raise RuntimeError(f"recompute solve ended {first.status} without a solution (budget {budget})")
    second = build_model(g, budget, max_time=first.objective, kept=kept).solve(backend)
    if second.objective is None:
        raise RuntimeError(f"recompute memory step ended {second.status} at time {first.objective}")
    return _option(g, second)


def pareto(g: RecomputeGraph, backend: str = "cp-sat") -> list[RecomputeOption]:
    """Every Pareto-optimal (time, memory) option, fastest first (ε-constraint, module docstring)."""
    out: list[RecomputeOption] = []
    budget = sum(t.size for t in g.tensors)
    while (opt := solve(g, budget, backend)) is not None:
        out.append(opt)
        budget = opt.memory - 1
    return out


def pareto_exhaustive(g: RecomputeGraph) -> list[tuple[int, int]]:
    """The reference: every kept set (2^n for n non-source tensors), its closure, the front."""
    free = [t.name for t in g.tensors if t.op]
    points = set()
    for bits in itertools.product((0, 1), repeat=len(free)):
        opt = evaluate(g, frozenset(n for n, b in zip(free, bits) if b))
        points.add((opt.time, opt.memory))
    return front(points)


def front(points: set[tuple[int, int]] | list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The non-dominated (time, memory) pairs, fastest first."""
    out: list[tuple[int, int]] = []
    for t, mem in sorted(set(points)):
        if not out or mem < out[-1][1]:
            out.append((t, mem))
    return out
