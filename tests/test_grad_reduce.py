"""Gradient reduce dtype: the frameworks' defaults, `--set training.grad_reduce_dtype`, and what
the plan and the exports record."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from planner.config import Training
from planner.config import grad_reduce_bytes

runner = CliRunner()
EST = ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:64", "-b", "64", "-s", "4096", "--dp", "64",
       "--zero", "1", "--recompute", "full", "--format", "json"]


@pytest.mark.parametrize("dtype,zero,auto_bytes", [
    ("bf16", 0, 4), ("bf16", 1, 4), ("bf16", 2, 4), ("bf16", 3, 4),  # Megatron-LM forces fp32 for bf16
    ("fp8", 1, 4), ("fp8", 3, 4),  # fp8 matmuls, bf16 gradients
    ("fp16", 0, 2), ("fp16", 2, 2), ("fp16", 3, 4),  # Megatron fp16 default; FSDP reduces in fp32
    ("fp32", 0, 4),
])
def test_default_reduce_dtype_follows_the_frameworks(dtype, zero, auto_bytes):
    assert grad_reduce_bytes(Training(8, 128, dtype), zero) == auto_bytes
    if dtype != "fp32":
        assert grad_reduce_bytes(Training(8, 128, dtype, grad_reduce_dtype="bf16"), zero) == 2
        assert grad_reduce_bytes(Training(8, 128, dtype, grad_reduce_dtype="fp32"), zero) == 4


def _estimate(*extra):
    r = runner.invoke(app, EST + list(extra))
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_set_prices_the_gradient_traffic_and_is_recorded():
    auto, fp32, bf16 = _estimate(), _estimate("--set", "training.grad_reduce_dtype=fp32"), \
        _estimate("--set", "training.grad_reduce_dtype=bf16")
    sync = {k: d["predicted"]["time_breakdown_s"]["dp_sync_exposed_s"] for k, d in
            (("auto", auto), ("fp32", fp32), ("bf16", bf16))}
    assert sync["auto"] == sync["fp32"] > sync["bf16"] > 0
    assert bf16["predicted"]["step_time_s"] < auto["predicted"]["step_time_s"]
    assert bf16["inputs"]["training"]["grad_reduce_dtype"] == "bf16"


@pytest.mark.parametrize("bad,needle", [("training.grad_reduce_dtype=fp16", "must be one of auto, fp32, bf16"),
                                        ("training.dtype=fp8", "unknown key"),
                                        ("train.grad_reduce_dtype=bf16", "training.KEY=VALUE")])
def test_bad_training_sets_exit_2_on_stderr(bad, needle):
    r = runner.invoke(app, EST + ["--set", bad])
    assert r.exit_code == 2 and needle in r.stderr and r.stdout == ""


def test_plan_reproduces_the_set_and_exports_the_dtype(tmp_path):
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "bf16",
                            "--set", "training.grad_reduce_dtype=bf16", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["inputs"]["training"]["grad_reduce_dtype"] == "bf16"
    assert "--set training.grad_reduce_dtype=bf16" in doc["reproduce"]
    r = runner.invoke(app, ["validate", str(out), "--format", "json"])
    assert r.exit_code == 0, r.stdout + r.stderr  # the reproduce command resolves to the same inputs
    r = runner.invoke(app, ["export", str(out), "--to", "deepspeed"])
    assert r.exit_code == 0 and json.loads(r.stdout)["communication_data_type"] == "bf16"
    r = runner.invoke(app, ["validate", str(out), "--set", "training.grad_reduce_dtype=fp32", "--format", "json"])
    assert r.exit_code in (0, 1), r.stderr  # re-scored with fp32 gradients: a drift finding at most
