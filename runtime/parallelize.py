"""Apply a plan to a model: ``apply_plan(model, plan, mesh)``.

The order is fixed, each technique guarded by the plan (torchtitan's parallelize_llama order):

1. pipeline split — keep only this pp rank's chunks, so later steps wrap only what it runs;
   then the chunks are materialised (initialised from the seed);
2. context and expert parallel (runtime.context, runtime.experts) — attention learns this cp
   rank's token positions and gathers K/V over the cp group; each MoE layer keeps this ep rank's
   experts (after initialisation, so they hold the reference's weights) and dispatches tokens by
   all-to-all;
3. tensor + sequence parallel — must see plain ``nn.Linear``/``nn.Embedding`` modules, before any
   wrapper changes module names or parameter types;
4. activation checkpointing, per block — wraps the TP-parallelised block so recompute replays its
   collectives too;
5. ZeRO-2/3 as FSDP2 ``fully_shard`` (local experts, then the block, then the chunk; 16-bit runs
   with FSDP2's mixed-precision policy, others on cached 16-bit casts: runtime.precision) — last of
   the module wrappers: it shards the final parameters (TP's DTensors become 2-D). Dense weights
   on the flattened ``dp_shard_cp`` mesh (dp·cp ranks), or, with ``dp_replicate`` > 1 (HSDP),
   on the 2-D ``("dp_replicate", "dp_shard_cp")`` mesh: FSDP2 then shards within each group of
   dp·cp/dp_replicate ranks and all-reduces gradients across the replicas; experts likewise on
   the expert-data-parallel mesh (dp·cp/ep ranks, runtime.experts);
6. data parallel — for ZeRO 0/1: gradients all-reduced by hand after backward, dense ones over
   dp·cp (the flattened ``dp_cp`` mesh), experts over the dp·cp/ep ranks holding them (ZeRO-1
   additionally shards the optimizer: :meth:`ParallelModel.build_optimizer`);
7. pipeline schedule — ``PipelineStage`` wraps the finished chunks, so it is built last.

Works on any model with the structure of :class:`runtime.model.Transformer`: ``tok_embeddings``,
``layers`` (ModuleDict keyed by block index), ``norm``, ``output``; a model on the meta device is
materialised after the split with its ``init_weights(seed)``, or by ``load(chunk)`` when given
(initial weights from a checkpoint: :func:`runtime.hf_weights.load_part`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from runtime.context import ContextShard, apply_cp
from runtime.experts import ExpertShard, apply_ep, build_expert_mesh, edp_mesh
from runtime.model import Transformer
from runtime.pipeline import build_schedule, split_model
from runtime.plan_io import (
    PlanError,
    read_parallelism,
    runtime_limits,
    validate_plan,
    world_size,
    world_size_arithmetic,
)
from runtime.precision import FP32, CastCache, Precision, cast_buffers, cast_parameters, mp_policy
from runtime.recompute import checkpoint_block
from runtime.step import ParallelModel
from runtime.tp import apply_tp

# Row-major, tp innermost (a TP group is adjacent ranks: one node), then cp, HSDP replicas
# outermost within dp (the planner's order, planner.cost.layer.DpGroups):
# global rank = (((pp_rank * dp_replicate + replica) * dp_shard + shard) * cp + cp_rank) * tp + tp_rank.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
Loader = Callable[[Transformer], None]  # fills a materialised chunk's parameters in place
DP_DIMS = ("dp_replicate", "dp_shard")
DENSE_DIMS = ("dp_replicate", "dp_shard", "cp")  # ranks holding replicas of a dense weight: dp·cp


def build_mesh(plan: dict, device_type: str) -> DeviceMesh:
    """The ("pp", "dp_replicate", "dp_shard", "cp", "tp") mesh of the plan's degrees over the
    default process group (dp_replicate is 1 unless the plan uses HSDP; dp_shard = dp /
    dp_replicate), with the flattened groups created now, on every rank together: "dp" (the
    batch rows, :func:`dp_mesh`) and "dp_cp" (dense gradients, :func:`dense_mesh`)."""
    p = read_parallelism(plan)
    if dist.get_world_size() != world_size(plan):
        raise PlanError(
            f"plan needs {world_size_arithmetic(plan)} ranks; the process group has {dist.get_world_size()}"
        )
    r = p["dp_replicate"]
    shape = (p["pp"], r, p["dp"] // r, p["cp"], p["tp"])
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS)
    dp_mesh(mesh)
    dense_mesh(mesh)
    return mesh


def dp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The data-parallel group (the ranks taking different rows of the batch) as a 1-D mesh:
    ("dp_replicate", "dp_shard") flattened, so a rank's dp index is replicate_rank * dp_shard +
    shard_rank. Cached by the root mesh after the first call (which, creating a process group,
    every rank must make)."""
    return mesh[DP_DIMS]._flatten("dp")


