"""`autopar run --data` (issue 19, item 10): token ids are read in the width the vocabulary needs
(int32 beyond 65,536 ids) or as --data-dtype says, and a file that cannot be right (ids outside
the vocabulary, a size that is not a whole number of ids) is one line and exit 2 before any rank
starts. `--nnodes` prints the torchrun line once, for each node, with every run option."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app

pytest.importorskip("torch")
runner = CliRunner()


def _plan(tmp_path, vocab: int):
    path = tmp_path / "p.json"
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:2", "-b", "4", "-s", "32", "--dtype", "fp32",
                            "--tp", "1", "--pp", "1", "--set", f"model.vocab_size={vocab}", "--out", str(path)])
    assert r.exit_code == 0, r.stderr
    return path


def _run(tmp_path, plan, data, *extra):
    return runner.invoke(app, ["run", str(plan), "--steps", "1", "--data", str(data),
                               "--out", str(tmp_path / "r.json"), *extra])


def test_a_large_vocabulary_reads_int32_ids(tmp_path):
    plan = _plan(tmp_path, 70000)
    ids = (np.arange(4000, dtype=np.int64) * 6007 % 70000).astype(np.int32)
    ids.tofile(tmp_path / "t.bin")
    r = _run(tmp_path, plan, tmp_path / "t.bin")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "run_report"


def test_ids_outside_the_vocabulary_are_one_line_and_exit_2(tmp_path):
    plan = _plan(tmp_path, 256)
    (np.arange(4000, dtype=np.uint16) % 300).tofile(tmp_path / "t.bin")
    r = _run(tmp_path, plan, tmp_path / "t.bin")
    assert r.exit_code == 2 and "outside the model's vocabulary of 256" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_file_in_the_other_width_is_caught(tmp_path):
    plan = _plan(tmp_path, 256)
    (np.arange(4001, dtype=np.uint16) % 256).tofile(tmp_path / "t.bin")  # 8002 bytes: not int32
    r = _run(tmp_path, plan, tmp_path / "t.bin", "--data-dtype", "int32")
    assert r.exit_code == 2 and "not a whole number of int32 ids" in r.stderr
    r = _run(tmp_path, plan, tmp_path / "t.bin", "--data-dtype", "uint16")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_nnodes_prints_the_command_once_for_each_node_with_every_option(tmp_path):
    plan = _plan(tmp_path, 256)
    r = runner.invoke(app, ["run", str(plan), "--nnodes", "2", "--rdzv-endpoint", "h0:29500", "--lr", "0.5",
                            "--data", "t.bin", "--steps", "3"])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("torchrun")]
    assert len(lines) == 1 and "--lr 0.5" in lines[0] and "--data t.bin" in lines[0] and "--steps 3" in lines[0]
    assert "run this command on each of the 2 nodes" in r.stderr


def test_the_run_report_prints_memory_in_binary_units_and_flags_oversubscribed_cores(tmp_path):
    from planner.render.run import run_report_table
    from rich.console import Console

    rep = {
        "world_size": 4, "device_type": "cpu", "cpu_cores": 2, "steps": [],
        "predicted": {"step_time_s": 0.026, "tokens_per_s": 39283.0, "activation_bytes": 5005312.0},
        "measured": {"step_time_s": 0.27, "tokens_per_s": 3734.0, "activation_bytes": 5013632},
        "relative_error": {"step_time_s": 9.5, "tokens_per_s": -0.9, "activation_bytes": 0.0017},
    }
    console = Console(record=True, width=120)
    run_report_table(console, rep)
    text = console.export_text()
    assert "4.78 MiB" in text and "e+06" not in text and "39,283" in text
    assert "4 ranks shared 2 CPU cores" in text


def test_presets_list_prints_small_models_in_a_readable_unit():
    r = runner.invoke(app, ["presets", "list", "models"])
    line = next(ln for ln in r.stdout.splitlines() if "debug " in ln)
    assert "0.00 B" not in line and " k " in line


def test_import_hf_names_a_directory_and_its_config_json_alike(tmp_path):
    d = tmp_path / "mymodel"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 2048,
    }))
    names = []
    for src in (d, d / "config.json"):
        out = tmp_path / f"{len(names)}.json"
        r = runner.invoke(app, ["import-hf", str(src), "-o", str(out)])
        assert r.exit_code == 0, r.stderr
        names.append(json.loads(out.read_text())["name"])
    assert names == ["mymodel", "mymodel"]


def test_the_stage_table_never_cuts_a_number_in_80_columns():
    from rich.console import Console

    from planner.cost.estimate import estimate
    from planner.inputs import build_inputs, parse_sets
    from planner.render.estimate_table import _stage_table

    knobs = {"tp": 8, "pp": 4, "zero": 1, "recompute": "full", "schedule": "interleaved", "vpp": 5}
    i = build_inputs("llama3-70b", "h100-sxm-80gb:64", 64, 8192, "bf16", None, parse_sets([]), knobs)
    e = estimate(i.model, i.cluster, i.training, i.parallel)
    console = Console(width=80, record=True)
    console.print(_stage_table(e.predicted))
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    for s in e.predicted.stages:
        assert f"{s.memory.total_bytes / 2**30:.2f}" in text and f"{s.memory.weights_bytes / 2**30:.2f}" in text
