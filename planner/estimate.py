"""Score one fully specified plan: step time from the pipeline schedule, memory per stage, MFU.

Step time = longest path of the schedule DAG (planner.schedule) over per-chunk forward/backward
times (planner.layer_cost, with exposed tp/ep/cp communication and per-micro-batch FSDP
exposure) + per rank tail (data-parallel gradient sync not hidden behind the last backward,
and the optimizer step). MFU = model FLOPs / (step time · GPUs · peak) with model FLOPs per
Narayanan et al. 2021 eq. 3 (full attention matrix, no recompute); HFU adds recompute FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardware import comm
from hardware.cluster import ClusterSpec
from models.graph import LayerGraph, build_graph
from models.spec import ModelSpec
from planner import memory as mem
from planner.config import Parallel, Training, check_plan
from planner.layer_cost import LayerCost, graph_costs
from planner.schedule import simulate

# Adam step touches per local parameter: fp32 master r/w (8), m r/w (8), v r/w (8), grad read (4),
# 16-bit weight write (2) = 30 bytes, memory-bound (fused/foreach AdamW kernels).
OPTIMIZER_BYTES_PER_PARAM = 30


@dataclass(frozen=True)
class ChunkInfo:
    index: int  # global model chunk j = c·pp + r
    pp_rank: int
    first_block: int
    num_blocks: int
    has_embedding: bool
    has_head: bool
    layer_ids: tuple[int, ...]  # indices into graph.layers


@dataclass
class Estimate:
    """The scored plan. ``predicted`` is the JSON block the CLI and plan files print."""

    model: ModelSpec
    cluster: ClusterSpec
    train: Training
    par: Parallel
    chunks: list[ChunkInfo]
    predicted: dict
    fits: bool
    over: list[tuple[int, float]] = field(default_factory=list)  # (pp rank, bytes over capacity)
    events: tuple = ()


def split_layers(num_blocks: int, chunks: int) -> list[int]:
    """Blocks per chunk, spreading blocks + embedding + head as evenly as possible, with the
    embedding counted as one layer of the first chunk and the head as one of the last
    (Megatron-LM ``--account-for-{embedding,loss}-in-pipeline-split``). Extra units go to
    middle chunks first. 126 blocks on 16 chunks -> 7, 8 x 14, 7."""
    if chunks == 1:
        return [num_blocks]
    units = num_blocks + 2
    base, extra = divmod(units, chunks)
    order = list(range(1, chunks - 1)) + [0, chunks - 1]
    sizes = [base] * chunks
    for k in order[:extra]:
        sizes[k] += 1
    sizes[0] -= 1
    sizes[-1] -= 1
    for k in (0, chunks - 1):  # tiny models: a chunk may hold only the embedding/head
        while sizes[k] < 0:
            sizes[k] += 1
            sizes[max(range(1, chunks - 1), key=lambda i: sizes[i], default=k)] -= 1
    return sizes


def make_chunks(graph: LayerGraph, par: Parallel) -> list[ChunkInfo]:
    sizes = list(par.stage_layers) if par.stage_layers else split_layers(len(graph.blocks), par.chunks)
    out, start = [], 0
    n_layers = len(graph.layers)
    for j, size in enumerate(sizes):
        ids = list(range(1 + start, 1 + start + size))
        first, last = j == 0, j == len(sizes) - 1
        ids = ([0] if first else []) + ids + ([n_layers - 1] if last else [])
        out.append(ChunkInfo(j, j % par.pp, start, size, first, last, tuple(ids)))
        start += size
    return out


def _chunk_sums(chunk: ChunkInfo, costs: list[LayerCost], par: Parallel) -> tuple[float, float, float, float]:
    """Forward, backward (+recompute) seconds, activation bytes per micro-batch, max remat bytes."""
    f = b = act = remat = 0.0
    for lid in chunk.layer_ids:
        c = costs[lid]
        opt = par.recompute_of(lid - 1) if 0 < lid <= par_blocks(costs) else "none"
        f += c.fwd_s
        b += c.bwd_s + c.recompute_s[opt]
        act += c.act_bytes[opt]
        if opt != "none":
            remat = max(remat, c.remat_bytes)
    return f, b, act, remat


def par_blocks(costs: list[LayerCost]) -> int:
    return len(costs) - 2


@dataclass(frozen=True)
class _RankState:
    dense_params: float
    expert_params: float
    layers: int
    largest_layer_params: float


def _rank_states(chunks: list[ChunkInfo], costs: list[LayerCost], graph: LayerGraph, par: Parallel) -> list[_RankState]:
    out = []
    for r in range(par.pp):
        mine = [c for c in chunks if c.pp_rank == r]
        ids = [lid for c in mine for lid in c.layer_ids]
        dense = sum(costs[i].params_dp_replicas for i in ids)
        total = sum(costs[i].params_local for i in ids)
        # Tied embeddings: a last stage apart from the first keeps its own copy of the matrix
        # (Megatron-LM ``shared_embedding``; its gradient is all-reduced with the first stage's).
        if graph.spec.tie_embeddings and par.pp > 1 and any(c.has_head for c in mine):
            dense += graph.spec.vocab_size * graph.spec.hidden_size / par.tp
            total += graph.spec.vocab_size * graph.spec.hidden_size / par.tp
        largest = max((costs[i].params_local for i in ids), default=0.0)
        out.append(_RankState(dense, total - dense, len(ids), largest))
    return out


def _dp_groups(cluster: ClusterSpec, par: Parallel) -> tuple[int, int, comm.Group, comm.Group]:
    """Dense weights replicate over dp·cp ranks (stride tp); experts over dp·cp/ep (stride tp·ep)."""
    n_dense = par.dp * par.cp
    n_exp = n_dense // par.ep
    return (n_dense, n_exp, comm.group_span(cluster, n_dense, par.tp),
            comm.group_span(cluster, n_exp, par.tp * par.ep))


def _grad_bytes(train: Training, zero: int) -> int:
    if train.dtype == "fp32":
        return 4
    if train.grad_reduce_dtype == "auto":
        return 4 if zero == 3 else 2
    return 4 if train.grad_reduce_dtype == "fp32" else 2


def _collective(fn, cluster, dense_bytes, exp_bytes, g_dense, g_exp) -> float:
    return fn(cluster, dense_bytes, g_dense) + (fn(cluster, exp_bytes, g_exp) if exp_bytes else 0.0)


def _fsdp_exposure(chunk_f: float, chunk_b: float, chunk_params: tuple[float, float], n_layers: int,
                   cluster, train, groups) -> tuple[float, float]:
    """ZeRO-3/FSDP per micro-batch: all-gather weights before forward and before backward,
    reduce-scatter gradients after backward, each prefetched under the neighbouring layer's
    compute (FSDP2 implicit prefetch); the first gather and last reduce-scatter stay exposed."""
    dense, exp = chunk_params
    wb = 4 if train.dtype == "fp32" else 2
    ag = _collective(comm.all_gather_s, cluster, dense * wb, exp * wb, groups[2], groups[3])
    g = _grad_bytes(train, 3)
    rs = _collective(comm.reduce_scatter_s, cluster, dense * g, exp * g, groups[2], groups[3])
    n = max(n_layers, 1)
    fwd = max(0.0, ag - chunk_f) + ag / n
    bwd = max(0.0, ag + rs - chunk_b) + (ag + rs) / n
    return fwd, bwd


def _dp_tail(state: _RankState, f_first: float, b_rank: float, cluster, train, par, groups) -> tuple[float, float]:
    """Exposed end-of-step data-parallel sync and optimizer seconds for one pipeline rank.

    ZeRO-0: all-reduce of gradients, bucketed so it overlaps the last micro-batch's backward
    except the first bucket (PyTorch DDP, Li et al. 2020 §3.2); ZeRO-1/2: reduce-scatter in the
    same window, then an all-gather of updated weights hidden under the next forward
    (Megatron distributed optimizer); ZeRO-2 reduces every micro-batch (DeepSpeed) — added per
    micro-batch by the caller. The optimizer runs on the local shard, memory-bound.
    """
    n_dense, n_exp, g_dense, g_exp = groups
    g = _grad_bytes(train, par.zero)
    wb = 4 if train.dtype == "fp32" else 2
    window = b_rank * (state.layers - 1) / max(state.layers, 1)
    d, e = state.dense_params, state.expert_params
    sync = 0.0
    if par.zero == 0:
        sync = max(0.0, _collective(comm.all_reduce_s, cluster, d * g, e * g, g_dense, g_exp) - window)
    elif par.zero == 1:
        rs = _collective(comm.reduce_scatter_s, cluster, d * g, e * g, g_dense, g_exp)
        sync = max(0.0, rs - window)
    if par.zero in (1, 2):
        ag = _collective(comm.all_gather_s, cluster, d * wb, e * wb, g_dense, g_exp)
        sync += max(0.0, ag - f_first)
    local = d / n_dense + e / n_exp if par.zero >= 1 else d + e
    opt = local * OPTIMIZER_BYTES_PER_PARAM / cluster.gpu.hbm_effective_Bps
    return sync, opt


def _p2p_list(chunks, cluster, train, par, graph) -> list[float]:
    """Activation (and its gradient) transfer between consecutive chunks: b·s/cp·h elements,
    /tp when sequence parallel keeps them split (Megatron scatter-gather optimisation)."""
    nbytes = par.micro_batch * train.seq_len / par.cp * graph.spec.hidden_size * train.act_bytes
    nbytes /= par.tp if par.sequence_parallel else 1
    stride = par.tp * par.cp * par.dp
    # Consecutive stages are `stride` ranks apart; once the pipeline spans nodes the slowest hop
    # (the network) sets the pace, so all transfers are priced on it.
    inter = stride * par.pp > cluster.gpus_per_node
    return [comm.p2p_s(cluster, nbytes, inter_node=inter) for _ in chunks]


def estimate(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel,
             keep_events: bool = False) -> Estimate:
    """Score one plan (raises PlanError for an invalid one). See the module docstring."""
    check_plan(par, train, model, cluster.num_gpus)
    graph = build_graph(model, train.seq_len, train.attention_impl)
    costs = graph_costs(graph, cluster, train, par)
    chunks = make_chunks(graph, par)
    m = par.num_micro_batches(train.global_batch)
    sums = [_chunk_sums(c, costs, par) for c in chunks]
    f = [s[0] for s in sums]
    b = [s[1] for s in sums]
    groups = _dp_groups(cluster, par)
    states = _rank_states(chunks, costs, graph, par)
    if par.zero >= 2:
        _add_per_microbatch_dp(chunks, costs, f, b, cluster, train, par, groups)
    sim = simulate(par.schedule, par.pp, m, par.vpp, f, b, _p2p_list(chunks, cluster, train, par, graph),
                   [s[2] for s in sums], keep_events)
    tails = []
    for r in range(par.pp):
        mine = [c.index for c in chunks if c.pp_rank == r]
        tails.append(_dp_tail(states[r], f[mine[0]], sum(b[j] for j in mine), cluster, train, par, groups))
    step = max(sim.rank_end_s[r] + sum(tails[r]) for r in range(par.pp))
    memories = [_rank_memory(r, chunks, sums, costs, states[r], sim, train, par, graph, groups) for r in range(par.pp)]
    return _finish(model, cluster, train, par, graph, costs, chunks, sim, f, b, tails, step, memories, m)


def _add_per_microbatch_dp(chunks, costs, f, b, cluster, train, par, groups) -> None:
    """ZeRO-2 reduce-scatters each micro-batch's gradients; ZeRO-3 also gathers weights."""
    for c in chunks:
        dense = sum(costs[i].params_dp_replicas for i in c.layer_ids)
        exp = sum(costs[i].params_local for i in c.layer_ids) - dense
        n = len(c.layer_ids)
        if par.zero == 3:
            df, db = _fsdp_exposure(f[c.index], b[c.index], (dense, exp), n, cluster, train, groups)
        else:
            g = _grad_bytes(train, 2)
            rs = _collective(comm.reduce_scatter_s, cluster, dense * g, exp * g, groups[2], groups[3])
            df, db = 0.0, max(0.0, rs - b[c.index] * (n - 1) / n)
        f[c.index] += df
        b[c.index] += db