def dense_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """dp·cp ranks that hold the same dense weights (cp ranks see other tokens of the same rows):
    the group dense gradients are averaged over (the planner's ``Parallel.dense_dp``)."""
    return mesh[DENSE_DIMS]._flatten("dp_cp")


def check_supported(plan: dict) -> None:
    """Refuse what the runtime does not implement (``runtime_limits``), before any process starts."""
    for field, message in runtime_limits(plan):
        raise PlanError(f"plan field '{field}': {message}")


def _materialize(part: Transformer, device: torch.device, seed: int | None, load: Loader | None) -> Transformer:
    if any(p.is_meta for p in part.parameters()):
        if seed is None and load is None:
            raise ValueError("apply_plan: a model on the meta device needs seed= (or load=) to initialise")
        part = part.to_empty(device=device)
        if hasattr(part, "tie_weights"):
            part.tie_weights()
        if load is not None:
            load(part)
        elif seed is not None:
            part.init_weights(seed)
        return part
    return part.to(device)


def apply_activation_checkpointing(part: Transformer, stage: dict) -> None:
    """Wrap each block by the stage's per-block recompute mode (none / selective / full)."""
    lo = stage["layers"][0]
    for key in list(part.layers.keys()):
        part.layers[key] = checkpoint_block(part.layers[key], stage["recompute"][int(key) - lo])


