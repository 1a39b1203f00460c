"""Data parallelism's time: ZeRO-2/3 collectives each micro-batch, the end-of-step gradient sync
(DDP, ZeRO-1, HSDP), the optimizer step, and the tied-embedding copy's share.

Every exposure is ``hardware.comm.exposed_s(comm, window, tax) = max(comm − window, tax·comm)``:
the excess over the compute it hides under, at least the overlap tax (the hidden part slows the
compute beside it). The placement MILP (planner/search/milp/placement.py) prices the same terms
with the same coefficients, so its objective equals ``estimate``'s step time.
"""

from __future__ import annotations

from hardware import comm
from hardware.cluster import ClusterSpec
from models.graph import LayerGraph
from planner.config import Parallel, Training
from planner.cost.chunks import ChunkInfo
from planner.cost.layer import LayerCost, _Ctx, dp_comm_s
from planner.cost.memory import holds_unsharded, largest_matrix_params

# Adam step touches per local parameter: fp32 master r/w (8), m r/w (8), v r/w (8), grad read (4),
# 16-bit weight write (2) = 30 bytes, memory-bound (fused/foreach AdamW kernels).
OPTIMIZER_BYTES_PER_PARAM = 30
NO_COMM = (0.0, 0.0, 0.0, 0.0)


def one_block_comm(costs: list[LayerCost]) -> tuple[float, float, float]:
    """(all-gather, reduce-scatter, all-reduce) seconds of the largest block: the share of a
    chunk's data-parallel traffic that cannot hide (the first gather before any compute, the
    last bucket after the last backward)."""
    blocks = costs[1:-1]
    return (max(c.dp_ag_s for c in blocks), max(c.dp_rs_s for c in blocks), max(c.dp_ar_s for c in blocks))


def one_block_replica_ar(costs: list[LayerCost]) -> float:
    """HSDP: the largest block's all-reduce across replicas, the last one after the last backward."""
    return max(c.dp_rep_ar_s for c in costs[1:-1])


def tied_params(graph: LayerGraph, par: Parallel) -> float:
    """Parameters of the embedding copy on a separate last stage (tied embeddings, Megatron)."""
    return graph.spec.vocab_size * graph.spec.hidden_size / par.tp if graph.spec.tie_embeddings and par.pp > 1 else 0.0


def tied_copy_comm(
    graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel
) -> tuple[float, float, float, float]:
    """DP collectives (gather, scatter, all-reduce, replica all-reduce) of the embedding copy a
    separate last stage keeps with tied embeddings."""
    if not (graph.spec.tie_embeddings and par.pp > 1):
        return NO_COMM
    return dp_comm_s(0.0, tied_params(graph, par), _Ctx(cluster, train, par, graph.spec))


def comm_stage(train: Training, par: Parallel) -> int:
    """The ZeRO stage whose data-parallel traffic the plan pays: ``par.zero``, except where the
    stack communicates once per step like ZeRO-1 (a reduce-scatter under the last backward, a
    gather under the next forward): ZeRO-3 that keeps the gathered weights and fp32 gradients
    under pipeline parallelism (``cost.memory.holds_unsharded``: torchtitan, whose pipeline stage
    turns gradient sync off for every micro-batch but the last), and ZeRO-2 in a stack that
    reduces only at the end of the step (``zero2_reduce_every_microbatch`` off: Megatron's
    distributed optimizer with sharded gradients, Meta's FSDP)."""
    if par.zero == 3 and holds_unsharded(train, par):
        return 1
    if par.zero == 2 and not train.stack.zero2_reduce_every_microbatch:
        return 1
    return par.zero


def zero3_overlap(graph: LayerGraph, train: Training, par: Parallel) -> float:
    """Share of a phase's compute that ZeRO-3 gathers hide under: 1 when the stack prefetches the
    next block whole (FSDP); with a prefetch of P parameters in flight (DeepSpeed's
    ``stage3_prefetch_bucket_size``), min(1, P / the largest local weight matrix): a gather for a
    larger matrix cannot start a matrix ahead, so it mostly waits in line with the compute."""
    prefetch = train.stack.zero3.prefetch_elements
    if prefetch is None:
        return 1.0
    largest = largest_matrix_params(graph, par)
    return min(1.0, prefetch / largest) if largest else 1.0


