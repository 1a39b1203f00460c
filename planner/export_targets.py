"""torchtitan job config (TOML) and DeepSpeed config (JSON) for a plan.

torchtitan (torchtitan/config/job_config.py): ``[parallelism]`` degrees, FSDP2 for ZeRO-2/3
(``data_parallel_shard_degree``, ``fsdp_reshard_after_forward``), DDP for ZeRO-0 on a 1-D mesh
(``data_parallel_replicate_degree``), the schedule by its torch.distributed.pipelining name and the
exact split as ``module_fqns_per_model_part``; ``[training]`` batch sizes: without pipelining
``local_batch_size`` is the micro-batch and torchtitan accumulates global / (local · dp) of them;
with pipelining the local batch is all of a rank's micro-batches and
``pipeline_parallel_microbatch_size`` cuts it.

DeepSpeed (deepspeed/runtime/config.py): ``train_batch_size`` = micro · accumulation · dp,
``zero_optimization.stage``, ``bf16``/``fp16``, ``communication_data_type`` (the gradient reduce dtype the plan
was priced in), ``activation_checkpointing``, the ``pipeline``
block (stages, activation_checkpoint_interval) and AutoTP's ``tensor_parallel.autotp_size``.
"""

from __future__ import annotations

import json

from planner.export_common import Export, PlanView, common_notes, recompute_note, recompute_pattern, tp_overlap_note
from planner.config import grad_reduce_bytes

TT_SCHEDULE = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B"}
TT_FLAVORS = {"llama3-8b": ("llama3", "8B"), "llama3-70b": ("llama3", "70B"), "llama3-405b": ("llama3", "405B")}


def torchtitan_export(view: PlanView) -> Export:
    """A torchtitan job config: sections -> {key: (value, comment)}; notes become comments."""
    notes = common_notes(view)
    sections = {"model": _tt_model(view, notes), "training": _tt_training(view, notes),
                "parallelism": _tt_parallelism(view, notes),
                "activation_checkpoint": _tt_checkpoint(view, notes)}
    head = [f"# torchtitan job config exported by autopar from {view.source}", f"# {view.title}"]
    head += [f"# note: {n}" for n in notes]
    config = {name: {k: v for k, (v, _) in body.items()} for name, body in sections.items() if body}
    return Export("torchtitan", "\n".join(head) + "\n" + _toml(sections), config, notes)


def _tt_model(view: PlanView, notes: list[str]) -> dict:
    body: dict = {}
    if view.model.name in TT_FLAVORS:
        name, flavor = TT_FLAVORS[view.model.name]
        body = {"name": (name, None), "flavor": (flavor, None)}
    else:
        m = view.model
        notes.append(f"model {m.name}: no torchtitan flavor is known to match; set [model] name/flavor to one with "
                     f"{m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads}/{m.kv_heads} heads")
    if view.train.dtype == "fp8":
        body["converters"] = (["float8"], "FP8 matmuls (torchao)")
        notes.append("dtype fp8: pick the float8 recipe in the float8 section of your torchtitan version "
                     "([float8] or [quantize.linear.float8]); the plan models FP8 matmuls with bf16 activations")
    return body


def _tt_training(view: PlanView, notes: list[str]) -> dict:
    p, t = view.par, view.train
    local = p.micro_batch * view.num_micro_batches if p.pp > 1 else p.micro_batch
    body = {"local_batch_size": (local, "sequences per dp rank per forward/backward"),
            "global_batch_size": (t.global_batch, f"{view.num_micro_batches} micro-batches of {p.micro_batch} per dp rank"),
            "seq_len": (t.seq_len, None),
            "mixed_precision_param": ("float32" if t.dtype == "fp32" else "bfloat16", None)}
    if t.dtype == "fp16":
        notes.append("dtype fp16: torchtitan trains in bfloat16 or float32 only; exported bfloat16 (same bytes)")
    if t.grad_reduce_dtype == "bf16" and p.zero >= 2:
        notes.append("grad_reduce_dtype bf16: torchtitan's FSDP reduces gradients in float32 only")
    return body


