"""Apply a plan to a model: ``apply_plan(model, plan, mesh)``.

The order is fixed, each technique guarded by the plan (torchtitan's parallelize_llama order):

1. pipeline split — keep only this pp rank's chunks, so later steps wrap only what it runs;
2. tensor + sequence parallel — must see plain ``nn.Linear``/``nn.Embedding`` modules, before any
   wrapper changes module names or parameter types;
3. activation checkpointing, per block — wraps the TP-parallelised block so recompute replays its
   collectives too;
4. ZeRO-2/3 as FSDP2 ``fully_shard`` (per block, then the chunk; 16-bit runs with FSDP2's
   mixed-precision policy, others on cached 16-bit casts: runtime.precision) — last of the module wrappers:
   it shards the final parameters (TP's DTensors become 2-D). On the 1-D ``dp_shard`` mesh
   dimension, or, with ``dp_replicate`` > 1 (HSDP), on the 2-D ``("dp_replicate", "dp_shard")``
   mesh: FSDP2 then shards within each group of dp_shard ranks and all-reduces gradients across
   the replicas;
5. data parallel — for ZeRO 0/1: gradients all-reduced by hand over the whole dp group (the
   flattened ``dp`` mesh) after backward (ZeRO-1 additionally shards the optimizer:
   :meth:`ParallelModel.build_optimizer`);
6. pipeline schedule — ``PipelineStage`` wraps the finished chunks, so it is built last.

Works on any model with the structure of :class:`runtime.model.Transformer`: ``tok_embeddings``,
``layers`` (ModuleDict keyed by block index), ``norm``, ``output``; a model on the meta device is
materialised after the split with its ``init_weights(seed)``.

Not implemented, refused with a message: context parallel (cp > 1), expert parallel (ep > 1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from runtime.model import Transformer
from runtime.pipeline import build_schedule, split_model
from runtime.plan_io import PlanError, read_parallelism, validate_plan, world_size, world_size_arithmetic
from runtime.precision import FP32, CastCache, Precision, cast_buffers, cast_parameters, mp_policy
from runtime.recompute import checkpoint_block
from runtime.step import ParallelModel
from runtime.tp import apply_tp

# Row-major, tp innermost (a TP group is adjacent ranks: one node), HSDP replicas outermost
# within dp: global rank = ((pp_rank * dp_replicate + replica) * dp_shard + shard) * tp + tp_rank.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
DP_DIMS = ("dp_replicate", "dp_shard")


def build_mesh(plan: dict, device_type: str) -> DeviceMesh:
    """The ("pp", "dp_replicate", "dp_shard", "tp") mesh of the plan's degrees over the default
    process group (dp_replicate is 1 unless the plan uses HSDP; dp_shard = dp / dp_replicate),
    with the two dp dimensions also flattened into "dp" (see :func:`dp_mesh`)."""
    p = read_parallelism(plan)
    if dist.get_world_size() != world_size(plan):
        raise PlanError(
            f"plan needs {world_size_arithmetic(plan)} ranks; the process group has {dist.get_world_size()}"
        )
    r = p["dp_replicate"]
    mesh = init_device_mesh(device_type, (p["pp"], r, p["dp"] // r, p["tp"]), mesh_dim_names=MESH_DIMS)
    dp_mesh(mesh)  # creates the flattened group now, on every rank together
    return mesh


def dp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The whole data-parallel group as a 1-D mesh: ("dp_replicate", "dp_shard") flattened, so a
    rank's dp index is replicate_rank * dp_shard + shard_rank. Cached by the root mesh after the
    first call (which, creating a process group, every rank must make)."""
    return mesh[DP_DIMS]._flatten("dp")


def check_supported(plan: dict) -> None:
    """Refuse what the runtime does not implement, before any process starts."""
    p = plan["parallelism"]
    if p["cp"] > 1:
        raise PlanError(f"parallelism.cp = {p['cp']}: the runtime does not implement context parallel")
    if p["ep"] > 1:
        raise PlanError(f"parallelism.ep = {p['ep']}: the runtime does not implement expert parallel")


def _materialize(part: Transformer, device: torch.device, seed: int | None) -> Transformer:
    if any(p.is_meta for p in part.parameters()):
        if seed is None:
            raise ValueError("apply_plan: a model on the meta device needs seed= to initialise")
        part = part.to_empty(device=device)
        if hasattr(part, "tie_weights"):
            part.tie_weights()
        part.init_weights(seed)
        return part
    return part.to(device)


def apply_activation_checkpointing(part: Transformer, stage: dict) -> None:
    """Wrap each block by the stage's per-block recompute mode (none / selective / full)."""
    lo = stage["layers"][0]
    for key in list(part.layers.keys()):
        part.layers[key] = checkpoint_block(part.layers[key], stage["recompute"][int(key) - lo])


