"""Typed results of the cost model: what ``estimate`` predicts for one plan.

``Predicted`` holds the plan-wide figures and one ``StageResult`` per pipeline rank, each with
its ``ChunkResult`` per model chunk and its ``StageMemory``. Code reads them as attributes
(``est.predicted.step_time_s``); ``to_json()`` gives the ``predicted`` block of plan files and
``estimate --format json`` (same names, units in the keys), and ``record["key"]`` reads that JSON
form, so scripts written against plan files read an estimate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.memory import StageMemory
from planner.records import JsonRecord


@dataclass(frozen=True)
class ChunkResult(JsonRecord):
    """One model chunk of a pipeline rank: its blocks and per-micro-batch times."""

    chunk: int
    layers: tuple[int, int]  # half-open block range
    has_embedding: bool
    has_head: bool
    fwd_s_per_microbatch: float
    bwd_s_per_microbatch: float


@dataclass(frozen=True)
class StageResult(JsonRecord):
    """One pipeline rank: its chunks, peak memory per GPU, and where its time goes."""

    pp_rank: int
    chunks: tuple[ChunkResult, ...]
    memory: StageMemory
    busy_s: float  # forward + backward seconds over every micro-batch
    end_s: float  # when its last backward ends in the schedule
    dp_sync_exposed_s: float  # data-parallel sync after it, not hidden by compute
    optimizer_s: float


@dataclass(frozen=True)
class TimeBreakdown(JsonRecord):
    """The busiest rank's step split by cause, seconds."""

    pipeline_s: float  # makespan of the schedule
    exposed_comm_in_layers_s: float  # tp/ep/cp collectives not hidden, inside the layers
    zero_exposed_s: float  # ZeRO-2/3 gathers/scatters each micro-batch, not hidden
    dp_sync_exposed_s: float
    optimizer_s: float


@dataclass(frozen=True)
class Predicted(JsonRecord):
    """The figures of one plan (the ``predicted`` block of a plan file)."""

    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    mfu: float
    hfu: float
    model_tflops_per_gpu: float
    hw_tflops_per_gpu: float
    model_flops_per_step: float
    peak_memory_bytes: float
    memory_capacity_bytes: float
    num_micro_batches: int
    pipeline_bubble_s: float
    time_breakdown_s: TimeBreakdown
    stages: tuple[StageResult, ...]
    stack: str = "megatron-core"  # the software stack priced (planner/stacks)
    # 80% interval of the step time from the stack's leave-one-source-out residuals (bench/fit.py);
    # [step, step] before any fit.
    step_time_interval_s: tuple[float, float] = (0.0, 0.0)


def time_components(p: Predicted) -> dict[str, float]:
    """The step split into what a user can act on (busiest rank's figures; compute is the rest of
    the pipeline time)."""
    tb = p.time_breakdown_s
    compute = tb.pipeline_s - p.pipeline_bubble_s - tb.exposed_comm_in_layers_s - tb.zero_exposed_s
    return {
        "compute (incl. recompute)": compute,
        "pipeline bubble": p.pipeline_bubble_s,
        "exposed tp/ep/cp communication": tb.exposed_comm_in_layers_s,
        "exposed ZeRO-2/3 gather/scatter": tb.zero_exposed_s,
        "data-parallel sync": tb.dp_sync_exposed_s,
        "optimizer": tb.optimizer_s,
    }
