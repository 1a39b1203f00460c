"""torchtitan job config (TOML) for a plan.

torchtitan (torchtitan/config/job_config.py): ``[parallelism]`` degrees, FSDP2 for ZeRO-2/3
(``data_parallel_shard_degree``, ``fsdp_reshard_after_forward``), HSDP as
``data_parallel_replicate_degree`` × ``data_parallel_shard_degree``, DDP for ZeRO-0 on a 1-D mesh
(``data_parallel_replicate_degree``), the schedule by its torch.distributed.pipelining name and the
exact split as ``module_fqns_per_model_part``; ``[training]`` batch sizes: without pipelining
``local_batch_size`` is the micro-batch and torchtitan accumulates global / (local · dp) of them;
with pipelining the local batch is all of a rank's micro-batches and
``pipeline_parallel_microbatch_size`` cuts it.
"""

from __future__ import annotations

import json

from planner.export.common import Export, PlanView, common_notes, recompute_note, recompute_pattern, tp_overlap_note

TT_FLAVORS = {"llama3-8b": ("llama3", "8B"), "llama3-70b": ("llama3", "70B"), "llama3-405b": ("llama3", "405B")}


def torchtitan_export(view: PlanView) -> Export:
    """A torchtitan job config: sections -> {key: (value, comment)}; notes become comments."""
    notes = common_notes(view)
    sections = {
        "model": _tt_model(view, notes),
        "training": _tt_training(view, notes),
        "parallelism": _tt_parallelism(view, notes),
        "activation_checkpoint": _tt_checkpoint(view, notes),
    }
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
        notes.append(
            f"model {m.name}: no torchtitan flavor is known to match; set [model] name/flavor to one with "
            f"{m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads}/{m.kv_heads} heads"
        )
    if view.train.dtype == "fp8":
        body["converters"] = (["float8"], "FP8 matmuls (torchao)")
        notes.append(
            "dtype fp8: pick the float8 recipe in the float8 section of your torchtitan version "
            "([float8] or [quantize.linear.float8]); the plan models FP8 matmuls with bf16 activations"
        )
    return body


def _tt_training(view: PlanView, notes: list[str]) -> dict:
    p, t = view.par, view.train
    local = p.micro_batch * view.num_micro_batches if p.pp > 1 else p.micro_batch
    body = {
        "local_batch_size": (local, "sequences per dp rank per forward/backward"),
        "global_batch_size": (t.global_batch, f"{view.num_micro_batches} micro-batches of {p.micro_batch} per dp rank"),
        "seq_len": (t.seq_len, None),
        "mixed_precision_param": ("float32" if t.dtype == "fp32" else "bfloat16", None),
    }
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
        notes.append(
            "sequence_parallel off: torchtitan's tensor-parallel plan always shards norms by sequence "
            "(less activation memory than planned)"
        )
    body["pipeline_parallel_degree"] = (p.pp, None)
    if p.pp > 1:
        body["pipeline_parallel_schedule"] = (p.schedule_spec.torchtitan, f"{p.vpp} model chunk(s) per rank")
        body["pipeline_parallel_microbatch_size"] = (p.micro_batch, None)
        body["module_fqns_per_model_part"] = (_tt_parts(view), "the plan's split, chunk j on rank j % pp")
    body["context_parallel_degree"] = (p.cp, None)
    body["expert_parallel_degree"] = (p.ep, None)
    return body


def _tt_data_parallel(view: PlanView, notes: list[str]) -> dict:
    """ZeRO-3 -> FSDP2 resharding after forward; ZeRO-2 -> FSDP2 keeping weights gathered until
    backward ends (gradients and optimizer states sharded); HSDP -> FSDP2 on a 2-D mesh of
    ``dp_replicate`` replicas × dp/dp_replicate shards; ZeRO-0 -> DDP, which torchtitan only
    applies to a 1-D mesh; ZeRO-1 has no torchtitan form."""
    p = view.par
    one_d = p.tp == p.pp == p.cp == 1
    if p.dp == 1:
        return {"data_parallel_replicate_degree": (1, None), "data_parallel_shard_degree": (1, None)}
    if p.zero == 0 and one_d:
        return {"data_parallel_replicate_degree": (p.dp, "DDP"), "data_parallel_shard_degree": (1, None)}
    if p.zero in (0, 1):
        why = (
            "torchtitan applies DDP only to a 1-D mesh" if p.zero == 0 else "torchtitan has no optimizer-only sharding"
        )
        notes.append(
            f"ZeRO-{p.zero}: {why}; exported FSDP2 with reshard_after_forward never (ZeRO-2-like: "
            "also shards gradients, so less memory than planned, reduce-scatter instead of all-reduce)"
        )
    reshard = "default" if p.zero == 3 else "never"
    r = p.dp_replicate
    if r > 1 and view.num_micro_batches > 1:
        notes.append(
            f"dp_replicate {r}: the plan prices one all-reduce across the HSDP replicas per step (FSDP2 "
            "set_requires_all_reduce(False) until the last micro-batch); a loop that all-reduces after every "
            f"micro-batch sends {view.num_micro_batches - 1} more"
        )
    kind = f"HSDP {r} replicas x {p.dp // r} shards" if r > 1 else "FSDP2"
    return {
        "data_parallel_replicate_degree": (r, None),
        "data_parallel_shard_degree": (p.dp // r, f"{kind}, ZeRO-{max(p.zero, 2)}"),
        "fsdp_reshard_after_forward": (reshard, None),
    }


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
    body: dict[str, tuple[str, str | None]] = {"mode": (mode, None)}
    if mode == "selective":
        body["selective_ac_option"] = ("op", "per-op SAC")
        notes.append(
            "recompute selective: torchtitan's per-op selective AC keeps matmul outputs by its own "
            "policy; the plan models recomputing the attention core only (Korthikanti et al. 2022)"
        )
    note = recompute_note(view, pat, "torchtitan", f'mode = "{mode}" for every block')
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