def _tt_parallelism(view: PlanView, notes: list[str]) -> dict:
    p = view.par
    body = _tt_data_parallel(view, notes)
    body["tensor_parallel_degree"] = (p.tp, None)
    body["enable_async_tensor_parallel"] = (False, None)
    notes += tp_overlap_note(view, "torchtitan", "torchtitan's eager TP exposes them")
    if p.tp > 1 and not p.sequence_parallel:
        notes.append("sequence_parallel off: torchtitan's tensor-parallel plan always shards norms by sequence "
                     "(less activation memory than planned)")
    body["pipeline_parallel_degree"] = (p.pp, None)
    if p.pp > 1:
        body["pipeline_parallel_schedule"] = (TT_SCHEDULE[p.schedule], f"{p.vpp} model chunk(s) per rank")
        body["pipeline_parallel_microbatch_size"] = (p.micro_batch, None)
        body["module_fqns_per_model_part"] = (_tt_parts(view), "the plan's split, chunk j on rank j % pp")
    body["context_parallel_degree"] = (p.cp, None)
    body["expert_parallel_degree"] = (p.ep, None)
    return body


def _tt_data_parallel(view: PlanView, notes: list[str]) -> dict:
    """ZeRO-3 -> FSDP2 resharding after forward; ZeRO-2 -> FSDP2 keeping weights gathered until
    backward ends (gradients and optimizer states sharded); ZeRO-0 -> DDP, which torchtitan only
    applies to a 1-D mesh; ZeRO-1 has no torchtitan form."""
    p = view.par
    one_d = p.tp == p.pp == p.cp == 1
    if p.dp == 1:
        return {"data_parallel_replicate_degree": (1, None), "data_parallel_shard_degree": (1, None)}
    if p.zero == 0 and one_d:
        return {"data_parallel_replicate_degree": (p.dp, "DDP"), "data_parallel_shard_degree": (1, None)}
    if p.zero in (0, 1):
        why = ("torchtitan applies DDP only to a 1-D mesh" if p.zero == 0
               else "torchtitan has no optimizer-only sharding")
        notes.append(f"ZeRO-{p.zero}: {why}; exported FSDP2 with reshard_after_forward never (ZeRO-2-like: "
                     "also shards gradients, so less memory than planned, reduce-scatter instead of all-reduce)")
    reshard = "default" if p.zero == 3 else "never"
    return {"data_parallel_replicate_degree": (1, None), "data_parallel_shard_degree": (p.dp, f"FSDP2, ZeRO-{max(p.zero, 2)}"),
            "fsdp_reshard_after_forward": (reshard, None)}


def _tt_parts(view: PlanView) -> list[list[str]]:
    """Module names per model chunk (torchtitan decoders: tok_embeddings, layers.i, norm, output)."""
    parts = []
    for c in view.chunks:
        names = ["tok_embeddings"] if c.has_embedding else []
        names += [f"layers.{i}" for i in range(c.first, c.first + c.num_blocks)]
        parts.append(names + (["norm", "output"] if c.has_head else []))
    return parts


def _tt_checkpoint(view: PlanView, notes: list[str]) -> dict:
    pat = recompute_pattern(view)
    mode = "full" if pat.block_full is not None else pat.mode
    body = {"mode": (mode, None)}
    if mode == "selective":
        body["selective_ac_option"] = ("op", "per-op SAC")
        notes.append("recompute selective: torchtitan's per-op selective AC keeps matmul outputs by its own "
                     "policy; the plan models recomputing the attention core only (Korthikanti et al. 2022)")
    note = recompute_note(view, pat, "torchtitan", f"mode = \"{mode}\" for every block")
    if note:
        notes.append(note)
    return body