def add_per_microbatch_dp(
    chunks: list[ChunkInfo],
    costs: list[LayerCost],
    f: list[float],
    b: list[float],
    train: Training,
    par: Parallel,
    tax: float,
    w: float = 1.0,
) -> list[float]:
    """ZeRO-3/FSDP: all-gather weights before forward and again before backward, reduce-scatter
    gradients after, layer by layer (the caller skips it when ``comm_stage`` is below 2),
    prefetched under the chunk's compute: exposed = ``comm.exposed_s`` over the share of the
    phase's compute the stack's prefetch overlaps (``w``, ``zero3_overlap``) + one block's
    gather/scatter. ZeRO-2 reduce-scatters every micro-batch's gradients
    under its backward (DeepSpeed). Under HSDP these run in the shard group
    (``LayerCost.dp_ag_s``/``dp_rs_s``). Returns the seconds added to each chunk."""
    ag1, rs1, _ = one_block_comm(costs)
    w = w if par.zero == 3 else 1.0
    added = [0.0] * len(chunks)
    for c in chunks:
        ag = sum(costs[i].dp_ag_s for i in c.layer_ids)
        rs = sum(costs[i].dp_rs_s for i in c.layer_ids)
        ef = comm.exposed_s(ag, w * f[c.index], tax) + ag1 if par.zero == 3 else 0.0
        eb = (
            comm.exposed_s(ag + rs if par.zero == 3 else rs, w * b[c.index], tax)
            + (ag1 if par.zero == 3 else 0.0)
            + rs1
        )
        f[c.index] += ef
        b[c.index] += eb
        added[c.index] = ef + eb
    return added


def dp_tail(
    rank_layers: list[int],
    f_first: float,
    b_rank: float,
    costs: list[LayerCost],
    tied: tuple[float, float, float, float],
    par: Parallel,
    tax: float,
    grad_overlap: bool = True,
    stage: int | None = None,
) -> float:
    """Exposed end-of-step data-parallel sync seconds of one pipeline rank.

    ``grad_overlap`` (the stack's ``dp_grad_overlap``): gradient buckets reduce under the
    remaining backward; without it (Megatron-LM's LocalDDP, DeepSpeed without ``overlap_comm``)
    the reduction starts after the last backward and all of it is exposed. ``stage``: the stage
    whose traffic is paid (``comm_stage``; default ``par.zero``).

    ZeRO-0: gradient all-reduce in buckets under the last micro-batch's backward (PyTorch DDP,
    Li et al. 2020 §3.2): exposed = exposed_s(AR, B) + the last bucket. ZeRO-1: reduce-scatter
    likewise; ZeRO-1/2: all-gather of the updated weights under the next forward (Megatron
    distributed optimizer): exposed_s(AG, F_first). HSDP (``dp_replicate`` > 1): the gradient
    shards accumulate over the micro-batches and are all-reduced across the replicas once, layer
    by layer under the last backward (FSDP2 ``set_requires_all_reduce(False)`` until the last
    micro-batch): exposed_s(AR_replicas, B) + the last layer's.
    """
    ag1, rs1, ar1 = one_block_comm(costs)
    ag = sum(costs[i].dp_ag_s for i in rank_layers) + tied[0]
    rs = sum(costs[i].dp_rs_s for i in rank_layers) + tied[1]
    ar = sum(costs[i].dp_ar_s for i in rank_layers) + tied[2]
    sync = 0.0
    window = b_rank if grad_overlap else 0.0
    z = par.zero if stage is None else stage
    if par.dense_dp > 1:
        if z == 0:
            sync = comm.exposed_s(ar, window, tax) + (ar1 if grad_overlap else 0.0)
        elif z == 1:
            sync = comm.exposed_s(rs, window, tax) + (rs1 if grad_overlap else 0.0)
        if z in (1, 2):
            sync += comm.exposed_s(ag, f_first, tax)
    if par.dp_replicate > 1:
        rep = sum(costs[i].dp_rep_ar_s for i in rank_layers) + tied[3]
        sync += comm.exposed_s(rep, b_rank, tax) + one_block_replica_ar(costs)
    return sync


def optimizer_s(
    rank_layers: list[int], costs: list[LayerCost], tied: float, par: Parallel, cluster: ClusterSpec
) -> float:
    """Adam on the local (ZeRO-sharded) parameters, memory-bound at 30 bytes per parameter."""
    dense = sum(costs[i].params_dp_replicas for i in rank_layers) + tied
    exp = sum(costs[i].params_local - costs[i].params_dp_replicas for i in rank_layers)
    local = dense / par.dense_shard + exp / par.expert_shard if par.zero >= 1 else dense + exp
    return local * OPTIMIZER_BYTES_PER_PARAM / cluster.gpu.hbm_effective_Bps
