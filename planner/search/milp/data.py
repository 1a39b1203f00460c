"""Coefficients of the placement MILP for one outer candidate, taken from the cost model.

Identical consecutive blocks collapse into *runs* (a dense Llama is one run of 80 blocks;
DeepSeek-V3 is a run of 3 dense blocks then a run of 58 MoE blocks), so the MILP decides integer
counts ``n[chunk, run, opt]`` rather than one binary per layer. All coefficients are exactly the
per-layer figures ``planner.cost.estimate`` sums, so the MILP's objective equals ``estimate`` of the
plan it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware.cluster import ClusterSpec
from models.graph import LayerGraph
from planner.config import Parallel, Training
from planner.cost import memory as mem
from planner.cost.chunks import make_chunks
from planner.cost.data_parallel import (
    OPTIMIZER_BYTES_PER_PARAM,
    comm_stage,
    one_block_comm,
    one_block_replica_ar,
    tied_copy_comm,
    tied_params,
    zero3_overlap,
)
from planner.cost.estimate import p2p_list
from planner.cost.layer import LayerCost
from planner.cost.schedule import rank_order


@dataclass(frozen=True)
class Run:
    start: int  # first block index
    length: int
    cost: LayerCost


@dataclass
class PlacementData:
    par: Parallel
    train: Training
    m: int  # micro-batches per step
    n_chunks: int
    runs: list[Run]
    options: tuple[str, ...]  # recompute options allowed
    emb: LayerCost
    head: LayerCost
    p2p_s: list[float]
    orders: list[tuple[tuple[str, int, int], ...]]  # per pp rank
    ag1: float
    rs1: float
    ar1: float
    rep1: float  # HSDP: the largest block's all-reduce across replicas
    tied_comm: tuple[float, float, float, float]
    tied_params: float
    state_bytes_per_dense: float  # model-state bytes per dense parameter after ZeRO sharding
    state_bytes_per_expert: float
    opt_s_per_dense: float  # optimizer seconds per dense parameter on this rank
    opt_s_per_expert: float
    gather_bytes_per_param: float  # ZeRO-3 transient bytes per parameter of the largest layer
    head_transient_bytes: float
    buffer_bytes: float
    capacity_bytes: float
    overlap_tax: float  # step seconds per second of collective hidden under compute (comm.exposed_s)
    fragmentation: float  # allocator reserve over live bytes (cost.memory.fragmentation)
    zero3_overlap: float  # share of a phase's compute ZeRO-3 collectives hide under (stack profile)
    comm_stage: int  # the ZeRO stage whose traffic is paid (cost.data_parallel.comm_stage)
    dp_grad_overlap: bool  # gradient sync under the last backward (stack profile), else after it

    def rank_of(self, chunk: int) -> int:
        return chunk % self.par.pp

    def chunks_of(self, rank: int) -> list[int]:
        return [c * self.par.pp + rank for c in range(self.par.vpp)]


def _fixed_buffers(graph: LayerGraph, train: Training, par: Parallel, tokens: float) -> tuple[float, bool]:
    """Placement-independent bytes of every rank's memory rows (DDP buckets, p2p buffers, a
    per-matrix ZeRO-3 stack's gather buffers: cost.estimate._rank_memory), and whether ZeRO-3
    gathers whole blocks (then a per-layer transient, ``gather_bytes_per_param``)."""
    buffers = 2 * 25 * 2**20 if par.zero < 3 and par.dense_dp > 1 else 0.0
    if par.pp > 1:
        buffers += 2 * tokens * graph.spec.hidden_size * train.act_bytes
    per_matrix = mem.zero3_parameter_gather_bytes(mem.largest_matrix_params(graph, par), train)
    gathers = par.zero == 3 and not mem.holds_unsharded(train, par)
    if gathers and per_matrix is not None:
        buffers += per_matrix
    return buffers, gathers and per_matrix is None


def block_runs(graph: LayerGraph, costs: list[LayerCost]) -> list[Run]:
    runs: list[Run] = []
    for i, layer in enumerate(graph.blocks):
        if runs and graph.blocks[runs[-1].start].signature == layer.signature:
            runs[-1] = Run(runs[-1].start, runs[-1].length + 1, runs[-1].cost)
        else:
            runs.append(Run(i, 1, costs[i + 1]))
    return runs


def build_data(
    graph: LayerGraph,
    costs: list[LayerCost],
    cluster: ClusterSpec,
    train: Training,
    par: Parallel,
    options: tuple[str, ...],
) -> PlacementData:
    m = par.num_micro_batches(train.global_batch)
    n = par.chunks
    chunks = make_chunks(graph, par.with_(stage_layers=None, recompute="none"))
    w, g, o = mem.bytes_per_param(train, par.zero)
    n_dense, n_exp = par.dense_shard, par.expert_shard

    def shard(per_param: float, stage: int, group: int) -> float:
        return per_param / group if par.zero >= stage else per_param

    held = mem.unsharded_bytes_per_param(train, par)
    ws = mem.weight_shard_stage(train)
    per_dense = shard(w, ws, n_dense) + shard(g, 2, n_dense) + shard(o, 1, n_dense) + held
    per_exp = shard(w, ws, n_exp) + shard(g, 2, n_exp) + shard(o, 1, n_exp) + held
    bw = cluster.gpu.hbm_effective_Bps
    opt_d = OPTIMIZER_BYTES_PER_PARAM / bw / (n_dense if par.zero >= 1 else 1)
    opt_e = OPTIMIZER_BYTES_PER_PARAM / bw / (n_exp if par.zero >= 1 else 1)
    tokens = par.micro_batch * train.seq_len / par.cp
    buffers, block_gathers = _fixed_buffers(graph, train, par, tokens)
    ag1, rs1, ar1 = one_block_comm(costs)
    return PlacementData(
        par=par,
        train=train,
        m=m,
        n_chunks=n,
        runs=block_runs(graph, costs),
        options=options,
        emb=costs[0],
        head=costs[-1],
        p2p_s=p2p_list(chunks, cluster, train, par, graph),
        orders=[rank_order(par.schedule, r, par.pp, m, par.vpp) for r in range(par.pp)],
        ag1=ag1,
        rs1=rs1,
        ar1=ar1,
        rep1=one_block_replica_ar(costs),
        tied_comm=tied_copy_comm(graph, cluster, train, par),
        tied_params=tied_params(graph, par),
        state_bytes_per_dense=per_dense,
        state_bytes_per_expert=per_exp,
        opt_s_per_dense=opt_d,
        opt_s_per_expert=opt_e,
        gather_bytes_per_param=mem.zero3_gather_bytes(1.0, train.dtype) if block_gathers else 0.0,
        head_transient_bytes=mem.loss_transient_bytes(tokens, graph.spec.vocab_size, par.tp, train),
        buffer_bytes=buffers,
        capacity_bytes=mem.capacity_bytes(cluster.gpu.hbm_bytes, train),
        overlap_tax=cluster.gpu.efficiency.overlap_tax,
        fragmentation=mem.fragmentation(train),
        zero3_overlap=zero3_overlap(graph, train, par),
        comm_stage=comm_stage(train, par),
        dp_grad_overlap=train.stack.dp_grad_overlap,
    )
