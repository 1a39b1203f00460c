"""torchtitan configuration for a plan, in the form the user's torchtitan release loads.

- 0.3.x (the default; ``--torchtitan-version 0.3``): torchtitan 0.3 configures a run with a Python
  function returning ``Trainer.Config``, chosen with ``--module M --config F`` (its TOML loader is
  gone, its ``--section.key`` flags are frozen, the model tree is off the command line). The
  export is such a module (``torchtitan_recipe``): torchtitan's own recipe for the model, then the
  plan's degrees, batch, recompute policy and float8 converters.
- 0.2.x: the TOML job config (``--job.config_file``) written here; 0.1.x is not supported (its
  float8 converter is ``float8``, 0.2 registers ``quantize.linear.float8``).

Mapping (docs/exports.md has the table): ``[parallelism]`` degrees, FSDP2 for ZeRO-2/3
(``data_parallel_shard_degree``, ``fsdp_reshard_after_forward``), HSDP as
``data_parallel_replicate_degree`` × ``data_parallel_shard_degree``, DDP for ZeRO-0 on a 1-D mesh,
the schedule by its torch.distributed.pipelining name and the exact split as
``module_fqns_per_model_part``; batch: without pipelining ``local_batch_size`` is the micro-batch
and torchtitan accumulates global / (local · dp) of them; with pipelining the local batch is all
of a rank's micro-batches and ``pipeline_parallel_microbatch_size`` cuts it. What torchtitan runs
differently from the plan is re-scored (``rescore``).
"""

from __future__ import annotations

import json

from models.errors import SpecError
from planner.export.common import Export, PlanView, common_notes, recompute_note, recompute_pattern, tp_overlap_note
from planner.export.rescore import AsRun, rescore_note
from planner.export.torchtitan_recipe import TT_MODELS, TTModel, recipe_export

TT_VERSIONS = ("0.3", "0.2")
DEFAULT_TT_VERSION = "0.3"


def tt_version(text: str) -> str:
    """``0.3``, ``0.3.0``, ``v0.2.2`` -> the release line (``0.3`` / ``0.2``); SpecError otherwise."""
    line = ".".join(text.strip().lstrip("v").split(".")[:2])
    if line not in TT_VERSIONS:
        raise SpecError(f"--torchtitan-version must be 0.3.x or 0.2.x (got {text!r})")
    return line


def torchtitan_export(view: PlanView, version: str = DEFAULT_TT_VERSION) -> Export:
    """torchtitan's configuration for ``version``: sections -> {key: (value, comment)}."""
    version = tt_version(version)
    notes, run = common_notes(view), AsRun.of(view)
    tt = tt_model(view, version, notes)
    sections = {
        "model": _tt_model(view, tt),
        "training": _tt_training(view, run, version, notes),
        "parallelism": _tt_parallelism(view, run, version, notes),
        "compile": _tt_compile(view, version),
    }
    mode = _tt_checkpoint(view, run, notes)
    fp8 = _tt_float8(view, notes) if version == "0.2" else {}
    notes += rescore_note(view, run, f"torchtitan {version}")
    if version == "0.3":
        return recipe_export(view, tt, sections, mode, notes)
    sections["activation_checkpoint"] = _tt_checkpoint_section(mode)
    sections.update(fp8)
    c = view.cluster
    head = [f"# torchtitan 0.2.x job config exported by autopar from {view.source}", f"# {view.title}"]
    head.append(
        f"# run: torchrun --nnodes {c.num_nodes} --nproc-per-node {c.gpus_per_node} -m torchtitan.train "
        "--job.config_file <this file>"
    )
    head += [f"# note: {n}" for n in notes]
    return Export("torchtitan", "\n".join(head) + "\n" + _toml(sections), _nested(sections), notes)


def tt_model(view: PlanView, version: str, notes: list[str]) -> TTModel | None:
    """The torchtitan model for the plan's, or None with a note (never torchtitan's debug model)."""
    m, tt = view.model, TT_MODELS.get(view.model.name)
    if tt is not None and (version != "0.2" or tt.in_02):
        return tt
    have = (
        f"torchtitan 0.2.x has no {tt.module} {tt.flavor} flavor (0.3 has: --torchtitan-version 0.3)"
        if tt
        else "no torchtitan flavor matches it"
    )
    experts = f", {m.moe.num_experts} experts" if m.moe else ""
    notes.append(
        f"model {m.name}: {have} ({m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads}/{m.kv_heads} "
        f"heads{experts}); the export names no torchtitan model, so torchtitan stops instead of training its "
        "debug model: add this model to torchtitan and name it"
    )
    return None


def _tt_model(view: PlanView, tt: TTModel | None) -> dict:
    if tt is None:  # an unregistered name: torchtitan 0.2 refuses it instead of building llama3 debugmodel
        return {"name": (view.model.name, "not a torchtitan model: register it (see note)")}
    return {"name": (tt.module, None), "flavor": (tt.flavor, None), "hf_assets_path": (tt.hf_assets, None)}


