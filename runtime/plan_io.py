"""Reading the plan JSON the runtime executes (no torch import: cheap for the CLI). The rules a
plan must meet live in ``planner.planfile.accept`` (one acceptance test for `run` and `validate`);
the runtime adds what it does not implement (``runtime_limits``: fp8). ``make_plan`` writes a valid plan for tests and hand-written runs.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import SpecError
from models.spec import ModelSpec
from planner.planfile.accept import (
    DTYPE_NAMES,
    PARALLELISM_KNOBS,
    PlanRejected,
    accept_plan,
    model_spec,
    read_parallelism,
    runtime_limits,
    world_size,
    world_size_arithmetic,
)
from planner.planfile.build import input_sha256
from planner.planfile.integrity import INPUT_BLOCKS, check_integrity
from planner.planfile.load import read_json
from planner.planfile.schema import SCHEMA_VERSION

PlanError = PlanRejected  # a plan the runtime cannot execute; the message names the field

__all__ = [
    "DTYPE_NAMES",
    "PARALLELISM_KNOBS",
    "PlanError",
    "load_plan",
    "make_plan",
    "model_spec",
    "read_parallelism",
    "validate_plan",
    "world_size",
    "world_size_arithmetic",
]


def validate_plan(plan: dict) -> dict:
    """``accept_plan``, then the runtime's own dtype limit (fp8 is not executed); returns ``plan``."""
    accept_plan(plan)
    for field, message in runtime_limits(plan):
        if field == "inputs.training.dtype":
            raise PlanError(f"plan field '{field}': {message}")
    return plan


def load_plan(source: str | Path | dict) -> dict:
    """A validated plan from a JSON file path or an already-parsed dict. A file must also pass the
    integrity check every command applies (``planner.planfile.integrity``: schema version, input
    hashes, world size against its cluster); a dict built in-process is checked by the rules alone."""
    if isinstance(source, dict):
        return validate_plan(source)
    try:
        plan = check_integrity(read_json(Path(source), "plan"), source)
    except SpecError as exc:
        raise PlanError(str(exc)) from None
    return validate_plan(plan)


def _even_stages(n: int, pp: int, virtual_stages: int, recompute: str) -> list[dict]:
    """``stages[]`` with n blocks split as evenly as possible over pp * virtual_stages chunks."""
    chunks = pp * virtual_stages
    bounds = [k * (n // chunks) + min(k, n % chunks) for k in range(chunks + 1)]
    return [
        {
            "index": i,
            "pp_rank": i % pp,
            "virtual_index": i // pp,
            "layers": [bounds[i], bounds[i + 1]],
            "has_embedding": i == 0,
            "has_head": i == chunks - 1,
            "recompute": [recompute] * (bounds[i + 1] - bounds[i]),
        }
        for i in range(chunks)
    ]


def make_plan(
    spec: ModelSpec,
    dp: int = 1,
    tp: int = 1,
    pp: int = 1,
    *,
    cp: int = 1,
    ep: int = 1,
    zero_stage: int = 0,
    dp_replicate: int = 1,
    micro_batch_size: int = 1,
    num_micro_batches: int = 1,
    schedule: str = "gpipe",
    virtual_stages: int = 1,
    sequence_parallel: bool = False,
    recompute: str = "none",
    seq_len: int = 32,
    dtype: str = "fp32",
    seed: int = 0,
) -> dict:
    """A valid plan with blocks split as evenly as possible over pp * virtual_stages chunks
    (earlier chunks get the remainder); for tests and hand-written runs. ``dp_replicate`` > 1:
    HSDP, dp_replicate replicas of a ZeRO-2/3 shard group of dp / dp_replicate ranks. ``cp``
    ranks share each dp rank's rows (world = dp·tp·pp·cp); ``ep`` splits the experts over ranks
    carved out of dp·cp."""
    stages = _even_stages(spec.num_layers, pp, virtual_stages, recompute)
    inputs: dict[str, dict] = {
        "model": spec.model_dump(mode="json"),
        "cluster": {},
        "training": {
            "global_batch_size": dp * micro_batch_size * num_micro_batches,
            "seq_len": seq_len,
            "dtype": dtype,
            "seed": seed,
        },
    }
    # The hashes every plan file carries, so a file of this plan passes the integrity check.
    inputs["sha256"] = {k: input_sha256(inputs[k]) for k in INPUT_BLOCKS}
    plan = {
        "schema_version": SCHEMA_VERSION,
        "inputs": inputs,
        "parallelism": {
            "dp": dp,
            "tp": tp,
            "pp": pp,
            "cp": cp,
            "ep": ep,
            "zero_stage": zero_stage,
            "dp_replicate": dp_replicate,
            "micro_batch_size": micro_batch_size,
            "num_micro_batches": num_micro_batches,
            "schedule": schedule,
            "virtual_stages": virtual_stages,
            "sequence_parallel": sequence_parallel,
        },
        "stages": stages,
        "predicted": {},
    }
    return validate_plan(plan)