def apply_fsdp(
    part: Transformer,
    fsdp_mesh: DeviceMesh,
    reshard_after_forward: bool,
    expert_mesh: DeviceMesh | None = None,
    mp_policy=None,
) -> None:
    """ZeRO-3 (reshard after forward: parameters gathered again in backward) or ZeRO-2 (kept
    unsharded until backward ends); gradients are reduce-scattered either way. ``fsdp_mesh``: 1-D
    (shard over it) or 2-D (HSDP: replicate over dim 0, shard over dim 1, gradients all-reduced
    across dim 0 after the reduce-scatter). Under expert parallelism each local expert is its own
    FSDP unit on ``expert_mesh`` (the expert-data-parallel ranks), wrapped first so the block's
    unit leaves its parameters alone (torchtitan's order). ``mp_policy``: FSDP2's
    MixedPrecisionPolicy (16-bit gathers and compute over fp32 shards: runtime.precision), None for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = mp_policy or MixedPrecisionPolicy()
    for block in part.layers.values():
        if expert_mesh is not None:
            for moe in (m for m in block.modules() if getattr(m, "ep", None) is not None):
                for expert in moe.get_submodule("experts").children():
                    fully_shard(expert, mesh=expert_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
        fully_shard(block, mesh=fsdp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(part, mesh=fsdp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)


def _fsdp_meshes(mesh: DeviceMesh, expert_mesh: DeviceMesh | None, hsdp: bool) -> tuple[DeviceMesh, DeviceMesh | None]:
    """What ZeRO-2/3 shards dense weights and experts over: dp·cp ranks (under HSDP the 2-D
    (replicas, dp·cp / replicas) mesh) and the dp·cp/ep ranks holding the same experts. The
    2-D dense mesh with cp > 1 is its own DeviceMesh over the same ranks (a flattened dimension
    is not sliced together with a root one)."""
    experts = None
    if expert_mesh is not None:
        experts = expert_mesh[("dp_replicate", "edp_shard")] if hsdp else expert_mesh["edp_shard"]
    if mesh.size(MESH_DIMS.index("cp")) == 1:
        return (mesh[DP_DIMS] if hsdp else mesh["dp_shard"]), experts
    if not hsdp:
        return mesh[("dp_shard", "cp")]._flatten("dp_shard_cp"), experts
    pp, r, shard, cp, tp = (mesh.size(i) for i in range(mesh.ndim))
    ranks = mesh.mesh.reshape(pp, r, shard * cp, tp)
    dense = DeviceMesh(mesh.device_type, ranks, mesh_dim_names=("pp", "dp_replicate", "dp_shard_cp", "tp"))
    return dense[("dp_replicate", "dp_shard_cp")], experts


def _apply_zero(parts: list[Transformer], p: dict, mesh: DeviceMesh | None, expert_mesh, precision: Precision):
    """ZeRO-2/3 as FSDP2 (with its mixed-precision policy) when dp·cp > 1, else the 16-bit casts
    of a mixed-precision run (runtime.precision). Returns (fsdp, hsdp, the cast cache or None)."""
    fsdp = p["zero_stage"] >= 2 and p["dp"] * p["cp"] > 1
    hsdp = fsdp and p["dp_replicate"] > 1
    if fsdp:
        assert mesh is not None
        dense, experts = _fsdp_meshes(mesh, expert_mesh, hsdp)
        for part in parts:
            apply_fsdp(part, dense, p["zero_stage"] == 3, experts, mp_policy=mp_policy(precision))
    cache = CastCache(precision.compute) if precision.mixed and not fsdp else None
    if cache is not None:
        for part in parts:
            cast_parameters(part, cache)
    return fsdp, hsdp, cache


def _apply_cp_ep(parts: list[Transformer], p: dict, mesh: DeviceMesh | None) -> DeviceMesh | None:
    """Context parallel: every attention learns its rank's token positions. Expert parallel: each
    MoE layer keeps its rank's experts (after initialisation). Returns the expert mesh (ep > 1)."""
    if p["cp"] > 1:
        assert mesh is not None  # cp > 1 means several ranks
        shard = ContextShard(mesh["cp"].get_group(), mesh.get_local_rank("cp"), p["cp"])
        for part in parts:
            apply_cp(part, shard)
    if p["ep"] == 1:
        return None
    assert mesh is not None
    emesh = build_expert_mesh(mesh, p["ep"])
    moe = parts[0].spec.moe
    if moe is None:
        raise PlanError(f"parallelism.ep = {p['ep']}: model {parts[0].spec.name!r} has no experts")
    eshard = ExpertShard(emesh["ep"].get_group(), emesh.get_local_rank("ep"), p["ep"], moe.num_experts)
    for part in parts:
        apply_ep(part, eshard)
    return emesh


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
    load: Loader | None = None,
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

    # 1. Pipeline split, then materialise (a rank's experts get the reference's weights).
    parts, stage_indices = split_model(model, plan, pp_rank)
    parts = [_materialize(part, device, seed, load) for part in parts]
    if precision.mixed:
        for part in parts:
            cast_buffers(part, precision.compute)
    # 2. Context parallel (token positions, K/V all-gather) and expert parallel (local experts).
    expert_mesh = _apply_cp_ep(parts, p, mesh)
    # 3. Tensor + sequence parallel.
    if p["tp"] > 1:
        assert mesh is not None  # world_size(plan) > 1, checked above
        for part in parts:
            apply_tp(part, mesh["tp"], p["sequence_parallel"])
    # 4. Activation checkpointing, block by block.
    for part, i in zip(parts, stage_indices):
        apply_activation_checkpointing(part, plan["stages"][i])
    # 5. ZeRO-2/3 as FSDP2 over dp·cp (experts: dp·cp/ep); HSDP on the 2-D (replicate, shard) mesh.
    fsdp, hsdp, cache = _apply_zero(parts, p, mesh, expert_mesh, precision)
    # 6. Data parallel by hand for ZeRO 0/1 (dense: dp·cp; experts: dp·cp/ep); tied embeddings.
    pm = ParallelModel(parts, stage_indices, plan, mesh, device, hsdp=hsdp, ep=p["ep"], reduce_dtype=precision.reduce)
    pm.cast_cache = cache
    if p["dp"] * p["cp"] > 1 and not fsdp:
        assert mesh is not None
        pm.dp_group = dense_mesh(mesh).get_group()
        pm.expert_group = edp_mesh(expert_mesh).get_group() if expert_mesh is not None else None
    if p["pp"] > 1 and getattr(getattr(model, "spec", None), "tie_embeddings", False):
        assert mesh is not None
        pm.tied_group = _tied_embedding_group(plan, mesh)
    # 7. Pipeline schedule over the finished chunks.
    if p["pp"] > 1:
        assert mesh is not None
        pm.schedule = build_schedule(
            parts, stage_indices, plan, mesh["pp"].get_group(), device, pm.scaled_loss, precision.compute
        )
    return pm
