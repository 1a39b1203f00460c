"""Every plan the planner emits passes `validate` and runs (issue 19, item 2): for the debug
models on cpu:4, plans across schedules, tensor/pipeline/data degrees, ZeRO stages and recompute
are checked with the one acceptance test (planner.planfile.accept, which `autopar run` and
`autopar validate` share), and a covering subset runs 2 steps on gloo; plans with context or
expert parallelism forced, on cpu:4 and cpu:8, all run (issue 20)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from runtime.plan_io import validate_plan as runtime_accepts

runner = CliRunner()
BASE = ["-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--time-limit", "10"]

# (model, schedule, tp, pp, zero, recompute): every option of each knob appears, and every pair
# of schedule x pp, zero x tp and recompute x schedule.
MATRIX = [
    ("debug", "1f1b", 1, 1, 0, "none"),
    ("debug", "1f1b", 2, 2, 1, "selective"),
    ("debug", "1f1b", 1, 4, 0, "full"),
    ("debug", "gpipe", 1, 2, 0, "none"),
    ("debug", "gpipe", 2, 2, 2, "full"),
    ("debug", "interleaved", 2, 2, 0, "none"),
    ("debug", "interleaved", 1, 2, 1, "selective"),
    ("debug", "interleaved", 2, 2, 0, "full"),
    ("debug", "1f1b", 1, 1, 3, "selective"),
    ("debug", "1f1b", 2, 1, 3, "full"),
    ("debug", "1f1b", 4, 1, 2, "none"),
    ("debug-gpt", "1f1b", 2, 2, 0, "selective"),
    ("debug-gpt", "interleaved", 2, 2, 1, "full"),
    ("debug-gpt", "gpipe", 1, 4, 0, "none"),
    ("debug-gpt", "1f1b", 1, 1, 3, "none"),
]
# A covering subset that runs: every schedule, ZeRO 0-3, every recompute, tp and pp > 1.
RUN = {0, 1, 4, 5, 7, 9, 12}


def _plan(tmp_path, i, model, schedule, tp, pp, zero, recompute):
    path = tmp_path / f"p{i}.json"
    args = ["plan", "-m", model, *BASE, "--schedule", schedule, "--tp", str(tp), "--pp", str(pp),
            "--zero", str(zero), "--recompute", recompute, "--out", str(path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.stderr)
    return path


@pytest.mark.parametrize("i", range(len(MATRIX)))
def test_every_emitted_plan_is_accepted_by_validate_and_the_runtime(tmp_path, i):
    path = _plan(tmp_path, i, *MATRIX[i])
    doc = json.loads(path.read_text())
    assert all(s["layers"][1] > s["layers"][0] for s in doc["stages"]), doc["stages"]
    runtime_accepts(doc)
    v = runner.invoke(app, ["validate", str(path), "--format", "json"])
    assert v.exit_code == 0, v.stdout + v.stderr
    if i in RUN:
        r = runner.invoke(app, ["run", str(path), "--steps", "2", "--out", str(tmp_path / "report.json")])
        assert r.exit_code == 0, r.stdout + r.stderr
        assert "activation_bytes" in r.stdout  # the run report: measured against predicted


def test_validate_refuses_what_the_runtime_refuses(tmp_path):
    """A chunk with no block (the embedding alone) is refused by both, with the same reason."""
    path = _plan(tmp_path, 99, "debug", "1f1b", 1, 2, 0, "none")
    doc = json.loads(path.read_text())
    doc["stages"][0]["layers"], doc["stages"][1]["layers"] = [0, 0], [0, doc["stages"][1]["layers"][1]]
    doc["stages"][1]["recompute"] = doc["stages"][0]["recompute"] + doc["stages"][1]["recompute"]
    doc["stages"][0]["recompute"] = []
    doc["parallelism"]["stage_layers"] = [0, doc["stages"][1]["layers"][1]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"stages\[0\]\.layers"):
        runtime_accepts(doc)
    v = runner.invoke(app, ["validate", str(bad), "--format", "json"])
    assert v.exit_code == 1
    fields = {f["field"] for f in json.loads(v.stdout)["findings"] if f["severity"] == "error"}
    assert any(f.startswith("stages") for f in fields), fields


# Context- and expert-parallel plans (issue 20): cp / ep forced on cpu:4 and cpu:8 (the 8-rank
# MoE plan carries cp and ep at once); `validate` and the runtime accept each, and it runs 2 steps.
FORCED = [
    ("debug", "cpu:4", {"cp": 2}),
    ("debug-moe", "cpu:4", {"ep": 2}),
    ("debug", "cpu:8", {"cp": 4}),
    ("debug-moe", "cpu:8", {"cp": 2, "ep": 2}),
]


@pytest.mark.parametrize("i", range(len(FORCED)))
def test_context_and_expert_parallel_plans_run(tmp_path, i):
    model, cluster, forced = FORCED[i]
    path = tmp_path / "plan.json"
    knobs = [a for k, v in forced.items() for a in (f"--{k}", str(v))]
    args = ["plan", "-m", model, "-c", cluster, *BASE[2:], *knobs, "--out", str(path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.stderr)
    doc = json.loads(path.read_text())
    assert {k: doc["parallelism"][k] for k in forced} == forced
    runtime_accepts(doc)
    v = runner.invoke(app, ["validate", str(path), "--format", "json"])
    assert v.exit_code == 0, v.stdout + v.stderr
    assert not [f for f in json.loads(v.stdout)["findings"] if f["field"].startswith("parallelism.")]
    r = runner.invoke(app, ["run", str(path), "--steps", "2", "--out", str(tmp_path / "report.json")])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert len(json.loads((tmp_path / "report.json").read_text())["steps"]) == 2
