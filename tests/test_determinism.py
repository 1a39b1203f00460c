"""Determinism (issue 21, item 3): the same `plan` gives the same plan bytes, timings aside, run
after run; with the other MILP backend (--solver pulp) every byte outside the ``solver`` block is
the same too (the plan, its predictions, its runner-ups: ties broken by
``planner.search.alternatives.tie_order``), and the objective; the bound and gap are each
backend's own certificate, so they may differ in their last digits. 12 small problems."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
PROBLEMS = [
    ("debug", "cpu:1", 8, 32),
    ("debug", "cpu:2", 8, 64),
    ("debug", "cpu:4", 16, 64),
    ("debug", "cpu:8", 32, 32),
    ("debug", "cpu:4", 4, 128),
    ("debug-gpt", "cpu:2", 8, 64),
    ("debug-gpt", "cpu:4", 16, 32),
    ("debug-gpt", "cpu:8", 16, 64),
    ("debug-moe", "cpu:2", 8, 32),
    ("debug-moe", "cpu:4", 16, 64),
    ("debug-moe", "cpu:8", 32, 32),
    ("debug", "a100-sxm-40gb:8", 32, 128),
]
TIMINGS = ("wall_time_s", "phases_s")  # seconds measured, the only fields allowed to differ


def _plan(model: str, cluster: str, batch: int, seq: int, solver: str) -> dict:
    args = ["plan", "-m", model, "-c", cluster, "-b", str(batch), "-s", str(seq), "--dtype", "fp32"]
    r = runner.invoke(app, [*args, "--solver", solver, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _bytes(doc: dict, drop: tuple[str, ...]) -> str:
    return json.dumps({**doc, "solver": {k: v for k, v in doc["solver"].items() if k not in drop}}, indent=2)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: "-".join(map(str, p)))
def test_same_plan_bytes_three_times_and_with_both_backends(problem):
    runs = [_bytes(_plan(*problem, "ortools"), TIMINGS) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    ortools, pulp = json.loads(runs[0]), _plan(*problem, "pulp")
    assert {**ortools, "solver": None} == {**pulp, "solver": None, "reproduce": ortools["reproduce"]}
    assert pulp["reproduce"] == ortools["reproduce"].replace("--solver ortools", "--solver pulp")
    assert pulp["solver"]["objective"] == pytest.approx(ortools["solver"]["objective"], rel=1e-9)
