"""Plan integrity (issue 21, findings 1 and 5): every command that reads a plan refuses an edited,
unversioned or unhashed plan with one line and exit 2, and `run` refuses it before any rank starts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
PLAN = ["plan", "--model", "debug", "--cluster", "cpu:4", "--global-batch", "16", "--seq-len", "64", "--dtype", "fp32"]
# Each command reading a plan; {p} is the plan path. validate reports content errors as findings
# (exit 1) and only bad files as exit 2, so it is checked apart.
COMMANDS = (
    ["run", "{p}", "--steps", "1", "--out", "{report}"],
    ["export", "{p}", "--to", "megatron"],
    ["estimate", "--plan", "{p}"],
    ["explain", "{p}"],
    ["diff", "{p}", "{good}"],
)


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plan") / "p.json"
    r = runner.invoke(app, [*PLAN, "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return json.loads(out.read_text())


def _edit(doc: dict, edit) -> dict:
    doc = copy.deepcopy(doc)
    edit(doc)
    return doc


EDITS = {
    "tp edited": (lambda d: d["parallelism"].update(tp=2), "= 8 != 4 GPUs in inputs.cluster"),
    "model edited": (lambda d: d["inputs"]["model"].update(hidden_size=128), "inputs.model does not match"),
    "batch edited": (lambda d: d["inputs"]["training"].update(global_batch_size=32), "inputs.training does not"),
    "no sha256": (lambda d: d["inputs"].pop("sha256"), "'inputs.sha256' is missing"),
    "dp a string": (lambda d: d["parallelism"].update(dp="4"), "parallelism.dp"),
    "dp a float": (lambda d: d["parallelism"].update(dp=4.0), "parallelism.dp"),
    "10**9 micro-batches": (lambda d: d["parallelism"].update(num_micro_batches=10**9), "num_micro_batches"),
    "schema 999": (lambda d: d.update(schema_version="999.0"), "'999.0' is not supported"),
}


def _files(tmp_path: Path, doc: dict) -> dict[str, tuple[Path, str]]:
    out = {}
    for name, (edit, needle) in EDITS.items():
        path = tmp_path / (name.replace(" ", "_").replace("*", "") + ".json")
        path.write_text(json.dumps(_edit(doc, edit)))
        out[name] = (path, needle)
    for name, text, needle in (
        ("null", "null", "got a JSON null"),
        ("array", "[]", "got a JSON array"),
        ("truncated", json.dumps(doc)[:300], "not valid JSON"),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        out[name] = (path, needle)
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe{")
    (tmp_path / "dir.json").mkdir()
    out["non-UTF-8"] = (tmp_path / "bytes.json", "not UTF-8")
    out["a directory"] = (tmp_path / "dir.json", "is a directory")
    return out


def test_every_plan_command_refuses_a_bad_plan_with_one_line(tmp_path, plan_doc):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(plan_doc))
    report = tmp_path / "report.json"
    for name, (path, needle) in _files(tmp_path, plan_doc).items():
        for command in COMMANDS:
            args = [a.format(p=path, good=good, report=report) for a in command]
            r = runner.invoke(app, args)
            assert r.exit_code == 2, (name, args, r.stdout + r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, (name, args, r.stderr)
    assert not report.exists()  # `run` refused every one before any rank started


def test_validate_names_the_edit_and_exits_2_only_for_a_file_it_cannot_read(tmp_path, plan_doc):
    files = _files(tmp_path, plan_doc)
    for name in ("null", "array", "truncated", "non-UTF-8", "a directory", "schema 999"):
        r = runner.invoke(app, ["validate", str(files[name][0])])
        assert r.exit_code == 2 and files[name][1] in r.stderr, (name, r.stderr)
    for name in ("tp edited", "model edited", "no sha256", "dp a string", "10**9 micro-batches"):
        r = runner.invoke(app, ["validate", str(files[name][0]), "--format", "json"])
        assert r.exit_code == 1 and not json.loads(r.stdout)["valid"], (name, r.stdout + r.stderr)


def test_a_hand_written_runtime_plan_file_carries_its_hashes(tmp_path):
    """make_plan's files pass the same integrity check (the runtime's own tests write them)."""
    pytest.importorskip("torch")
    from models.load import load_model
    from runtime.plan_io import PlanError, load_plan, make_plan

    plan = make_plan(load_model("debug"), dp=2)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plan))
    assert load_plan(path)["parallelism"]["dp"] == 2
    plan["inputs"]["training"]["seed"] = 1
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanError, match="inputs.training does not match inputs.sha256.training"):
        load_plan(path)


def test_the_printed_torchrun_line_quotes_every_value(tmp_path, plan_doc):
    """`run --nnodes 2 --rdzv-endpoint 'x;rm -rf /'` prints one shell word per value (finding 5)."""
    import shlex

    pytest.importorskip("torch")
    path = tmp_path / "p q.json"
    path.write_text(json.dumps(plan_doc))
    r = runner.invoke(app, ["run", str(path), "--nnodes", "2", "--rdzv-endpoint", "x;rm -rf /"])
    assert r.exit_code == 0, r.stdout + r.stderr
    words = shlex.split(r.stdout.strip())
    assert "--rdzv-endpoint=x;rm -rf /" in words and str(path) in words, words
