"""Runs that survive losing a rank (issue 21, item 5).

A 4-rank dp 4 plan (debug model, cpu:4, seq 16, global batch 8, SGD) saves every 2 steps and
loses rank 1 as it starts step 3 (``AUTOPAR_FAULT``, runtime.faults). With ``--elastic`` the
launcher re-plans through the planner for the 3 ranks left, resumes from step 2 under the new
plan and finishes step 5: the report records the event, and the losses of steps 0-5 (steps 0-1
from the lost launch, 2-5 from the resumed one) equal the uninterrupted run's within 1e-5 (the
global batch is the same, so the data and the SGD update are too). Without ``--elastic`` the run
exits 1 within 30 s, naming the rank, its pid, the last checkpoint and the command to resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from cli import app  # noqa: E402
from models.load import load_model  # noqa: E402
from runtime.elastic import check_elastic, replan  # noqa: E402
from runtime.faults import FAULT_ENV, Fault, fault_from_env  # noqa: E402
from runtime.launch import run  # noqa: E402
from runtime.plan_io import PlanError, make_plan  # noqa: E402
from runtime.recipe import Recipe  # noqa: E402
from runtime.train import run_reference  # noqa: E402

SGD = Recipe(optimizer="sgd")  # what `--optimizer sgd` gives
PLAN_ARGS = ["--model", "debug", "--cluster", "cpu:4", "--global-batch", "8", "--seq-len", "16", "--dtype", "fp32"]


def _plan(tmp_path, *extra: str) -> dict:
    """A dp 4 plan from the planner itself, so that it records its cluster (inputs.cluster)."""
    path = tmp_path / "plan.json"
    result = CliRunner().invoke(app, ["plan", *PLAN_ARGS, "--dp", "4", *extra, "--out", str(path), "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def test_fault_spec_is_read_from_the_environment() -> None:
    assert fault_from_env({FAULT_ENV: "rank=1,step=3"}) == Fault(1, 3)
    assert fault_from_env({}) is None
    for bad in ("rank=1", "rank=x,step=3", "rank=1,step=3,when=now", "1,3"):
        with pytest.raises(PlanError, match="expected rank=R,step=S"):
            fault_from_env({FAULT_ENV: bad})


def test_replan_falls_back_to_the_largest_usable_world(tmp_path) -> None:
    """3 ranks: a 4-layer model pipelines over 3 stages; with 2 layers no 3-way split exists (8
    rows do not split 3 ways, nor 4 heads, nor 2 layers), so the plan is for 2 ranks."""
    plan, world = replan(_plan(tmp_path), 3)
    assert world == 3 and plan["inputs"]["cluster"]["gpus_per_node"] == 3
    assert plan["inputs"]["training"]["global_batch_size"] == 8 and plan["inputs"]["model"]["num_layers"] == 4
    small, world = replan(_plan(tmp_path, "--set", "model.num_layers=2"), 3)
    assert world == 2 and small["parallelism"]["dp"] * small["parallelism"]["pp"] * small["parallelism"]["tp"] == 2


def test_elastic_needs_a_checkpoint_dir_and_a_planned_plan(tmp_path) -> None:
    with pytest.raises(PlanError, match="--elastic needs --checkpoint-dir"):
        check_elastic(_plan(tmp_path), None)
    with pytest.raises(PlanError, match="--elastic re-plans with the planner"):
        check_elastic(make_plan(load_model("debug"), dp=4, seq_len=16), str(tmp_path))


def test_a_lost_rank_is_replanned_and_the_run_continues(tmp_path, monkeypatch, capsys) -> None:
    plan = _plan(tmp_path)
    want = run_reference(plan, 6, SGD)["losses"]  # the uninterrupted run (dp 4 matches it: parity tests)
    ckpt = tmp_path / "ckpt"
    monkeypatch.setenv(FAULT_ENV, "rank=1,step=3")
    report = run(plan, 6, out=tmp_path / "r.json", recipe=SGD, checkpoint_dir=ckpt, checkpoint_every=2, elastic=True)
    [event] = report["elastic"]
    assert event["at_step"] == 3 and event["lost_ranks"] == [1] and event["old_world"] == 4
    assert 1 <= event["new_world"] <= 3 and report["world_size"] == event["new_world"]
    assert event["resumed_from"] == str(ckpt / "step-00000002") and event["resumed_at_step"] == 2
    new_plan = json.loads((ckpt / "plan-elastic-1.json").read_text())
    assert event["new_plan"] == str(ckpt / "plan-elastic-1.json") and report["parallelism"] == new_plan["parallelism"]
    assert new_plan["inputs"]["cluster"]["gpus_per_node"] == event["new_world"]
    losses = {e["step"]: e["loss"] for e in event["losses_before_resume"]}
    losses |= {s["step"]: s["loss"] for s in report["steps"]}
    assert sorted(losses) == [0, 1, 2, 3, 4, 5]
    assert max(abs(losses[k] - want[k]) / want[k] for k in losses) <= 1e-5, (losses, want)
    err = capsys.readouterr().err
    assert "elastic: rank 1 (pid " in err and "was lost at step 3" in err and "resuming from" in err
    assert json.loads((tmp_path / "r.json").read_text())["elastic"] == report["elastic"]


def test_without_elastic_a_lost_rank_ends_the_run_naming_it_and_the_checkpoint(tmp_path) -> None:
    plan_path = tmp_path / "plan.json"
    _plan(tmp_path)
    ckpt = tmp_path / "ckpt"
    command = [sys.executable, "-m", "cli", "run", str(plan_path), "--steps", "6", "--optimizer", "sgd"]
    command += ["--checkpoint-dir", str(ckpt), "--checkpoint-every", "2", "--out", str(tmp_path / "r.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", FAULT_ENV: "rank=1,step=3"}
    t0 = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert elapsed < 30, elapsed
    [line] = [x for x in proc.stderr.splitlines() if not x.startswith("step ")]  # one line besides progress
    assert line.startswith("error: rank 1 (pid ") and "was lost at step 3 (exit code 1)" in line, line
    assert f"last complete checkpoint: {ckpt / 'step-00000002'} (step 2)" in line, line
    assert f"resume with: autopar run {plan_path} --steps 6 --resume {ckpt} --checkpoint-dir {ckpt}" in line, line
    assert "--optimizer sgd" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()
