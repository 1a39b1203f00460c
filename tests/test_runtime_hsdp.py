"""HSDP (``parallelism.dp_replicate`` > 1): dp = dp_replicate replicas x dp_shard shards, ZeRO-2/3
sharded within a replica, gradients all-reduced across replicas. Parallel runs on gloo reproduce
the single-process reference (runtime.parity); the replica all-reduce runs once per step, as the
planner prices it; the plan reader refuses what HSDP cannot run and reads 1.0 plans as dp_replicate 1."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_python

torch = pytest.importorskip("torch")

from planner.planfile.schema import SCHEMA_VERSION  # noqa: E402
from models.load import load_model  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import PlanError, load_plan, make_plan, read_parallelism, validate_plan  # noqa: E402

LLAMA = load_model("debug")  # 4 blocks
GPT = load_model("debug-gpt", {"dropout": 0.0})  # tied embedding
SEQ = 16

CONFIGS = {
    # 2 replicas x 2 shards, two micro-batches: the all-reduce waits for the second.
    "hsdp2x2-zero3": (LLAMA, dict(dp=4, dp_replicate=2, zero_stage=3, num_micro_batches=2)),
    "hsdp2x2-zero2-gpt": (GPT, dict(dp=4, dp_replicate=2, zero_stage=2, num_micro_batches=2)),
    # 8 ranks: FSDP2's HSDP mesh beside the tp dimension (TP's DTensors sharded on a 3-D mesh).
    "hsdp2x2-tp2-sp-zero3": (LLAMA, dict(dp=4, dp_replicate=2, tp=2, sequence_parallel=True, zero_stage=3,
                                         num_micro_batches=2)),
    # With pipeline parallelism the schedule drives FSDP's reductions; a tied embedding over stages.
    "hsdp2x1-pp2-1f1b-gpt": (GPT, dict(dp=2, dp_replicate=2, pp=2, zero_stage=3, num_micro_batches=2,
                                      schedule="1f1b")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hsdp_parity(name: str) -> None:
    spec, kwargs = CONFIGS[name]
    result = check_parity(make_plan(spec, seq_len=SEQ, **kwargs), steps=3)
    assert not result.missing_params
    assert result.max_loss_rel_err <= 1e-5, (result.losses, result.reference_losses)
    assert result.max_param_err <= 1e-5, result.worst_param


def test_replica_all_reduce_runs_once_per_step_not_per_micro_batch(tmp_path) -> None:
    """Four micro-batches, two steps: each rank all-reduces across its replica group once per
    FSDP module (4 blocks + the root) per step. The count is patched into forked ranks, so this
    runs in a fresh interpreter (see test_runtime_parity)."""
    code = (
        "import torch.distributed as dist\n"
        "from models.load import load_model\n"
        "from runtime.launch import run\n"
        "from runtime.plan_io import make_plan\n"
        "original = dist.all_reduce\n"
        "def counted(t, op=dist.ReduceOp.SUM, group=None, async_op=False):\n"
        "    if group is not None:\n"
        f"        with open({str(tmp_path)!r} + f'/calls.{{dist.get_rank()}}', 'a') as f:\n"
        "            f.write(f'{dist.get_world_size(group)}\\n')\n"
        "    return original(t, op=op, group=group, async_op=async_op)\n"
        "dist.all_reduce = counted\n"
        "plan = make_plan(load_model('debug'), dp=4, dp_replicate=2, zero_stage=3, num_micro_batches=4, seq_len=16)\n"
        f"run(plan, 2, out={str(tmp_path / 'r.json')!r}, start_method='fork')\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    steps, fsdp_modules = 2, LLAMA.num_layers + 1
    for rank in range(4):
        groups = (tmp_path / f"calls.{rank}").read_text().split()
        assert groups == ["2"] * (steps * fsdp_modules), (rank, groups)


def test_a_one_zero_plan_without_dp_replicate_reads_as_one_and_runs(tmp_path) -> None:
    plan = make_plan(LLAMA, dp=2, zero_stage=3, seq_len=SEQ)
    plan["schema_version"] = "1.0"
    del plan["parallelism"]["dp_replicate"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    loaded = load_plan(tmp_path / "plan.json")
    assert "dp_replicate" not in loaded["parallelism"]  # the file is read as written
    assert read_parallelism(loaded)["dp_replicate"] == 1
    assert check_parity(loaded, steps=2).ok(1e-5)


def test_hsdp_needs_zero_stage_2_or_3() -> None:
    for zero in (0, 1):
        with pytest.raises(PlanError, match=rf"'parallelism.dp_replicate' \(2\) > 1 needs zero_stage 2 or 3, "
                                            rf"got zero_stage {zero}"):
            make_plan(LLAMA, dp=4, dp_replicate=2, zero_stage=zero)


def test_dp_replicate_must_divide_dp() -> None:
    with pytest.raises(PlanError, match=r"'parallelism.dp_replicate' \(3\) must divide dp \(4\): "
                                        r"dp % dp_replicate = 1"):
        make_plan(LLAMA, dp=4, dp_replicate=3, zero_stage=3)


@pytest.mark.parametrize("value,message", [(0, "must be >= 1, got 0"), ("2", "must be int, got '2'"),
                                           (True, "must be int, got True")])
def test_dp_replicate_type_and_bound_come_from_the_registry(value, message) -> None:
    plan = copy.deepcopy(make_plan(LLAMA, dp=4, dp_replicate=2, zero_stage=3))
    plan["parallelism"]["dp_replicate"] = value
    with pytest.raises(PlanError, match="'parallelism.dp_replicate' " + message):
        validate_plan(plan)


def test_hsdp_plan_records_the_key_and_a_1_1_version() -> None:
    plan = make_plan(LLAMA, dp=4, dp_replicate=2, zero_stage=2)
    assert plan["parallelism"]["dp_replicate"] == 2 and plan["schema_version"] == SCHEMA_VERSION
