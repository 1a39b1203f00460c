"""`autopar validate`: exit codes, stdout and stderr apart; corrupted plans are caught at the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from models.errors import SpecError
from planner.commands.validate import parse_tolerance
from planner.render.validate import github_line

runner = CliRunner()
PLAN = ["plan", "-m", "llama3-8b", "-c", "h100-sxm-80gb:16", "-b", "64", "-s", "4096", "--pp", "2", "--dp", "8",
        "--zero", "1", "--schedule", "1f1b", "--micro-batch", "1", "--recompute", "none"]


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    r = runner.invoke(app, PLAN + ["--out", str(out)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["parallelism"]["pp"] == 2 and doc["parallelism"]["dp"] == 8 and len(doc["stages"]) == 2
    return doc


def write(tmp_path: Path, doc: dict, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return path


def validate(*args):
    return runner.invoke(app, ["validate", *map(str, args)])


def findings(r) -> list[dict]:
    return json.loads(r.stdout)["findings"]


def test_a_fresh_plan_is_valid_in_every_format(tmp_path, plan_doc):
    path = write(tmp_path, plan_doc)
    r = validate(path, "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["valid"] is True and data["findings"] == [] and data["errors"] == 0
    assert data["predicted"]["step_time_s"] == pytest.approx(plan_doc["predicted"]["step_time_s"], rel=1e-12)
    assert data["predicted"]["fits"] is True and len(data["predicted"]["stages_memory_bytes"]) == 2
    assert "valid (0 error(s), 0 warning(s))" in r.stderr
    table = validate(path)
    assert table.exit_code == 0 and "no findings" in table.stdout and "step_time_s" in table.stdout
    gh = validate(path, "--format", "github")
    assert gh.exit_code == 0 and gh.stdout == ""


def _set(doc: dict, dotted: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, leaf = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    node[leaf] = value
    return doc


@pytest.mark.parametrize("dotted,value,field,needle", [
    ("parallelism.tp", 2, "parallelism.tp", "is 2 but the rest of the plan implies 1"),
    ("parallelism.dp", 4, "parallelism.dp", "is 4 but the rest of the plan implies 8"),
    ("parallelism.pp", 4, "parallelism.pp", "implies 2"),
    ("parallelism.cp", 2, "parallelism.cp", "implies 1"),
    ("parallelism.num_micro_batches", 4, "parallelism.num_micro_batches", "implies 8"),
    ("parallelism.micro_batch_size", 2, "parallelism.micro_batch_size", "implies 1"),
    ("parallelism.zero_stage", 7, "parallelism.zero_stage", "less than or equal to 3"),
    ("parallelism.recompute.3", "full", "parallelism.recompute", "disagrees with stages[].recompute"),
    ("inputs.model.num_layers", 40, "inputs.model.num_layers", "edited by hand"),
    ("inputs.training.seq_len", 8192, "inputs.training.seq_len", "matches 4096"),
    ("inputs.cluster.gpu.hbm_bytes", 1, "inputs.cluster.gpu.hbm_bytes", "edited by hand"),
    ("stages.1.layers", [19, 32], "stages[1].layers", "blocks 17..18 are in no stage"),
    ("stages.1.layers", [16, 32], "stages[1].layers", "block 16 is in two stages"),
    ("stages.0.has_head", True, "stages[0].has_head", "expected False"),
    ("stages.1.ranks", list(range(16)), "stages[1].ranks", "should be 8..15"),
])
def test_a_hand_edited_plan_is_caught_at_the_field(tmp_path, plan_doc, dotted, value, field, needle):
    r = validate(write(tmp_path, _set(plan_doc, dotted, value)), "--format", "json")
    assert r.exit_code == 1, r.stdout + r.stderr
    errors = [f for f in findings(r) if f["severity"] == "error"]
    assert errors[0]["field"] == field and needle in errors[0]["message"], errors
    assert "NOT VALID" in r.stderr and "Traceback" not in r.stderr


def test_a_single_degree_edit_gives_one_finding_not_its_consequences(tmp_path, plan_doc):
    r = validate(write(tmp_path, _set(plan_doc, "parallelism.pp", 4)), "--format", "json")
    assert [f["field"] for f in findings(r)] == ["parallelism.pp"]
    assert "dp(8) * tp(1) * pp(4) * cp(1) = 32 != 16 GPUs in the cluster" in findings(r)[0]["message"]


def test_edited_inputs_without_a_reproduce_command_name_the_block(tmp_path, plan_doc):
    doc = _set(_set(plan_doc, "inputs.model.vocab_size", 64000), "reproduce", "")
    r = validate(write(tmp_path, doc), "--format", "json")
    assert r.exit_code == 1
    assert findings(r)[0]["field"] == "inputs.model" and "does not match" not in findings(r)[0]["message"]
    assert "inputs.sha256.model records" in findings(r)[0]["message"]


@pytest.mark.parametrize("fmt", ["table", "json", "github"])
def test_truncated_json_is_bad_input(tmp_path, plan_doc, fmt):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_doc, indent=2)[:700])
    r = validate(path, "--format", fmt)
    assert r.exit_code == 2
    assert "not valid JSON" in r.stderr and "line " in r.stderr and "Traceback" not in r.stderr
    if fmt == "github":
        assert r.stdout.startswith(f"::error file={path},title=autopar validate%3A bad input::")
    else:
        assert r.stdout == ""


@pytest.mark.parametrize("doc,needle", [
    ({}, "plan field 'schema_version' is None"),
    ({"schema_version": "999"}, "expected MAJOR.MINOR"),
    ({"schema_version": "2.0"}, "'2.0' is not supported (this autopar reads 1.x)"),
])
def test_a_file_of_unknown_layout_is_bad_input_as_for_every_command(tmp_path, doc, needle):
    """One contract across commands: `{}` or an unknown schema version is exit 2 with one line."""
    path = write(tmp_path, doc)
    for args in (["validate", path], ["export", path, "--to", "megatron"], ["estimate", "--plan", path],
                 ["diff", path, path], ["explain", path], ["run", path]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 2, (args, r.stdout + r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


@pytest.mark.parametrize("args,needle", [
    (["missing.json"], "plan file not found"),
    (["{plan}", "--tolerance", "2"], "--tolerance '2'"),
    (["{plan}", "--tolerance", "abc"], "--tolerance 'abc'"),
    (["{plan}", "--format", "xml"], "--format must be one of table, json, github"),
    (["{plan}", "--against", "nope.json"], "golden plan file not found"),
    (["{plan}", "--set", "model.num_layers=abc"], "--set on the recorded model"),
    (["{plan}", "--model", "llama3-80b"], "llama3-8b"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, plan_doc, args, needle):
    plan = write(tmp_path, plan_doc)
    r = validate(*[a.format(plan=plan) for a in args])
    assert r.exit_code == 2, r.stdout + r.stderr
    assert needle in r.stderr and r.stdout == "" and "Traceback" not in r.stderr


def test_a_wider_model_does_not_fit_any_more(tmp_path, plan_doc):
    r = validate(write(tmp_path, plan_doc), "--set", "model.ffn_hidden_size=40000", "--format", "json")
    assert r.exit_code == 1
    fs = {f["field"]: f for f in findings(r)}
    assert fs["inputs.model"]["severity"] == "warning" and "ffn_hidden_size 14336 -> 40000" in fs["inputs.model"]["message"]
    mem = fs["predicted.stages[0].memory"]
    assert mem["severity"] == "error" and re.search(r"needs [\d.]+ GiB .* GiB over the 75.00 GiB usable", mem["message"])
    assert json.loads(r.stdout)["predicted"]["fits"] is False


def test_a_cluster_of_another_size_breaks_the_world_size(tmp_path, plan_doc):
    r = validate(write(tmp_path, plan_doc), "--cluster", "h100-sxm-80gb:32", "--format", "json")
    assert r.exit_code == 1
    err = [f for f in findings(r) if f["severity"] == "error"]
    assert err == [{"field": "parallelism", "severity": "error",
                    "message": "dp(8) * tp(1) * pp(2) * cp(1) = 16 != 32 GPUs in the cluster"}]


def test_a_degree_the_new_model_cannot_split_is_named(tmp_path):
    path = tmp_path / "tp2.json"
    r = runner.invoke(app, PLAN[:9] + ["--tp", "2", "--pp", "1", "--dp", "8", "--zero", "1", "--micro-batch", "1",
                                       "--recompute", "none", "--out", str(path)])
    assert r.exit_code == 0, r.stderr
    r = validate(path, "--set", "model.ffn_hidden_size=14337", "--format", "json")
    assert r.exit_code == 1
    errors = [f for f in findings(r) if f["severity"] == "error"]
    assert errors == [{"field": "parallelism.tp", "severity": "error", "message":
                       "ffn_hidden_size (14337) and expert ffn (14337) must be divisible by tp (2)"}]


def test_regression_against_a_golden_plan_respects_the_tolerance(tmp_path, plan_doc):
    plan = write(tmp_path, plan_doc)
    golden = write(tmp_path, _set(plan_doc, "predicted.step_time_s", plan_doc["predicted"]["step_time_s"] / 1.10),
                   "golden.json")
    r = validate(plan, "--against", golden, "--format", "json")
    assert r.exit_code == 1
    f = findings(r)[0]
    assert f["field"] == "predicted.step_time_s" and "+10.00% slower, beyond the 2.00% tolerance" in f["message"]
    assert json.loads(r.stdout)["against"]["step_time_s_change"] == pytest.approx(0.10)
    for tol in ("15%", "0.15"):
        assert validate(plan, "--against", golden, "--tolerance", tol).exit_code == 0


def test_drift_of_recorded_figures_warns_and_fails_against_itself(tmp_path, plan_doc):
    doc = _set(plan_doc, "predicted.peak_memory_bytes", plan_doc["predicted"]["peak_memory_bytes"] * 0.9)
    path = write(tmp_path, doc)
    r = validate(path, "--format", "json")
    assert r.exit_code == 0
    assert [(f["field"], f["severity"]) for f in findings(r)] == [("predicted.peak_memory_bytes", "warning")]
    again = validate(path, "--against", path, "--format", "github")
    assert again.exit_code == 1
    lines = again.stdout.splitlines()
    assert lines[0].startswith(f"::warning file={path},title=predicted.peak_memory_bytes::")
    assert lines[1].startswith(f"::error file={path},title=predicted.peak_memory_bytes::")
    assert "more memory" in lines[1] and len(lines) == 2


def test_github_annotations_escape_their_fields():
    line = github_line("a,b:c.json", "error", "stages[3].memory", "50% over\nnext")
    assert line == "::error file=a%2Cb%3Ac.json,title=stages[3].memory::50%25 over%0Anext"


@pytest.mark.parametrize("text,value", [("2%", 0.02), ("0.02", 0.02), ("150%", 1.5), ("0", 0.0)])
def test_tolerance_accepts_percent_or_fraction(text, value):
    assert parse_tolerance(text) == pytest.approx(value)
    for bad in ("2", "-1%", "nan", "inf%", "x"):
        with pytest.raises(SpecError):
            parse_tolerance(bad)


def test_estimate_plan_still_rejects_an_edited_plan(tmp_path, plan_doc):
    path = write(tmp_path, _set(plan_doc, "inputs.model.num_layers", 40))
    r = runner.invoke(app, ["estimate", "--plan", str(path)])
    assert r.exit_code == 2 and "inputs.model does not match inputs.sha256.model" in r.stderr
