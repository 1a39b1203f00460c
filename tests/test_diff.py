"""`autopar diff`: knobs found, one-at-a-time attributions that sum to the total, merges explained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from planner.commands.diff import FIGURES, ORDER
from planner.cost.estimate import estimate
from planner.inputs import build_inputs, parse_sets
from planner.planfile import build_plan

runner = CliRunner()
BASE = dict(dp=16, tp=1, pp=1, cp=1, ep=1, micro_batch=1, zero=1, recompute="none", schedule="1f1b", vpp=1,
            sequence_parallel=False, stage_layers=None)


def make_plan(tmp_path: Path, name: str, sets: tuple[str, ...] = (), cluster: str = "h100-sxm-80gb:16",
              **knobs) -> Path:
    """A plan file for a fixed plan (no search), written by the same build_plan as `autopar plan`."""
    inp = build_inputs("llama3-8b", cluster, 64, 4096, "bf16", "flash", parse_sets(list(sets)), BASE | knobs)
    est = estimate(inp.model, inp.cluster, inp.training, inp.parallel)
    solver = {"backend": "fixed", "status": "fixed", "objective": est.predicted["step_time_s"], "best_bound": None,
              "gap": None, "wall_time_s": 0.0}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(build_plan(est, solver, "autopar estimate (test)"), indent=2))
    return path


def diff_json(a: Path, b: Path) -> dict:
    r = runner.invoke(app, ["diff", str(a), str(b), "--format", "json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def rescore(path: Path) -> dict:
    from planner.planfile import load_plan, plan_inputs

    est = estimate(*plan_inputs(load_plan(path)))
    return {f: est.predicted[f] for f in FIGURES}


def assert_sums(d: dict) -> None:
    for f in FIGURES:
        parts = [s["delta"][f] for s in d["steps"]]
        assert sum(parts) == pytest.approx(d["total_change"][f], rel=1e-12, abs=1e-9)
        assert math.fsum(parts) == pytest.approx(d["total_change"][f], rel=1e-12, abs=1e-9)


def test_identical_plans_have_no_steps(tmp_path):
    a = make_plan(tmp_path, "a")
    d = diff_json(a, a)
    assert d["steps"] == [] and all(v == 0 for v in d["total_change"].values())
    r = runner.invoke(app, ["diff", str(a), str(a)])
    assert r.exit_code == 0 and "no knob changed" in r.stdout and r.stderr == ""


def test_attributions_sum_to_the_total_and_the_total_is_the_rescored_difference(tmp_path):
    a = make_plan(tmp_path, "a")
    b = make_plan(tmp_path, "b", zero=2, micro_batch=2, recompute="selective")
    d = diff_json(a, b)
    assert [s["knobs"] for s in d["steps"]] == [["parallelism.micro_batch_size"], ["parallelism.zero_stage"],
                                                ["stages[].recompute"]]
    ra, rb = rescore(a), rescore(b)
    for f in FIGURES:
        assert d["a_predicted"][f] == ra[f] and d["b_predicted"][f] == rb[f]
        assert d["total_change"][f] == pytest.approx(rb[f] - ra[f], rel=1e-12)
    assert_sums(d)
    # each step's figures are the estimate of the plan with that many knobs applied, in ORDER
    mid = make_plan(tmp_path, "mid", micro_batch=2)
    assert d["steps"][0]["after"]["step_time_s"] == rescore(mid)["step_time_s"]
    assert d["steps"][0]["delta"]["step_time_s"] == pytest.approx(rescore(mid)["step_time_s"] - ra["step_time_s"])
    assert d["steps"][-1]["after"]["peak_memory_bytes"] == rb["peak_memory_bytes"]


def test_an_invalid_intermediate_is_merged_with_the_next_knob_and_explained(tmp_path):
    a = make_plan(tmp_path, "a")
    b = make_plan(tmp_path, "b", dp=8, tp=2, sequence_parallel=True)
    d = diff_json(a, b)
    first = d["steps"][0]
    assert first["knobs"][:2] == ["parallelism.dp", "parallelism.tp"]
    assert first["merged_because"][0] == ("parallelism.dp alone is invalid: dp(8) * tp(1) * pp(1) * cp(1) = 8 != 16 "
                                          "GPUs in the cluster")
    assert {"field": "parallelism.tp", "a": 1, "b": 2} in first["changes"]
    # megatron-core overlaps TP fully only with sequence parallelism, which wins back tp's cost:
    # the two offset each other and are one step
    assert first["knobs"][2:] == ["parallelism.sequence_parallel"] and "offset each other" in first["merged_because"][1]
    assert_sums(d)


def test_pipeline_shape_split_and_model_changes(tmp_path):
    a = make_plan(tmp_path, "a", dp=8, pp=2)
    b = make_plan(tmp_path, "b", ("model.ffn_hidden_size=16384",), dp=4, pp=4, schedule="interleaved", vpp=2,
                  stage_layers="3,4,4,5,4,4,4,4", micro_batch=2)
    d = diff_json(a, b)
    knobs = [s["knobs"] for s in d["steps"]]
    assert knobs[0] == ["inputs.model"]
    assert {"field": "inputs.model.ffn_hidden_size", "a": 14336, "b": 16384} in d["steps"][0]["changes"]
    assert ["parallelism.dp", "parallelism.pp"] in knobs and ["stages[].layers"] in knobs
    split = next(s for s in d["steps"] if s["knobs"] == ["stages[].layers"])
    assert split["changes"] == [{"field": "stages[].layers", "a": "even", "b": "3,4,4,5,4,4,4,4"}]
    assert_sums(d)
    assert d["order"] == [p for _, p in ORDER]


def test_table_names_each_step_and_the_total(tmp_path):
    a = make_plan(tmp_path, "a")
    b = make_plan(tmp_path, "b", dp=8, tp=2)
    r = runner.invoke(app, ["diff", str(a), str(b)])
    assert r.exit_code == 0 and r.stderr == ""
    assert "parallelism.dp + parallelism.tp" in r.stdout and "merged:" in r.stdout and "total" in r.stdout


def test_bad_input_is_exit_2(tmp_path):
    a = make_plan(tmp_path, "a")
    edited = json.loads(a.read_text())
    edited["inputs"]["model"]["num_layers"] = 40
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    (tmp_path / "cut.json").write_text(a.read_text()[:300])
    for other, needle in (("missing.json", "not found"), ("edited.json", "inputs.model does not match"),
                          ("cut.json", "not valid JSON")):
        r = runner.invoke(app, ["diff", str(a), str(tmp_path / other)])
        assert r.exit_code == 2 and needle in r.stderr and r.stdout == "" and "Traceback" not in r.stderr
    r = runner.invoke(app, ["diff", str(a), str(a), "--format", "csv"])
    assert r.exit_code == 2 and "--format must be one of" in r.stderr
