"""Launching: refusals before any process starts, the run report, token files, torchrun."""

from __future__ import annotations

from conftest import run_python

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from runtime.launch import print_torchrun_command, run  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import PlanError, make_plan  # noqa: E402

LLAMA = load_model("debug")


def test_a_plan_for_another_world_size_is_refused_with_the_arithmetic(tmp_path) -> None:
    plan = make_plan(LLAMA, dp=2, tp=2, num_micro_batches=1)
    with pytest.raises(PlanError, match=r"dp\(2\) \* tp\(2\) \* pp\(1\) \* cp\(1\) = 4 ranks; launched world size is 2"):
        run(plan, 1, out=tmp_path / "r.json", nprocs=2)
    assert not (tmp_path / "r.json").exists()


def test_a_cuda_plan_is_refused_where_cuda_is_missing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = make_plan(LLAMA)
    plan["inputs"]["cluster"] = {"name": "h100-sxm-80gb:1", "gpu": {"name": "h100-sxm-80gb"}}
    with pytest.raises(PlanError, match="CUDA"):
        run(plan, 1, out=tmp_path / "r.json")
    with pytest.raises(PlanError, match="CUDA"):
        run(make_plan(LLAMA), 1, out=tmp_path / "r.json", device="cuda")


def test_a_plan_the_runtime_cannot_run_is_refused_before_launch(tmp_path) -> None:
    plan = make_plan(LLAMA, dp=2)
    plan["parallelism"]["ep"] = 2  # expert parallel on a dense model
    with pytest.raises(PlanError, match="mixture-of-experts"):
        run(plan, 1, out=tmp_path / "r.json")
    plan = make_plan(LLAMA, seq_len=6)
    plan["parallelism"]["cp"] = 2  # 6 tokens do not split into 2*cp equal chunks
    with pytest.raises(PlanError, match=r"seq_len \(6\) % 2\*cp \(4\) = 2"):
        run(plan, 1, out=tmp_path / "r.json")


def test_report_sits_beside_the_prediction(tmp_path) -> None:
    plan = make_plan(LLAMA, num_micro_batches=2, seq_len=16)
    plan["predicted"] = {"step_time_s": 0.5, "tokens_per_s": 64.0, "peak_memory_bytes": 10**6}
    report = run(plan, 2, out=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert report["schema_version"] == "1.3" and len(report["steps"]) == 2
    measured, error = report["measured"], report["relative_error"]
    assert measured["tokens_per_s"] == pytest.approx(2 * 16 / measured["step_time_s"])
    assert error["step_time_s"] == pytest.approx((measured["step_time_s"] - 0.5) / 0.5)
    # CPU measures activations only, so no error against a predicted total is claimed.
    assert measured["memory_kind"] == "saved_for_backward" and "peak_memory_bytes" not in error
    assert measured["peak_memory_bytes"] > 0


def test_training_on_a_token_file_matches_the_reference(tmp_path) -> None:
    ids = np.arange(5000, dtype=np.uint16) * 7 % LLAMA.vocab_size
    ids.tofile(tmp_path / "tokens.bin")
    result = check_parity(make_plan(LLAMA, dp=2, seq_len=16), steps=2, data=str(tmp_path / "tokens.bin"))
    assert result.ok(1e-5), (result.max_loss_rel_err, result.max_param_err)


def test_torchrun_command_splits_ranks_over_nodes(capsys) -> None:
    plan = make_plan(LLAMA, dp=4, tp=2, num_micro_batches=1)
    command = print_torchrun_command(plan, 2, "node0:29500", plan_path="p.json", steps=5)
    assert "--nnodes=2 --nproc-per-node=4" in command and "--rdzv-endpoint=node0:29500" in command
    assert "-m runtime.launch --plan p.json --steps 5" in command
    assert capsys.readouterr().out.strip() == command
    with pytest.raises(PlanError, match="8 % 3 = 2"):
        print_torchrun_command(plan, 3, "node0:29500")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_runs_the_plan_and_refuses_a_wrong_world_size(tmp_path) -> None:
    plan = make_plan(LLAMA, dp=2, seq_len=16)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "runtime.launch", "--plan", "plan.json", "--steps", "2", "--out", "r.json"]

    def torchrun(nproc: int) -> subprocess.CompletedProcess:
        command = ["torchrun", "--standalone", f"--nproc-per-node={nproc}", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    ok = torchrun(2)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert len(json.loads((tmp_path / "r.json").read_text())["steps"]) == 2
    bad = torchrun(1)
    assert bad.returncode != 0
    assert "launched world size is 1" in bad.stderr


def test_module_entry_point_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "runtime.launch", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--plan" in out.stdout


def test_a_failing_rank_surfaces_its_traceback(tmp_path) -> None:
    """A rank that raises reaches the caller with its traceback. The failure is patched into the
    ranks, so this runs in a fresh interpreter with fork (see test_runtime_parity)."""
    code = (
        "import runtime.launch as L\n"
        "from models.load import load_model\n"
        "from runtime.plan_io import make_plan\n"
        "def broken(*a, **k):\n    raise ValueError('boom in rank')\n"
        "L.train_rank = broken\n"
        "try:\n"
        f"    L.run(make_plan(load_model('debug'), dp=2), 1, out={str(tmp_path / 'r.json')!r}, start_method='fork')\n"
        "except RuntimeError as e:\n    print('CAUGHT', 'boom in rank' in str(e))\n"
    )
    out = run_python(code)
    assert "CAUGHT True" in out.stdout, out.stdout + out.stderr