def _rank_memory(r, chunks, sums, costs, state: _RankState, sim, train, par, graph, groups) -> mem.StageMemory:
    n_dense, n_exp = groups[0], groups[1]
    states = mem.model_state_bytes(state.dense_params, state.expert_params, par.zero, n_dense, n_exp, train.dtype)
    mine = [c for c in chunks if c.pp_rank == r]
    transient = max(sums[c.index][3] for c in mine)
    tokens = par.micro_batch * train.seq_len / par.cp
    if any(c.has_head for c in mine):
        # The loss gradient w.r.t. the fp32 logits is as large as the logits themselves.
        transient += tokens * graph.spec.vocab_size / par.tp * 4
    if par.zero == 3:
        transient += mem.zero3_gather_bytes(state.largest_layer_params, train.dtype)
    buffers = 2 * 25 * 2**20 if par.zero < 3 and par.dp * par.cp > 1 else 0.0  # DDP 25 MiB buckets
    if par.pp > 1:
        buffers += 2 * tokens * graph.spec.hidden_size * train.act_bytes  # p2p send + recv
    return mem.stage_memory(states, sim.peak_inflight_bytes[r], sim.peak_inflight_microbatches[r], transient, buffers)


def _finish(model, cluster, train, par, graph, costs, chunks, sim, f, b, tails, step, memories, m) -> Estimate:
    tokens = train.global_batch * train.seq_len
    n = cluster.num_gpus
    peak_dtype = "bf16" if train.dtype == "fp8" else train.dtype  # MFU against the 16-bit peak (torchtitan)
    peak = cluster.gpu.peak_flops(peak_dtype)
    model_flops = graph.model_flops_per_token() * tokens
    hw_flops = model_flops + _recompute_flops(graph, costs, par) * train.global_batch / (par.micro_batch * par.dp) \
        * par.dp * par.tp * par.cp
    cap = mem.capacity_bytes(cluster.gpu.hbm_bytes)
    stages = []
    for r, mm in enumerate(memories):
        mine = [c for c in chunks if c.pp_rank == r]
        stages.append({
            "pp_rank": r,
            "chunks": [{"chunk": c.index, "layers": [c.first_block, c.first_block + c.num_blocks],
                        "has_embedding": c.has_embedding, "has_head": c.has_head,
                        "fwd_s_per_microbatch": f[c.index], "bwd_s_per_microbatch": b[c.index]} for c in mine],
            "memory": mm.as_dict(),
            "busy_s": sum(f[c.index] + b[c.index] for c in mine) * m,
            "end_s": sim.rank_end_s[r],
            "dp_sync_exposed_s": tails[r][0],
            "optimizer_s": tails[r][1],
        })
    busy = max(s["busy_s"] for s in stages)
    peak_mem = max(mm.total_bytes for mm in memories)
    over = [(r, mm.total_bytes - cap) for r, mm in enumerate(memories) if mm.total_bytes > cap]
    predicted = {
        "step_time_s": step,
        "tokens_per_s": tokens / step,
        "tokens_per_s_per_gpu": tokens / step / n,
        "mfu": model_flops / (step * n * peak),
        "hfu": hw_flops / (step * n * peak),
        "model_tflops_per_gpu": model_flops / step / n / 1e12,
        "hw_tflops_per_gpu": hw_flops / step / n / 1e12,
        "model_flops_per_step": model_flops,
        "peak_memory_bytes": peak_mem,
        "memory_capacity_bytes": cap,
        "num_micro_batches": m,
        "pipeline_bubble_s": sim.makespan_s - busy,
        "time_breakdown_s": {
            "pipeline_s": sim.makespan_s,
            "exposed_comm_in_layers_s": max(sum(costs[i].comm_s for c in chunks if c.pp_rank == r for i in c.layer_ids)
                                            for r in range(par.pp)) * m,
            "dp_sync_exposed_s": max(t[0] for t in tails),
            "optimizer_s": max(t[1] for t in tails),
        },
        "stages": stages,
    }
    return Estimate(model, cluster, train, par, chunks, predicted, not over, over, sim.events)


def _recompute_flops(graph, costs, par) -> float:
    """Extra FLOPs recompute performs per micro-batch on one GPU, summed over the model's blocks."""
    total = 0.0
    for i in range(len(graph.blocks)):
        c = costs[i + 1]
        total += c.hw_flops[par.recompute_of(i)] - c.model_flops
    return total
