"""A small model of 0/1 variables and integer linear rows, solved exactly by CP-SAT and, as a
cross-check, by PuLP/CBC — for the op-level formulations whose data are integers (recompute
times in integer time units, sizes in integer byte units; DESIGN §8: scale to integers).

Why not ``planner/search/milp/model.py``: that builder divides every row by its largest
coefficient so floating-point solvers act relatively; a Pareto sweep steps the memory budget
by one byte unit, a relative step of 1e-9 on a block's bytes, below any MILP tolerance. CP-SAT
works in exact integer arithmetic, so a budget of ``m − 1`` units really excludes ``m``.
Every variable and row is named by its indices (``keep[tensor=attn.q]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from planner.search.milp.model import SolveStatus

Sense = Literal["<=", ">=", "=="]
# CP-SAT workers: a block's two-phase program (about 30 variables) solves in ~10 ms on one
# worker; eight workers on 2 cores made a block's Pareto sweep 4.8 s instead of 0.8 s. Larger
# models get the 8-worker portfolio, whose LP-based subsolvers prove optimality (DESIGN §8).
SMALL_MODEL_VARS = 200
Terms = dict[str, int]  # variable name -> integer coefficient


@dataclass(frozen=True)
class Row:
    name: str
    terms: Terms
    sense: Sense
    rhs: int


@dataclass(frozen=True)
class IntSolution:
    status: SolveStatus
    objective: int | None
    values: dict[str, int]
    wall_time_s: float
    backend: str


@dataclass
class IntModel:
    """0/1 variables, integer rows ``Σ a·x (sense) rhs``, and a minimised integer objective."""

    name: str
    vars: list[str] = field(default_factory=list)
    fixed: dict[str, int] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    objective: Terms = field(default_factory=dict)
    _rows: set[str] = field(default_factory=set)

    def bool_var(self, name: str, fixed: int | None = None) -> str:
        if name in self.vars:
            raise ValueError(f"duplicate variable name {name}")
        self.vars.append(name)
        if fixed is not None:
            self.fixed[name] = fixed
        return name

    def add(self, terms: Terms, sense: Sense, rhs: int, name: str) -> None:
        if name in self._rows:
            raise ValueError(f"duplicate constraint name {name}")
        self._rows.add(name)
        self.rows.append(Row(name, {k: int(v) for k, v in terms.items() if v}, sense, int(rhs)))

    def minimize(self, terms: Terms) -> None:
        self.objective = {k: int(v) for k, v in terms.items() if v}

    def value_of(self, terms: Terms, values: dict[str, int]) -> int:
        return sum(c * values[k] for k, c in terms.items())

    def solve(self, backend: str = "cp-sat", time_limit_s: float = 30.0, workers: int | None = None) -> IntSolution:
        """``workers`` (CP-SAT): default 1 up to ``SMALL_MODEL_VARS`` variables, else 8."""
        t0 = time.perf_counter()
        if backend == "cp-sat":
            if workers is None:
                workers = 1 if len(self.vars) <= SMALL_MODEL_VARS else 8
            sol = _solve_cpsat(self, time_limit_s, workers)
        elif backend == "pulp":
            sol = _solve_pulp(self, time_limit_s)
        else:
            raise ValueError(f"unknown backend {backend!r} (cp-sat or pulp)")
        return IntSolution(sol.status, sol.objective, sol.values, time.perf_counter() - t0, sol.backend)


def _solve_cpsat(m: IntModel, time_limit_s: float, workers: int) -> IntSolution:
    from ortools.sat.python import cp_model

    cp = cp_model.CpModel()
    xs = {v: cp.new_bool_var(v) for v in m.vars}
    for v, val in m.fixed.items():
        cp.add(xs[v] == val).with_name(f"fixed[{v}]")
    for r in m.rows:
        lhs = sum(c * xs[k] for k, c in r.terms.items())
        ct = {"<=": lhs <= r.rhs, ">=": lhs >= r.rhs, "==": lhs == r.rhs}[r.sense]
        cp.add(ct).with_name(r.name)
    cp.minimize(sum(c * xs[k] for k, c in m.objective.items()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    code = solver.solve(cp)
    if code == cp_model.INFEASIBLE:
        return IntSolution(SolveStatus.INFEASIBLE, None, {}, 0.0, "cp-sat")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return IntSolution(SolveStatus.NO_SOLUTION, None, {}, 0.0, "cp-sat")
    values = {v: int(solver.value(x)) for v, x in xs.items()}
    status = SolveStatus.OPTIMAL if code == cp_model.OPTIMAL else SolveStatus.FEASIBLE
    return IntSolution(status, m.value_of(m.objective, values), values, 0.0, "cp-sat")


def _solve_pulp(m: IntModel, time_limit_s: float) -> IntSolution:
    import pulp

    prob = pulp.LpProblem("m", pulp.LpMinimize)
    xs = {v: pulp.LpVariable(f"x{i}", cat=pulp.LpBinary) for i, v in enumerate(m.vars)}
    prob += pulp.lpSum(c * xs[k] for k, c in m.objective.items())
    for v, val in m.fixed.items():
        prob += xs[v] == val
    for r in m.rows:
        lhs = pulp.lpSum(c * xs[k] for k, c in r.terms.items())
        prob += {"<=": lhs <= r.rhs, ">=": lhs >= r.rhs, "==": lhs == r.rhs}[r.sense]
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(time_limit_s)), gapRel=0))
    st = pulp.LpStatus[prob.status]
    if st == "Infeasible":
        return IntSolution(SolveStatus.INFEASIBLE, None, {}, 0.0, "pulp-cbc")
    if st != "Optimal":
        return IntSolution(SolveStatus.NO_SOLUTION, None, {}, 0.0, "pulp-cbc")
    values = {v: int(round(x.value() or 0)) for v, x in xs.items()}
    return IntSolution(SolveStatus.OPTIMAL, m.value_of(m.objective, values), values, 0.0, "pulp-cbc")
