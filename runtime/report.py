"""The run report: what a run measured, next to what the plan predicted.

Step time of a step is the slowest rank's; the summary averages steps after the first (the
first pays one-off costs: pipeline shape inference, lazy allocations) when there is more than
one; so does the peak memory. Peak memory per rank is ``torch.cuda.max_memory_allocated`` on CUDA (everything: weights,
gradients, optimizer state, activations) and, on CPU, where torch keeps no allocator
statistics, the peak bytes held for backward (``runtime.memory.SavedTensorMeter``): compare the
latter with the plan's activation figures, not its total. The CPU meter runs inside the timed
step (saved-tensor hooks in Python: +20-35% on the debug model, bench/runtime_overhead.py).
"""

from __future__ import annotations

import os

from runtime.phases import PHASES

# 1.1: "phases", the profiled step left out of the means; 1.2: per-step grad_norm and lr,
# model_state; 1.3: "memory_plan" (--memory-plan arena: planned and measured arena per rank).
REPORT_SCHEMA_VERSION = "1.3"
COMPARED = ("step_time_s", "tokens_per_s", "peak_memory_bytes")
MODEL_STATE = ("weights_bytes", "gradients_bytes", "optimizer_bytes")


def _relative_error(measured: float, predicted) -> float | None:
    if not isinstance(predicted, (int, float)) or predicted <= 0:
        return None
    return (measured - predicted) / predicted


def model_state_comparison(plan: dict, records: list[dict]) -> list[dict]:
    """Per pipeline rank: model-state bytes measured on its ranks (runtime.model_state), their mean
    and the largest, beside the planner's ``predicted.stages[pp_rank].memory`` figures. The mean
    is what equals the planner's even split: ZeRO-1 partitions whole tensors, so one dp rank may
    hold a few more optimizer bytes than another while their sum is the planner's."""
    stages = (plan.get("predicted") or {}).get("stages") or []
    out = []
    for pp_rank in sorted({r["pp_rank"] for r in records}):
        mine = [r["model_state_bytes"] for r in records if r["pp_rank"] == pp_rank]
        entry: dict = {"pp_rank": pp_rank}
        entry["measured_mean"] = {k: sum(m[k] for m in mine) / len(mine) for k in MODEL_STATE}
        entry["measured_max"] = {k: max(m[k] for m in mine) for k in MODEL_STATE}
        memory = stages[pp_rank].get("memory") if pp_rank < len(stages) else None
        entry["predicted"] = {k: memory[k] for k in MODEL_STATE} if memory else None
        out.append(entry)
    return out


def _steps(records: list[dict], first_step: int, tokens_per_step: int) -> list[dict]:
    """One entry per step: its number, the loss and the slowest rank's time."""
    steps = []
    for i, loss in enumerate(records[0]["losses"]):
        step_time_s = max(r["step_time_s"][i] for r in records)
        r0 = records[0]
        steps.append(
            {
                "step": first_step + i,
                "loss": loss,
                "grad_norm": r0["grad_norms"][i],
                "lr": r0["lrs"][i],
                "step_time_s": step_time_s,
                "tokens_per_s": tokens_per_step / step_time_s,
            }
        )
    return steps


def build_report(
    plan: dict, records: list[dict], device_type: str, plan_path: str | None = None, resumed_from: dict | None = None
) -> dict:
    """Merge the per-rank records of one run into the report dict (versioned JSON). A resumed run
    numbers its steps from the checkpoint's and carries ``resumed_from`` (checkpoint, step, plan changes)."""
    t = plan["inputs"]["training"]
    tokens_per_step = t["global_batch_size"] * t["seq_len"]
    first_step = records[0].get("first_step", 0)  # > 0 when resumed from a checkpoint
    steps = _steps(records, first_step, tokens_per_step)
    profiled = records[0].get("profiled_step")
    timed = [s for s in steps[1:] if s["step"] != profiled] or steps[1:] or steps
    step_time_s = sum(s["step_time_s"] for s in timed) / len(timed) if timed else 0.0
    # The first step of a pipeline also runs the stages' shape-inference forward: skip it too.
    first = 1 if len(steps) > 1 else 0
    per_rank = [max(r["peak_memory_bytes_per_step"][first:]) for r in sorted(records, key=lambda r: r["rank"])]
    measured = {
        "step_time_s": step_time_s,
        "tokens_per_s": tokens_per_step / step_time_s if step_time_s else 0.0,
        "peak_memory_bytes": max(per_rank),
        "peak_memory_bytes_per_rank": per_rank,
        "memory_kind": records[0]["memory_kind"],
    }
    predicted = {k: v for k, v in (plan.get("predicted") or {}).items() if k in COMPARED}
    stages = (plan.get("predicted") or {}).get("stages") or []
    if measured["memory_kind"] == "saved_for_backward" and stages and "memory" in stages[0]:
        # On CPU the meter sees what autograd keeps: compare it with the planner's in-flight activations.
        predicted["activation_bytes"] = max(st["memory"]["activations_bytes"] for st in stages)
        measured["activation_bytes"] = measured["peak_memory_bytes"]
    phases = phase_report(plan, records, [s["step"] - first_step for s in timed])
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_state": model_state_comparison(plan, records),
        "kind": "run_report",
        "plan": plan_path,
        "device_type": device_type,
        "world_size": len(records),
        "parallelism": plan["parallelism"],
        "tokens_per_step": tokens_per_step,
        # Ranks beyond the cores share them: measured step times then say nothing about the plan.
        "cpu_cores": os.cpu_count() if device_type == "cpu" else None,
        "steps": steps,
        "measured": measured,
        "predicted": predicted,
        "phases": phases,
        # On CPU the measured peak is activations only: not comparable with a predicted total.
        "relative_error": {
            k: _relative_error(measured[k], v)
            for k, v in predicted.items()
            if k in measured and (k != "peak_memory_bytes" or measured["memory_kind"] != "saved_for_backward")
        },
    }
    if resumed_from is not None:
        report["resumed_from"] = resumed_from
    if records[0].get("arena"):
        report["memory_plan"] = arena_report(records)
    return report