def _toml(sections: dict) -> str:
    """Write ints, bools, strings and (nested) lists of strings as TOML with trailing comments."""
    out = []
    for name, body in sections.items():
        if not body:
            continue
        out.append(f"\n[{name}]")
        for key, (value, comment) in body.items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                text = "[\n" + "".join(f"    {json.dumps(v)},\n" for v in value) + "]"
            else:
                text = json.dumps(value)  # JSON scalars and string lists are valid TOML
            out.append(f"{key} = {text}" + (f"  # {comment}" if comment else ""))
    return "\n".join(out).lstrip("\n") + "\n"


def deepspeed_export(view: PlanView) -> Export:
    """A DeepSpeed config; degrees DeepSpeed takes in code (pipeline stages) are notes too."""
    p, t = view.par, view.train
    notes = common_notes(view)
    cfg: dict = {"train_batch_size": t.global_batch, "train_micro_batch_size_per_gpu": p.micro_batch,
                 "gradient_accumulation_steps": view.num_micro_batches, "zero_optimization": {"stage": p.zero}}
    if t.dtype in ("bf16", "fp8", "fp16"):
        cfg["fp16" if t.dtype == "fp16" else "bf16"] = {"enabled": True}
        # The dtype the plan's gradient traffic was priced in (config.grad_reduce_bytes).
        cfg["communication_data_type"] = "fp32" if grad_reduce_bytes(t, p.zero) == 4 else \
            ("fp16" if t.dtype == "fp16" else "bf16")
    if t.dtype == "fp8":
        notes.append("dtype fp8: DeepSpeed's config has no FP8 switch; use Transformer Engine layers in the model")
    ckpt, interval = _ds_recompute(view, notes)
    if ckpt:
        cfg["activation_checkpointing"] = ckpt
    if p.tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": p.tp}
        notes.append(f"tp {p.tp}: AutoTP training (tensor_parallel.autotp_size, DeepSpeed >= 0.16.4) shards "
                     "Hugging Face models' linear layers; it supports ZeRO 0-2"
                     + (f", not the plan's ZeRO-{p.zero}" if p.zero == 3 else "")
                     + (", and has no sequence parallelism" if p.sequence_parallel else ""))
        notes += tp_overlap_note(view, "DeepSpeed", "AutoTP's all-reduces block by default")
    if p.pp > 1:
        cfg["pipeline"] = {"stages": p.pp, "partition": "uniform" if view.even_split else "parameters",
                           "activation_checkpoint_interval": interval}
        notes += _ds_pipeline_notes(view, interval)
    for deg, name in ((p.cp, "context parallelism"), (p.ep, "expert parallelism")):
        if deg > 1:
            notes.append(f"{name} {deg}: no key in DeepSpeed's config; set it up in the model code "
                         "(e.g. Megatron-DeepSpeed) and check train_batch_size = micro * accumulation * dp")
    return Export("deepspeed", json.dumps(cfg, indent=2) + "\n", cfg, notes)


def _ds_pipeline_notes(view: PlanView, interval: int) -> list[str]:
    p = view.par
    sizes = ",".join(str(c.num_blocks) for c in view.chunks)
    notes = [f"pp {p.pp}: build deepspeed.pipe.PipelineModule(num_stages={p.pp}, activation_checkpoint_interval="
             f"{interval}); DeepSpeed splits by 'uniform' or 'parameters', not the plan's blocks per chunk ({sizes})"]
    if p.schedule != "1f1b" or p.vpp > 1:
        notes.append(f"schedule {p.schedule} (vpp {p.vpp}): DeepSpeed's pipeline engine runs 1F1B without "
                     "interleaving (a larger bubble than planned)")
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
        notes.append("recompute selective: DeepSpeed checkpoints whole layers only; wrap the attention core in "
                     "deepspeed.checkpointing.checkpoint yourself (the config sizes its buffers)")
    note = recompute_note(view, pat, "DeepSpeed", "whole-layer checkpointing of the counted blocks")
    if note:
        notes.append(note)
    ckpt = {"partition_activations": False, "cpu_checkpointing": False, "contiguous_memory_optimization": False,
            "number_checkpoints": max(per_rank.values()), "synchronize_checkpoint_boundary": False,
            "profile": False}
    return ckpt, 1 if pat.mode == "full" and pat.block_full is None else 0
