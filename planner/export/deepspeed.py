"""DeepSpeed config (JSON) for a plan (deepspeed/runtime/config.py).

``train_batch_size`` = micro · accumulation · dp, ``zero_optimization.stage`` (HSDP under ZeRO-3 as
MiCS, ``mics_shard_size``), ``bf16``/``fp16``, ``communication_data_type`` (the gradient reduce
dtype the plan was priced in), ``activation_checkpointing``, the ``pipeline`` block (stages,
activation_checkpoint_interval) and AutoTP's ``tensor_parallel.autotp_size``.
"""

from __future__ import annotations

import json

from planner.config import grad_reduce_bytes
from planner.export.common import Export, PlanView, common_notes, recompute_note, recompute_pattern, tp_overlap_note


def deepspeed_export(view: PlanView) -> Export:
    """A DeepSpeed config; degrees DeepSpeed takes in code (pipeline stages) are notes too."""
    p, t = view.par, view.train
    notes = common_notes(view)
    cfg: dict = {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": view.num_micro_batches,
        "zero_optimization": {"stage": p.zero},
    }
    cfg["zero_optimization"].update(_ds_hsdp(view, notes))
    if t.dtype in ("bf16", "fp8", "fp16"):
        cfg["fp16" if t.dtype == "fp16" else "bf16"] = {"enabled": True}
        # The dtype the plan's gradient traffic was priced in (config.grad_reduce_bytes).
        cfg["communication_data_type"] = (
            "fp32" if grad_reduce_bytes(t, p.zero) == 4 else ("fp16" if t.dtype == "fp16" else "bf16")
        )
    if t.dtype == "fp8":
        notes.append("dtype fp8: DeepSpeed's config has no FP8 switch; use Transformer Engine layers in the model")
    ckpt, interval = _ds_recompute(view, notes)
    if ckpt:
        cfg["activation_checkpointing"] = ckpt
    if p.tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": p.tp}
        notes.append(
            f"tp {p.tp}: AutoTP training (tensor_parallel.autotp_size, DeepSpeed >= 0.16.4) shards "
            "Hugging Face models' linear layers; it supports ZeRO 0-2"
            + (f", not the plan's ZeRO-{p.zero}" if p.zero == 3 else "")
            + (", and has no sequence parallelism" if p.sequence_parallel else "")
        )
        notes += tp_overlap_note(view, "DeepSpeed", "AutoTP's all-reduces block by default")
    if p.pp > 1:
        cfg["pipeline"] = {
            "stages": p.pp,
            "partition": "uniform" if view.even_split else "parameters",
            "activation_checkpoint_interval": interval,
        }
        notes += _ds_pipeline_notes(view, interval)
    for deg, name in ((p.cp, "context parallelism"), (p.ep, "expert parallelism")):
        if deg > 1:
            notes.append(
                f"{name} {deg}: no key in DeepSpeed's config; set it up in the model code "
                "(e.g. Megatron-DeepSpeed) and check train_batch_size = micro * accumulation * dp"
            )
    return Export("deepspeed", json.dumps(cfg, indent=2) + "\n", cfg, notes)


def _ds_pipeline_notes(view: PlanView, interval: int) -> list[str]:
    p = view.par
    sizes = ",".join(str(c.num_blocks) for c in view.chunks)
    notes = [
        f"pp {p.pp}: build deepspeed.pipe.PipelineModule(num_stages={p.pp}, activation_checkpoint_interval="
        f"{interval}); DeepSpeed splits by 'uniform' or 'parameters', not the plan's blocks per chunk ({sizes})"
    ]
    if not p.schedule_spec.deepspeed or p.vpp > 1:
        notes.append(
            f"schedule {p.schedule} (vpp {p.vpp}): DeepSpeed's pipeline engine runs 1F1B without "
            "interleaving (a larger bubble than planned)"
        )
    if p.zero >= 2:
        notes.append(f"ZeRO-{p.zero} with pp {p.pp}: DeepSpeed's pipeline engine rejects ZeRO-2/3")
    return notes


def _ds_recompute(view: PlanView, notes: list[str]) -> tuple[dict | None, int]:
    """DeepSpeed checkpoints whole layers (deepspeed.checkpointing; a PipelineModule with
    activation_checkpoint_interval 1 checkpoints every layer); the config section sizes the
    buffers: ``number_checkpoints`` = the most recomputed blocks on one pipeline rank. Activations
    are not partitioned across tp ranks, as in the plan."""
    pat = recompute_pattern(view)
    if pat.mode == "none":
        return None, 0
    per_rank: dict[int, int] = {}
    for c in view.chunks:
        per_rank[c.pp_rank] = per_rank.get(c.pp_rank, 0) + sum(o != "none" for o in c.recompute)
    if pat.mode == "selective":
        notes.append(
            "recompute selective: DeepSpeed checkpoints whole layers only; wrap the attention core in "
            "deepspeed.checkpointing.checkpoint yourself (the config sizes its buffers)"
        )
    note = recompute_note(view, pat, "DeepSpeed", "whole-layer checkpointing of the counted blocks")
    if note:
        notes.append(note)
    ckpt = {
        "partition_activations": False,
        "cpu_checkpointing": False,
        "contiguous_memory_optimization": False,
        "number_checkpoints": max(per_rank.values()),
        "synchronize_checkpoint_boundary": False,
        "profile": False,
    }
    return ckpt, 1 if pat.mode == "full" and pat.block_full is None else 0


def _ds_hsdp(view: PlanView, notes: list[str]) -> dict:
    """HSDP under ZeRO-3 is DeepSpeed's MiCS (Zhang et al. 2022): parameters, gradients and
    optimizer states sharded within groups of ``mics_shard_size`` ranks, replicated across them;
    ZeRO-2 has no hybrid form there."""
    p = view.par
    if p.dp_replicate == 1:
        return {}
    shard = p.dense_shard
    if p.zero == 3:
        notes.append(
            f"dp_replicate {p.dp_replicate}: ZeRO-3 within groups of {shard} ranks is DeepSpeed's MiCS "
            "(mics_shard_size); build the model under deepspeed.zero.MiCS_Init"
        )
        return {"mics_shard_size": shard}
    notes.append(
        f"dp_replicate {p.dp_replicate}: DeepSpeed has no hybrid ZeRO-2; exported ZeRO-2 over all "
        f"{p.dense_dp} data-parallel ranks (more reduce-scatter traffic across nodes than planned)"
    )
    return {}