def arena_report(records: list[dict]) -> dict:
    """``--memory-plan arena`` per rank: the plan (runtime.arena.ArenaLayout.summary: planned
    arena, its max-live bound, best fit, the solve) beside what the hooks measured each step
    (runtime.arena_hooks: the high-water mark, the largest offset + bytes of a slot in use)."""
    ranks = []
    for r in sorted(records, key=lambda r: r["rank"]):
        high = max(r["arena"]["measured_high_water_bytes_per_step"])
        ranks.append({"rank": r["rank"], "pp_rank": r["pp_rank"], **r["arena"], "measured_high_water_bytes": high})
    return {"kind": "arena", "ranks": ranks}


def _predicted_phases(plan: dict) -> dict[str, float | None]:
    """The plan's phase times for its slowest stage: forward and backward (recompute included)
    per micro-batch times the micro-batches, the optimizer, the exposed communication, the bubble."""
    pred = plan.get("predicted") or {}
    n = (plan.get("parallelism") or {}).get("num_micro_batches", 1)
    stages = pred.get("stages") or []
    chunks = [[c for c in st.get("chunks", [])] for st in stages]
    breakdown = pred.get("time_breakdown_s") or {}

    def per_stage(key: str) -> float | None:
        sums = [sum(c[key] for c in cs) * n for cs in chunks if cs and all(key in c for c in cs)]
        return max(sums) if sums else None

    return {
        "forward": per_stage("fwd_s_per_microbatch"),
        "backward": per_stage("bwd_s_per_microbatch"),  # recompute included, as measured
        "optimizer": breakdown.get("optimizer_s"),
        "dp_grad_sync_exposed": breakdown.get("dp_sync_exposed_s"),
        "zero_comm_exposed": breakdown.get("zero_exposed_s"),
        "tp_cp_ep_comm_exposed": breakdown.get("exposed_comm_in_layers_s"),
        "pipeline_bubble": pred.get("pipeline_bubble_s"),
    }


def phase_report(plan: dict, records: list[dict], timed_steps: list[int]) -> dict:
    """Measured phase times (mean over ``timed_steps``, indices into this run's steps; slowest rank per phase; runtime.phases),
    collective time per kind on the profiled step (slowest rank; runtime.profile), the plan's
    predicted phases, and what is not measured."""
    timed = [r["phases_s"] for r in records if r.get("phases_s")] if timed_steps else []
    measured: dict[str, float] = {}
    if timed:
        for phase in PHASES:
            measured[phase] = max(sum(p[i][phase] for i in timed_steps) / len(timed_steps) for p in timed)
        measured["recomputed_blocks"] = max(p[timed_steps[0]]["recomputed_blocks"] for p in timed)
    kinds = sorted({k for r in records for k in r.get("comm_s", {})})
    comm = {k: max(r.get("comm_s", {}).get(k, 0.0) for r in records) for k in kinds}
    return {
        "measured_s": measured,
        "communication_s": comm,
        "profiled_step": records[0].get("profiled_step"),
        "predicted_s": _predicted_phases(plan),
        "not_measured": [
            "recompute time: inside measured backward (counted as recomputed_blocks, not timed)",
            "pipeline bubble and point-to-point waits: inside measured backward (pp > 1)",
            "exposed communication: collectives are timed whole (in flight), not the part compute did not hide",
            "communication per parallel dimension: collectives are grouped by kind, not by the group they ran on",
        ],
    }
