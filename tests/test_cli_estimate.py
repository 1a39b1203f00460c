"""`autopar estimate` and `autopar presets`: exit codes, stdout and stderr apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()
BASE = ["estimate", "--model", "llama3-8b", "--cluster", "h100-sxm-80gb:8", "--global-batch", "16", "--seq-len", "4096"]


def run(args):
    return runner.invoke(app, args)


def test_json_has_the_documented_keys():
    r = run(BASE + ["--zero", "3", "--recompute", "full", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    p = data["predicted"]
    for key in ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "hfu", "model_tflops_per_gpu",
                "peak_memory_bytes"):
        assert isinstance(p[key], float) and p[key] > 0
    assert p["stages"][0]["memory"]["total_bytes"] > 0
    assert p["tokens_per_s"] == pytest.approx(16 * 4096 / p["step_time_s"])
    assert data["parallelism"]["dp"] == 8


def test_table_output_names_the_stages():
    r = run(BASE + ["--zero", "3", "--recompute", "full"])
    assert r.exit_code == 0
    assert "MFU / HFU" in r.stdout and "per pipeline stage" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--tp", "3"], "cannot derive dp"),
    (["--dp", "4"], "dp(4) * tp(1) * pp(1) * cp(1) = 4 != 8"),
    (["--tp", "8", "--pp", "1", "--dp", "1", "--micro-batch", "3"], "global batch (16) % "),
    (["--recompute", "some"], "--recompute must be one of"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1"),
    (["--set", "model.foo=1"], "foo: unknown key"),
    (["--set", "model.num_kv_heads=5"], "divisible by num_kv_heads"),
    (["--set", "model.hidden_size=-4"], "hidden_size"),
    (["--set", "model.num_layers=abc"], "num_layers"),
    (["--format", "xml"], "--format must be one of"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = run(BASE + args)
    assert r.exit_code == 2, r.stdout
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unknown_preset_suggests_nearest():
    r = run(["estimate", "--model", "llama3-80b", "--cluster", "h100-sxm-80gb:8", "-b", "8", "-s", "128"])
    assert r.exit_code == 2 and "llama3-8b" in r.stderr and "llama3-70b" in r.stderr


def test_unknown_hf_family_is_exit_2(tmp_path: Path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "foo", "num_hidden_layers": 2}))
    r = run(["estimate", "--model", str(cfg), "--cluster", "h100-sxm-80gb:8", "-b", "8", "-s", "128"])
    assert r.exit_code == 2 and "foo" in r.stderr


def test_plan_that_does_not_fit_is_exit_1_with_the_bytes_over():
    r = run(["estimate", "--model", "llama3-70b", "--cluster", "h100-sxm-80gb:8", "-b", "8", "-s", "4096"])
    assert r.exit_code == 1
    assert "does not fit: pipeline stage 0 needs" in r.stderr and "GiB more" in r.stderr
    assert "DOES NOT FIT" in r.stdout


def test_stage_layers_by_hand():
    r = run(["estimate", "--model", "llama3-8b", "--cluster", "h100-sxm-80gb:8", "-b", "32", "-s", "4096",
             "--pp", "4", "--stage-layers", "6,9,9,8", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    chunks = [s["chunks"][0]["layers"] for s in json.loads(r.stdout)["predicted"]["stages"]]
    assert chunks == [[0, 6], [6, 15], [15, 24], [24, 32]]
    bad = run(["estimate", "--model", "llama3-8b", "--cluster", "h100-sxm-80gb:8", "-b", "32", "-s", "4096",
               "--pp", "4", "--stage-layers", "6,9,9,9"])
    assert bad.exit_code == 2 and "sum to 33" in bad.stderr


def test_presets_list_and_show():
    r = run(["presets", "list"])
    assert r.exit_code == 0 and "llama3-405b" in r.stdout and "h100-sxm-80gb" in r.stdout
    r = run(["presets", "show", "llama3-8b", "--format", "json"])
    assert json.loads(r.stdout)["num_kv_heads"] == 8
    r = run(["presets", "show", "h100-sxm-80gb", "--format", "json"])
    assert json.loads(r.stdout)["peak_bf16_tflops"] == 989.0
    r = run(["presets", "show", "h100"])
    assert r.exit_code == 2


def test_console_script_runs_as_a_process():
    """The installed entry point: stdout is JSON only, nothing else on it."""
    r = subprocess.run([sys.executable, "-m", "cli"] + BASE + ["--zero", "3", "--recompute", "full", "--format", "json"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
