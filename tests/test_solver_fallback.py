"""A solver backend that is missing or fails: the MILP is solved by the other one, with one line
on stderr (issue 21, item 2)."""

from __future__ import annotations

import sys

import pytest

from planner.search.milp import model as milp


def _knapsack() -> milp.Model:
    """max 5a + 4b + 3c s.t. 2a + 3b + c <= 4 over binaries: a = c = 1, objective -8 (minimised)."""
    m = milp.Model("fallback-check")
    a, b, c = (m.var(n, 0, 1, integer=True) for n in "abc")
    m.add(a * 2 + b * 3 + c, "<=", 4, "capacity")
    m.minimize(a * -5 + b * -4 + c * -3)
    return m


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(milp, "_WARNED", set())


def test_missing_ortools_falls_back_to_pulp(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ImportError("No module named 'ortools.math_opt'")

    monkeypatch.setattr(milp, "solve_mathopt_highs", missing)
    sol = _knapsack().solve("ortools")
    assert sol.status == milp.SolveStatus.OPTIMAL and sol.objective == pytest.approx(-8)
    assert sol.backend == "pulp-cbc"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: solver ortools failed (ImportError: No module named 'ortools.math_opt'); "
                   "solving with pulp instead"]
    _knapsack().solve("ortools")  # many MILPs per search: the line is printed once
    assert capsys.readouterr().err == ""


def test_failing_pulp_falls_back_to_ortools(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pulp", None)  # `import pulp` raises ImportError
    sol = _knapsack().solve("pulp")
    assert sol.status == milp.SolveStatus.OPTIMAL and sol.objective == pytest.approx(-8)
    assert sol.backend.startswith("ortools")
    assert "solver pulp failed (ModuleNotFoundError: import of pulp halted" in capsys.readouterr().err


def test_an_error_status_falls_back_too(monkeypatch, capsys):
    def broken(model, *args, **kwargs):
        return milp.Solution(milp.SolveStatus.ERROR, None, None, {}, 0.0, "ortools-highs")

    monkeypatch.setattr(milp, "solve_mathopt_highs", broken)
    sol = _knapsack().solve("ortools")
    assert sol.backend == "pulp-cbc" and sol.objective == pytest.approx(-8)
    assert "solver ortools failed (status error)" in capsys.readouterr().err


def test_infeasible_is_an_answer_not_a_failure(capsys):
    m = _knapsack()
    m.add(milp.Expr.of(m.vars[0]), ">=", 2, "impossible")
    assert m.solve("ortools").status == milp.SolveStatus.INFEASIBLE
    assert capsys.readouterr().err == ""


PLAN = ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--pp", "2", "-f", "json"]


def _plan_solver_block(*extra: str) -> tuple[dict, str]:
    import json

    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, [*PLAN, *extra])
    assert r.exit_code == 0, r.stderr
    solver = json.loads(r.stdout)["solver"]
    assert solver["model_sizes"]["milps_solved"] > 0  # MILPs were solved, by some backend
    return solver, r.stderr


def test_the_plan_file_records_the_backend_that_solved(monkeypatch):
    """--solver ortools with OR-Tools failing: every MILP falls back to PuLP, and the plan says
    so (it used to record ortools-highs, the backend asked for, not the one that answered)."""
    solver, err = _plan_solver_block()
    assert (solver["backend"], solver["backend_requested"]) == ("ortools-highs", "ortools-highs")

    def missing(*args, **kwargs):
        raise ImportError("No module named 'ortools.math_opt'")

    monkeypatch.setattr(milp, "solve_mathopt_highs", missing)
    monkeypatch.setattr(milp, "solve_ortools", missing)  # GLOP (pure LPs) too
    solver, err = _plan_solver_block()
    assert (solver["backend"], solver["backend_requested"]) == ("pulp", "ortools-highs"), solver
    assert "warning: solver ortools failed (ImportError" in err and "solving with pulp instead" in err


def test_a_failing_pulp_is_recorded_as_ortools(monkeypatch):
    monkeypatch.setitem(sys.modules, "pulp", None)
    solver, err = _plan_solver_block("--solver", "pulp")
    assert (solver["backend"], solver["backend_requested"]) == ("ortools-highs", "pulp"), solver
    assert "solver pulp failed" in err


def test_some_milps_falling_back_record_both(monkeypatch):
    """OR-Tools fails on the first MILP only: both backends answered, and both are recorded."""
    calls = []

    def first_fails(real):
        def solve(*args, **kwargs):
            calls.append(real.__name__)
            if len(calls) == 1:
                raise RuntimeError("solver crashed")
            return real(*args, **kwargs)

        return solve

    monkeypatch.setattr(milp, "solve_mathopt_highs", first_fails(milp.solve_mathopt_highs))
    monkeypatch.setattr(milp, "solve_ortools", first_fails(milp.solve_ortools))
    solver, _ = _plan_solver_block()
    assert len(calls) > 1 and (solver["backend"], solver["backend_requested"]) == ("ortools-highs+pulp", "ortools-highs")