def apply_fsdp(part: Transformer, fsdp_mesh: DeviceMesh, reshard_after_forward: bool, mp_policy=None) -> None:
    """ZeRO-3 (reshard after forward: parameters gathered again in backward) or ZeRO-2 (kept
    unsharded until backward ends); gradients are reduce-scattered either way. ``fsdp_mesh``: 1-D
    (shard over it) or 2-D (HSDP: replicate over dim 0, shard over dim 1, gradients all-reduced
    across dim 0 after the reduce-scatter). ``mp_policy``: FSDP2's MixedPrecisionPolicy (16-bit
    gathers and compute over fp32 shards: runtime.precision), None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    for block in part.layers.values():
        fully_shard(block, mesh=fsdp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(part, mesh=fsdp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)


def _tied_embedding_group(plan: dict, mesh: DeviceMesh):
    """A group per (dp, tp) coordinate joining the ranks of the first and last pipeline chunks.
    Every rank creates every group (``new_group`` is collective) and keeps its own."""
    first, last = plan["stages"][0]["pp_rank"], plan["stages"][-1]["pp_rank"]
    ranks = mesh.mesh.reshape(mesh.size(0), -1, mesh.size(mesh.ndim - 1))  # [pp, dp, tp] global ranks
    mine = None
    for d in range(ranks.shape[1]):
        for t in range(ranks.shape[2]):
            members = [int(ranks[first, d, t]), int(ranks[last, d, t])]
            group = dist.new_group(members)
            if dist.get_rank() in members:
                mine = group
    return mine


def apply_plan(
    model: Transformer,
    plan: dict,
    mesh: DeviceMesh | None = None,
    *,
    device=None,
    seed: int | None = None,
    precision: Precision = FP32,
) -> ParallelModel:
    """Parallelise ``model`` as ``plan`` says, for this rank of ``mesh`` (see module doc).
    ``precision``: compute and reduce dtypes over the model's fp32 parameters (runtime.precision)."""
    validate_plan(plan)
    check_supported(plan)
    if mesh is None and world_size(plan) > 1:
        raise PlanError(f"plan needs {world_size_arithmetic(plan)} ranks but no device mesh was given")
    p = read_parallelism(plan)
    device = torch.device(device or (mesh.device_type if mesh is not None else "cpu"))
    pp_rank = mesh.get_local_rank("pp") if mesh is not None else 0

    # 1. Pipeline split.
    parts, stage_indices = split_model(model, plan, pp_rank)
    parts = [_materialize(part, device, seed) for part in parts]
    if precision.mixed:
        for part in parts:
            cast_buffers(part, precision.compute)
    # 2. Tensor + sequence parallel.
    if p["tp"] > 1:
        assert mesh is not None  # world_size(plan) > 1, checked above
        for part in parts:
            apply_tp(part, mesh["tp"], p["sequence_parallel"])
    # 3. Activation checkpointing, block by block.
    for part, i in zip(parts, stage_indices):
        apply_activation_checkpointing(part, plan["stages"][i])
    # 4. ZeRO-2/3 as FSDP2; HSDP on the 2-D (replicate, shard) mesh.
    fsdp = p["zero_stage"] >= 2 and p["dp"] > 1
    hsdp = fsdp and p["dp_replicate"] > 1
    if fsdp:
        assert mesh is not None
        fsdp_mesh = mesh[DP_DIMS] if hsdp else mesh["dp_shard"]
        for part in parts:
            apply_fsdp(part, fsdp_mesh, reshard_after_forward=p["zero_stage"] == 3, mp_policy=mp_policy(precision))
    cache = CastCache(precision.compute) if precision.mixed and not fsdp else None
    if cache is not None:
        for part in parts:
            cast_parameters(part, cache)
    # 5. Data parallel by hand for ZeRO 0/1 (the whole dp group); tied embeddings over stages.
    pm = ParallelModel(parts, stage_indices, plan, mesh, device, hsdp=hsdp, reduce_dtype=precision.reduce)
    pm.cast_cache = cache
    if p["dp"] > 1 and not fsdp:
        assert mesh is not None
        pm.dp_group = dp_mesh(mesh).get_group()
    if p["pp"] > 1 and getattr(getattr(model, "spec", None), "tie_embeddings", False):
        assert mesh is not None
        pm.tied_group = _tied_embedding_group(plan, mesh)
    # 6. Pipeline schedule over the finished chunks.
    if p["pp"] > 1:
        assert mesh is not None
        pm.schedule = build_schedule(parts, stage_indices, plan, mesh["pp"].get_group(), device, pm.scaled_loss)
    return pm