def _tt_training(view: PlanView, run: AsRun, version: str, notes: list[str]) -> dict:
    p, t = view.par, view.train
    local = p.micro_batch * view.num_micro_batches if p.pp > 1 else p.micro_batch
    body = {
        "local_batch_size": (local, "sequences per dp rank per forward/backward"),
        "global_batch_size": (t.global_batch, f"{view.num_micro_batches} micro-batches of {p.micro_batch} per dp rank"),
        "seq_len": (t.seq_len, None),
        "mixed_precision_param": ("float32" if t.dtype == "fp32" else "bfloat16", None),
    }
    if version == "0.3" and (p.pp > 1 or p.ep > 1):
        # Trainer.Config._validate_cuda_graphs: CUDA graphs reject pipelining and the default EP dispatcher.
        body["disable_cuda_graphs"] = (True, "CUDA graphs do not support this pipeline / EP dispatcher")
    if t.dtype == "fp16":
        notes.append("dtype fp16: torchtitan trains in bfloat16 or float32 only; exported bfloat16 (same bytes)")
        run.set_training("bf16 for fp16", dtype="bf16")
    if t.grad_reduce_dtype == "bf16" and p.zero >= 2 and p.dp > 1:
        notes.append("grad_reduce_dtype bf16: torchtitan's FSDP reduces gradients in float32 only")
        run.set_training("gradients reduced in fp32", grad_reduce_dtype="fp32")
    return body


def _tt_parallelism(view: PlanView, run: AsRun, version: str, notes: list[str]) -> dict:
    p = view.par
    body = _tt_data_parallel(view, run, notes)
    body["tensor_parallel_degree"] = (p.tp, None)
    if version == "0.2":
        body["enable_async_tensor_parallel"] = (False, None)
    if p.tp > 1 and view.train.tp_overlap != "none":
        notes += tp_overlap_note(view, "torchtitan", "torchtitan's eager TP exposes them")
        run.set_training("TP collectives exposed (eager TP)", tp_overlap="none")
    if version == "0.3":
        body["enable_sequence_parallel"] = (p.sequence_parallel or p.tp == 1, None)
    elif p.tp > 1 and not p.sequence_parallel:
        notes.append("sequence_parallel off: torchtitan 0.2's tensor-parallel plan always shards norms by sequence")
        run.set("sequence parallelism (always on in torchtitan 0.2)", sequence_parallel=True)
    body["pipeline_parallel_degree"] = (p.pp, None)
    if p.pp > 1:
        body["pipeline_parallel_schedule"] = (p.schedule_spec.torchtitan, f"{p.vpp} model chunk(s) per rank")
        body["pipeline_parallel_microbatch_size"] = (p.micro_batch, None)
        body["module_fqns_per_model_part"] = (tt_parts(view, version), "the plan's split, chunk j on rank j % pp")
    body["context_parallel_degree"] = (p.cp, None)
    body["expert_parallel_degree"] = (p.ep, None)
    if p.ep > 1 and p.tp > 1:
        if version == "0.2":  # experts split over tp as in the plan (ParallelDims: etp == tp or 1)
            body["expert_tensor_parallel_degree"] = (p.tp, "experts split over tp, as planned")
        else:
            notes.append(
                f"ep {p.ep} with tp {p.tp}: torchtitan 0.3 has no expert tensor parallelism; each expert is whole on "
                f"its rank and ep borrows from dp_shard*cp*tp (efsdp = dp_shard*cp*tp/ep); the cost model has no "
                "knob for that, so this is not re-scored"
            )
    return body


def _tt_compile(view: PlanView, version: str) -> dict:
    """torch.compile when the plan prices fused norms and elementwise chains (torchtitan fuses them
    only by compiling each block); async TP stays off (the plan's TP overlap is Megatron's)."""
    body: dict = {}
    if view.train.norm_impl == "fused":
        body = {"enable": (True, "the plan prices fused norms"), "components": (["model", "loss"], None)}
    if version == "0.3":
        body["enable_async_tensor_parallel"] = (False, None)
    return body


