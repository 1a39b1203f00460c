"""A small solver-neutral MILP builder with two backends: OR-Tools (HiGHS through MathOpt; SCIP,
CBC and GLOP through pywraplp) and PuLP (CBC).

Constraint families are written once against this builder (planner/search/milp/placement.py) and
solved by either backend, so tests can check both reach the same objective. Every variable and
constraint carries a readable name built from its indices (``n[chunk=3,run=0,opt=full]``).
Wall-clock limits are enforced by the backends' own limits *and* checked afterwards (DESIGN §8:
CBC through pywraplp overran its limit).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Sense = Literal["<=", ">=", "=="]


@dataclass(eq=False)
class Var:
    name: str
    lb: float
    ub: float | None
    integer: bool
    index: int

    def __mul__(self, k: float) -> Expr:
        return Expr({self.index: float(k)})

    __rmul__ = __mul__

    def __add__(self, other) -> Expr:
        return Expr.of(self) + other

    __radd__ = __add__

    def __sub__(self, other) -> Expr:
        return Expr.of(self) - other

    def __rsub__(self, other) -> Expr:
        return Expr.of(other) - Expr.of(self)


class Expr:
    """Linear expression: {var index: coefficient} + constant."""

    __slots__ = ("terms", "const")

    def __init__(self, terms: dict[int, float] | None = None, const: float = 0.0):
        self.terms = dict(terms or {})
        self.const = const

    @staticmethod
    def of(x) -> Expr:
        if isinstance(x, Expr):
            return x
        if isinstance(x, Var):
            return Expr({x.index: 1.0})
        return Expr({}, float(x))

    def __add__(self, other) -> Expr:
        o = Expr.of(other)
        t = dict(self.terms)
        for k, v in o.terms.items():
            t[k] = t.get(k, 0.0) + v
        return Expr(t, self.const + o.const)

    __radd__ = __add__

    def __sub__(self, other) -> Expr:
        return self + Expr.of(other) * -1.0

    def __rsub__(self, other) -> Expr:
        return Expr.of(other) - self

    def __mul__(self, k: float) -> Expr:
        return Expr({i: v * k for i, v in self.terms.items()}, self.const * k)

    __rmul__ = __mul__


def total(items) -> Expr:
    """Sum of expressions, variables and numbers, accumulated in place (linear time)."""
    terms: dict[int, float] = {}
    const = 0.0
    for x in items:
        e = Expr.of(x)
        const += e.const
        for k, c in e.terms.items():
            terms[k] = terms.get(k, 0.0) + c
    return Expr(terms, const)


@dataclass
class Constraint:
    name: str
    expr: Expr  # expr (sense) 0
    sense: Sense


class SolveStatus(StrEnum):
    """How one MILP/LP solve ended (a str: compares equal to its value)."""

    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # a solution, not proven optimal (time limit or gap)
    INFEASIBLE = "infeasible"
    NO_SOLUTION = "time_limit_no_solution"
    ERROR = "error"


@dataclass
class Solution:
    status: SolveStatus
    objective: float | None
    best_bound: float | None
    values: dict[str, float]
    wall_time_s: float
    backend: str


@dataclass
class Model:
    """Variables, constraints and a minimisation objective."""

    name: str
    vars: list[Var] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    objective: Expr = field(default_factory=Expr)
    _names: set = field(default_factory=set)
    _rows: set = field(default_factory=set)  # constraint names: MathOpt rejects a model that repeats one
    nonzeros: int = 0  # coefficients of the rows: handing the model to a backend costs time linear in them

    def var(self, name: str, lb: float = 0.0, ub: float | None = None, integer: bool = False) -> Var:
        if name in self._names:
            raise ValueError(f"duplicate variable name {name}")
        self._names.add(name)
        v = Var(name, lb, ub, integer, len(self.vars))
        self.vars.append(v)
        return v

    def add(self, lhs, sense: Sense, rhs, name: str) -> None:
        """Add ``lhs (sense) rhs``; the row is divided by its largest coefficient so that solver
        tolerances act relatively (times in seconds sit next to byte counts in GiB)."""
        if name in self._rows:
            raise ValueError(f"duplicate constraint name {name}")
        self._rows.add(name)
        e = Expr.of(lhs) - Expr.of(rhs)
        big = max([abs(c) for c in e.terms.values()] + [abs(e.const)] + [1e-300])
        self.constraints.append(Constraint(name, e * (1.0 / big), sense))
        self.nonzeros += len(e.terms)

    def minimize(self, expr) -> None:
        self.objective = Expr.of(expr)

    @property
    def size(self) -> dict[str, int]:
        return {
            "variables": len(self.vars),
            "integer_variables": sum(v.integer for v in self.vars),
            "constraints": len(self.constraints),
        }

    def solve(self, backend: str = "ortools", time_limit_s: float = 60.0, rel_gap: float = 1e-9) -> Solution:
        """Solve with ``backend``; when it is missing (not installed) or fails (raises, or ends in
        an error status), solve with the other one (OR-Tools <-> PuLP/CBC) and say so once on
        stderr. The solution's ``backend`` names the one that answered."""
        t0 = time.perf_counter()
        try:
            sol = self._solve_with(backend, time_limit_s, rel_gap)
            failure = f"status {sol.status.value}" if sol.status == SolveStatus.ERROR else None
        except (ImportError, OSError, RuntimeError) as exc:
            sol, failure = Solution(SolveStatus.ERROR, None, None, {}, 0.0, backend), f"{type(exc).__name__}: {exc}"
        if failure is not None:
            other = "pulp" if backend.startswith("ortools") else "ortools"
            _warn_once(f"warning: solver {backend} failed ({failure}); solving with {other} instead")
            sol = self._solve_with(other, time_limit_s, rel_gap)
        sol.wall_time_s = time.perf_counter() - t0
        return sol

    def _solve_with(self, backend: str, time_limit_s: float, rel_gap: float) -> Solution:
        if backend in ("ortools", "ortools-scip", "ortools-highs", "ortools-cbc"):
            engine = {"ortools": "HIGHS", "ortools-scip": "SCIP", "ortools-highs": "HIGHS", "ortools-cbc": "CBC"}[
                backend
            ]
            if backend == "ortools" and not self.size["integer_variables"]:
                engine = "GLOP"  # pure LPs (relaxation bounds): GLOP measured 2-3x faster than HiGHS here
            if engine == "HIGHS":
                sol = solve_mathopt_highs(self, time_limit_s, rel_gap)
            else:
                sol = solve_ortools(self, time_limit_s, rel_gap, engine)
        elif backend == "pulp":
            sol = _solve_pulp(self, time_limit_s, rel_gap)
        else:
            raise ValueError(f"unknown solver backend {backend!r} (ortools or pulp)")
        return sol


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """One line on stderr per distinct message and process (a search solves many MILPs)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)


def solve_ortools(model: Model, time_limit_s: float, rel_gap: float, engine: str = "SCIP") -> Solution:
    from ortools.linear_solver import pywraplp

    with quiet_native_output():  # HiGHS prints a banner from native code; keep stdout and stderr clean
        s = pywraplp.Solver.CreateSolver(engine)
    inf = s.infinity()
    xs = [
        s.IntVar(v.lb, inf if v.ub is None else v.ub, v.name)
        if v.integer
        else s.NumVar(v.lb, inf if v.ub is None else v.ub, v.name)
        for v in model.vars
    ]
    for c in model.constraints:
        lo, hi = {"<=": (-inf, -c.expr.const), ">=": (-c.expr.const, inf), "==": (-c.expr.const, -c.expr.const)}[
            c.sense
        ]
        ct = s.Constraint(lo, hi, c.name)
        for i, k in c.expr.terms.items():
            ct.SetCoefficient(xs[i], k)
    obj = s.Objective()
    for i, k in model.objective.terms.items():
        obj.SetCoefficient(xs[i], k)
    obj.SetOffset(model.objective.const)
    obj.SetMinimization()
    s.SetTimeLimit(int(max(1, time_limit_s * 1000)))
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(pywraplp.MPSolverParameters.RELATIVE_MIP_GAP, rel_gap)
    with quiet_native_output():
        code = s.Solve(params)
    status = {
        pywraplp.Solver.OPTIMAL: SolveStatus.OPTIMAL,
        pywraplp.Solver.FEASIBLE: SolveStatus.FEASIBLE,
        pywraplp.Solver.INFEASIBLE: SolveStatus.INFEASIBLE,
    }.get(code, SolveStatus.NO_SOLUTION if code == pywraplp.Solver.NOT_SOLVED else SolveStatus.ERROR)
    if status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        return Solution(status, None, None, {}, 0.0, f"ortools-{engine.lower()}")
    values = {v.name: x.solution_value() for v, x in zip(model.vars, xs)}
    bound = obj.BestBound() if model.size["integer_variables"] else obj.Value()
    return Solution(status, obj.Value(), bound, values, 0.0, f"ortools-{engine.lower()}")


def solve_mathopt_highs(model: Model, time_limit_s: float, rel_gap: float) -> Solution:
    """HiGHS through OR-Tools' MathOpt API. Not pywraplp: its HiGHS interface returns neither the
    incumbent nor the bound when the time limit hits (result code 99), and on a 145.6B-GPT
    placement MILP (84 integers, 253 rows) it found nothing in 60 s where MathOpt's HiGHS proved
    the 0.5% gap in 11.5 s (docs/search.md, "Solver choice")."""
    import datetime

    from ortools.math_opt.python import mathopt

    mo = mathopt.Model(name=model.name)
    inf = float("inf")
    xs = [
        mo.add_variable(lb=v.lb, ub=inf if v.ub is None else v.ub, is_integer=v.integer, name=v.name)
        for v in model.vars
    ]
    for c in model.constraints:
        lo, hi = {"<=": (-inf, -c.expr.const), ">=": (-c.expr.const, inf), "==": (-c.expr.const, -c.expr.const)}[
            c.sense
        ]
        row = mo.add_linear_constraint(lb=lo, ub=hi, name=c.name)
        for i, k in c.expr.terms.items():
            row.set_coefficient(xs[i], k)
    mo.minimize(mathopt.LinearSum(k * xs[i] for i, k in model.objective.terms.items()) + model.objective.const)
    params = mathopt.SolveParameters(
        time_limit=datetime.timedelta(seconds=max(0.001, time_limit_s)), relative_gap_tolerance=rel_gap
    )
    try:
        with quiet_native_output():
            res = mathopt.solve(mo, mathopt.SolverType.HIGHS, params=params)
    except Exception as err:
        raise RuntimeError(f"HiGHS (MathOpt) rejected model {model.name}: {err.__context__ or err}") from None
    reason = res.termination.reason
    if reason in (mathopt.TerminationReason.INFEASIBLE, mathopt.TerminationReason.INFEASIBLE_OR_UNBOUNDED):
        return Solution(SolveStatus.INFEASIBLE, None, None, {}, 0.0, "ortools-highs")
    if not res.has_primal_feasible_solution():
        status = SolveStatus.NO_SOLUTION if reason == mathopt.TerminationReason.NO_SOLUTION_FOUND else SolveStatus.ERROR
        return Solution(status, None, None, {}, 0.0, "ortools-highs")
    values = {v.name: x for v, x in zip(model.vars, res.variable_values(xs))}
    bound = res.termination.objective_bounds.dual_bound
    status = SolveStatus.OPTIMAL if reason == mathopt.TerminationReason.OPTIMAL else SolveStatus.FEASIBLE
    return Solution(
        status, res.objective_value(), bound if math.isfinite(bound) else None, values, 0.0, "ortools-highs"
    )


@contextlib.contextmanager
def quiet_native_output():
    """Silence file descriptors 1 and 2 while native solver code runs (its banner and logs);
    solver failures still surface through the returned status."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def _pulp_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _solve_pulp(model: Model, time_limit_s: float, rel_gap: float) -> Solution:
    import pulp

    prob = pulp.LpProblem(_pulp_name(model.name), pulp.LpMinimize)
    xs = [
        pulp.LpVariable(
            _pulp_name(v.name) + f"_{v.index}", v.lb, v.ub, pulp.LpInteger if v.integer else pulp.LpContinuous
        )
        for v in model.vars
    ]
    prob += pulp.lpSum(k * xs[i] for i, k in model.objective.terms.items()) + model.objective.const

    for n, c in enumerate(model.constraints):
        e = pulp.lpSum(k * xs[i] for i, k in c.expr.terms.items()) + c.expr.const
        prob += ({"<=": e <= 0, ">=": e >= 0, "==": e == 0}[c.sense], _pulp_name(c.name) + f"_{n}")
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(time_limit_s)), gapRel=rel_gap)
    prob.solve(solver)
    st = pulp.LpStatus[prob.status]
    if st == "Infeasible":
        return Solution(SolveStatus.INFEASIBLE, None, None, {}, 0.0, "pulp-cbc")
    if st != "Optimal" or prob.sol_status not in (1, 2):
        return Solution(SolveStatus.NO_SOLUTION, None, None, {}, 0.0, "pulp-cbc")
    values = {v.name: (x.value() or 0.0) for v, x in zip(model.vars, xs)}
    objective = pulp.value(prob.objective)
    status = SolveStatus.OPTIMAL if prob.sol_status == 1 else SolveStatus.FEASIBLE
    return Solution(status, objective, objective if status == SolveStatus.OPTIMAL else None, values, 0.0, "pulp-cbc")
