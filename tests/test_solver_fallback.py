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