def _tt_data_parallel(view: PlanView, run: AsRun, notes: list[str]) -> dict:
    """ZeRO-3 -> FSDP2 resharding after forward; ZeRO-2 -> FSDP2 keeping weights gathered until
    backward ends; HSDP -> FSDP2 on a 2-D mesh of ``dp_replicate`` replicas × dp/dp_replicate
    shards; ZeRO-0 -> DDP, which torchtitan only applies to a 1-D mesh; ZeRO-1 has no form."""
    p = view.par
    if p.dp == 1:
        return {"data_parallel_replicate_degree": (1, None), "data_parallel_shard_degree": (1, None)}
    if p.zero == 0 and p.tp == p.pp == p.cp == 1:
        return {"data_parallel_replicate_degree": (p.dp, "DDP"), "data_parallel_shard_degree": (1, None)}
    if p.zero in (0, 1):
        why = (
            "torchtitan applies DDP only to a 1-D mesh" if p.zero == 0 else "torchtitan has no optimizer-only sharding"
        )
        notes.append(f"ZeRO-{p.zero}: {why}; exported FSDP2 with reshard_after_forward never (ZeRO-2)")
        run.set(f"FSDP2 ZeRO-2 for ZeRO-{p.zero}", zero=2)
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
        "fsdp_reshard_after_forward": ("default" if p.zero == 3 else "never", None),
    }


def tt_parts(view: PlanView, version: str) -> list[list[str]]:
    """Module names per model chunk: tok_embeddings, layers.i, norm and the output projection
    (``output`` in 0.2, ``lm_head`` in 0.3's decoders)."""
    head = "lm_head" if version == "0.3" else "output"
    parts = []
    for c in view.chunks:
        names = ["tok_embeddings"] if c.has_embedding else []
        names += [f"layers.{i}" for i in range(c.first, c.first + c.num_blocks)]
        parts.append(names + (["norm", head] if c.has_head else []))
    return parts


def _tt_checkpoint(view: PlanView, run: AsRun, notes: list[str]) -> str:
    """torchtitan applies one policy to every block: the strongest the plan uses, never less."""
    pat = recompute_pattern(view)
    mode = "full" if pat.block_full is not None else pat.mode
    note = recompute_note(view, pat, "torchtitan", f"{mode} for every block")
    if note:
        notes.append(note)
        run.set(f"recompute {mode} for all {view.model.num_layers} blocks", recompute=mode)
    stack = view.train.stack
    if mode == "selective" and stack.selective_recompute != "op_policy":
        notes.append(
            "recompute selective: torchtitan's per-op selective AC keeps matmul outputs by its own policy; "
            f"the plan ({stack.name} stack) recomputes the {stack.selective_recompute.replace('_', ' ')}"
        )
        policy = stack.model_copy(update={"selective_recompute": "op_policy"})
        run.set_training("torchtitan's per-op selective AC", stack=policy)
    return mode


def _tt_checkpoint_section(mode: str) -> dict:
    body: dict = {"mode": (mode, None)}
    if mode == "selective":
        body["selective_ac_option"] = ("op", "per-op SAC")
    return body


def _tt_float8(view: PlanView, notes: list[str]) -> dict:
    """fp8 -> torchao float8 training: 0.2 converters ``quantize.linear.float8`` (and
    ``quantize.grouped_mm.float8`` for routed experts, which 0.2 allows only without pp and cp)."""
    if view.train.dtype != "fp8":
        return {}
    p, moe = view.par, view.model.moe is not None
    experts = moe and p.pp == p.cp == 1
    if moe and not experts:
        notes.append("dtype fp8: torchtitan 0.2's float8 grouped GEMMs reject pp/cp > 1; the experts run in bf16")
    converters = ["quantize.linear.float8"] + (["quantize.grouped_mm.float8"] if experts else [])
    out = {
        "model.converters": converters,
        "quantize.linear.float8": {
            "recipe_name": ("rowwise", "torchao float8 recipe"),
            "filter_fqns": (["output"], None),
        },
    }
    if experts:
        out["quantize.grouped_mm.float8"] = {"fqns": (["experts"], "routed experts' grouped GEMMs")}
    return out


def _nested(sections: dict) -> dict:
    """The TOML's content as data: dotted section names nest (``quantize.linear.float8``)."""
    out: dict = {}
    for name, body in sections.items():
        if name == "model.converters" or not body:
            continue
        node = out
        for part in name.split("."):
            node = node.setdefault(part, {})
        node.update({k: v for k, (v, _) in body.items()})
    if "model.converters" in sections:
        out["model"]["converters"] = sections["model.converters"]
    return out


def _toml(sections: dict) -> str:
    """Ints, bools, strings and (nested) string lists as TOML with trailing comments."""
    out = []
    for name, body in sections.items():
        if name == "model.converters" or not body:
            continue
        if name == "model" and "model.converters" in sections:
            body = {**body, "converters": (sections["model.converters"], "torchao float8 training")}
        out.append(f"\n[{name}]")
        for key, (value, comment) in body.items():
            if isinstance(value, list) and value and isinstance(value[0], list):
                text = "[\n" + "".join(f"    {json.dumps(v)},\n" for v in value) + "]"
            else:
                text = json.dumps(value)  # JSON scalars and string lists are valid TOML
            out.append(f"{key} = {text}" + (f"  # {comment}" if comment else ""))
    return "\n".join(out).lstrip("\n") + "\n"
