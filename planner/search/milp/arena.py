"""Memory reuse as dynamic storage allocation (DSA), solved exactly with CP-SAT.

Data: buffers ``i`` with a lifetime ``[start_i, end_i)`` (integer time points: only their order
matters) and a size ``size_i`` in bytes. Every buffer gets an offset ``y_i`` in one arena; two
buffers whose lifetimes overlap must not overlap in memory. Minimise the arena size ``A``.

Variables: ``y[i] ∈ [0, UB − size_i]`` (UB: the best-fit arena, a feasible solution), ``A``.

Constraint families, one function each:

- **no_overlap** (``add_no_overlap_constraint``): the rectangles ``[start_i, end_i) × [y_i, y_i +
  size_i)`` are pairwise disjoint — ``NoOverlap2D`` over fixed time intervals and variable offset
  intervals; the rule is ``∀ i ≠ j with overlapping lifetimes: y_i + size_i ≤ y_j ∨ y_j + size_j ≤ y_i``.
- **arena_top** (``add_arena_top_constraint``): every buffer ends inside the arena, ``A ≥ y_i +
  size_i``, and the arena is at least the live bytes at any time, ``A ≥ max_t Σ_{i live at t}
  size_i`` (the max-live lower bound: a valid cut that lets CP-SAT stop as soon as a solution
  reaches it).

Objective: minimise ``A``. The solve is warm-started (``add_hint``) from the best greedy
placement of a portfolio of orders (``arena_greedy.portfolio``: best fit, then orders by each
buffer's breadth, the most bytes live during its lifetime), whose arena is also ``UB``.

DSA is NP-hard (Garey & Johnson 1979, SR2; Gergov 1999 gives a 3-approximation); the max-live
bound is tight for interval sets whose buffers are freed in LIFO order, which is what a layer's
saved activations under a pipeline schedule mostly are. The reference heuristic is greedy
best-fit by decreasing size (Pisarchyk & Lee 2020, "Efficient Memory Management for Deep Neural
Net Inference", greedy by size for offset calculation, used by TensorFlow Lite's GPU delegate):
largest buffer first, each placed in the smallest gap between the buffers already placed that
overlap it in time and fit it, else on top of them. The data (``Buffer``, the max-live bound,
the checks) is in ``arena_buffers.py``, the greedy placements in ``arena_greedy.py``.

What one second buys (bench/memory_reuse.py): on plan stages best fit meets max-live (optimal
by the bound); on 1,000 random buffers CP-SAT, started from the portfolio, rarely improves it
within the second, so the answer is the portfolio's, a few per cent above max-live, and not
proven optimal (FEASIBLE); on small instances CP-SAT proves the optimum (tests/test_arena.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from planner.search.milp.arena_buffers import Buffer, check_buffers, check_packing, max_live_bytes
from planner.search.milp.arena_greedy import best_fit, lowest_fit, portfolio
from planner.search.milp.model import SolveStatus

# Re-exported: the memory-reuse API is this module's (stage_buffers, bench, runtime.arena, tests).
__all__ = ["ArenaResult", "Buffer", "best_fit", "check_packing", "lowest_fit", "max_live_bytes", "solve_arena"]

GREEDY_SHARE = 0.5  # of the time limit, at most, for the portfolio; CP-SAT gets the rest
# CP-SAT returns 10-30 ms after its own limit on 1,000 buffers (measured): its limit is cut by
# this share of the whole, so the call as a whole keeps to the limit.
CP_SAT_MARGIN = 0.05


@dataclass(frozen=True)
class ArenaResult:
    """A solved arena. ``gap`` is (arena − max-live) / max-live, the distance to the lower bound;
    ``status`` is OPTIMAL when the arena is proven minimal (by CP-SAT or by meeting max-live)."""

    offsets: tuple[int, ...]  # per buffer, in input order
    arena_bytes: int
    max_live_bytes: int  # the lower bound
    best_fit_bytes: int  # greedy best-fit on the same buffers
    status: SolveStatus
    wall_time_s: float
    backend: str

    @property
    def gap(self) -> float:
        return (self.arena_bytes - self.max_live_bytes) / max(self.max_live_bytes, 1)


@dataclass
class _ArenaVars:
    """CP-SAT variables: offsets ``y[i]``, their intervals, and the arena size ``A``."""

    y: list[cp_model.IntVar]
    y_iv: list[cp_model.IntervalVar]
    x_iv: list[cp_model.IntervalVar]
    arena: cp_model.IntVar


def add_no_overlap_constraint(model: cp_model.CpModel, v: _ArenaVars) -> None:
    """Buffers alive at the same time occupy disjoint byte ranges:
    NoOverlap2D over ``[start_i, end_i) × [y_i, y_i + size_i)``."""
    model.add_no_overlap_2d(v.x_iv, v.y_iv)


def add_arena_top_constraint(model: cp_model.CpModel, v: _ArenaVars, buffers: list[Buffer], lower: int) -> None:
    """Every buffer lies below the arena's top, ``A ≥ y[i] + size_i``, and ``A ≥ max-live``."""
    for i, b in enumerate(buffers):
        model.add(v.arena >= v.y[i] + b.size_bytes).with_name(f"top[buffer={i}]")
    model.add(v.arena >= lower).with_name("max_live")


def solve_arena(
    buffers: list[Buffer], time_limit_s: float = 1.0, workers: int | None = None, shortcut: bool = True
) -> ArenaResult:
    """Minimum arena for ``buffers`` (module docstring): the greedy portfolio for up to
    ``GREEDY_SHARE`` of ``time_limit_s``, then CP-SAT from its best placement for the rest; the
    greedy arena if CP-SAT finds nothing better (then FEASIBLE, with the gap to max-live reported).
    ``shortcut``: return the greedy placement without calling CP-SAT when it already meets max-live.
    ``workers``: CP-SAT workers, default one per core (up to 8): on 2 cores, 8 workers overran
    the 1 s limit of a 1,000-buffer solve to 2-3 s under load, and no-overlap propagation
    gains nothing from the LP-based workers a larger portfolio adds."""
    check_buffers(buffers)
    t0 = time.perf_counter()
    lower = max_live_bytes(buffers)
    greedy = portfolio(buffers, lower, t0 + GREEDY_SHARE * time_limit_s)
    hint, upper, bf = greedy.offsets, greedy.arena_bytes, greedy.best_fit_bytes
    if shortcut and upper == lower:  # the greedy placement meets the lower bound: proven optimal without a search
        return ArenaResult(tuple(hint), upper, lower, bf, SolveStatus.OPTIMAL, time.perf_counter() - t0, greedy.name)
    model = cp_model.CpModel()
    y = [model.new_int_var(0, upper - b.size_bytes, f"y[buffer={i}]") for i, b in enumerate(buffers)]
    v = _ArenaVars(
        y,
        [model.new_fixed_size_interval_var(y[i], b.size_bytes, f"mem[buffer={i}]") for i, b in enumerate(buffers)],
        [
            model.new_fixed_size_interval_var(b.start, b.end - b.start, f"life[buffer={i}]")
            for i, b in enumerate(buffers)
        ],
        model.new_int_var(lower, upper, "A[arena_bytes]"),
    )
    add_no_overlap_constraint(model, v)
    add_arena_top_constraint(model, v, buffers, lower)
    model.minimize(v.arena)
    for var, o in zip(y, hint):
        model.add_hint(var, o)
    model.add_hint(v.arena, upper)
    solver = cp_model.CpSolver()
    # The limit covers the whole call: what the greedy passes and the model build took is deducted.
    left = (1 - CP_SAT_MARGIN) * time_limit_s - (time.perf_counter() - t0)
    if left <= 0:  # nothing left for a search: the greedy placement, not proven optimal
        return ArenaResult(tuple(hint), upper, lower, bf, SolveStatus.FEASIBLE, time.perf_counter() - t0, greedy.name)
    solver.parameters.max_time_in_seconds = left
    solver.parameters.num_workers = workers or min(8, os.cpu_count() or 1)
    code = solver.solve(model)
    wall = time.perf_counter() - t0
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE) or solver.objective_value >= upper:
        # Nothing better than the hint: the greedy packing is the answer (proven when optimal).
        status = SolveStatus.OPTIMAL if code == cp_model.OPTIMAL else SolveStatus.FEASIBLE
        return ArenaResult(tuple(hint), upper, lower, bf, status, wall, f"cp-sat (no better than {greedy.name})")
    offsets = tuple(int(solver.value(var)) for var in y)
    status = SolveStatus.OPTIMAL if code == cp_model.OPTIMAL else SolveStatus.FEASIBLE
    return ArenaResult(offsets, int(solver.objective_value), lower, bf, status, wall, "cp-sat")
