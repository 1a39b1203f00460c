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
from planner.schedule import inflight_peaks, simulate

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
    critical: tuple = ()  # per pipeline rank, the schedule's longest path to its last op


def split_layers(num_blocks: int, chunks: int) -> list[int]:
    """Blocks per chunk when the plan does not say: as even as the blocks allow, the embedding
    on the first chunk and the head on the last (Megatron-LM's default, which needs
    ``num_layers % (pp·vpp) == 0``; torchtitan's ``generate_split_points``). When the blocks do
    not divide, the extra blocks go to middle chunks first, so the first and last chunks, which
    also hold the embedding and head, get the fewer: 126 blocks on 16 chunks -> 7, 8 x 14, 7,
    Llama 3 405B's split (Dubey et al. 2024, §3.3.2: "we reduce one Transformer layer each from
    the first and the last stages"). Counting the embedding and head as a layer each
    (``split_counting_ends``) would instead put 3 blocks on middle chunks of 1T GPT's 128 blocks
    on 64 stages, where Megatron runs 2 everywhere (Narayanan et al. 2021, Table 1)."""
    base, extra = divmod(num_blocks, chunks)
    sizes = [base] * chunks
    middle_first = list(range(1, chunks - 1)) + ([0, chunks - 1] if chunks > 1 else [0])
    for k in middle_first[:extra]:
        sizes[k] += 1
    return sizes


def split_counting_ends(num_blocks: int, chunks: int) -> list[int]:
    """Blocks per chunk counting the embedding as one layer of the first chunk and the head as one
    of the last (Megatron-LM ``--account-for-{embedding,loss}-in-pipeline-split``), extra units
    to middle chunks first: 96 blocks on 16 chunks -> 5, 7, 7, 6, ..., 6, 5. The placement MILP
    widens interleaved chunk sizes to include it, so the ends can be balanced."""
    if chunks == 1:
        return [num_blocks]
    sizes = split_layers(num_blocks + 2, chunks)
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
        if any(c.has_head for c in mine):
            dense += tied_params(graph, par)
            total += tied_params(graph, par)
        largest = max((costs[i].params_local for i in ids), default=0.0)
        out.append(_RankState(dense, total - dense, len(ids), largest))
    return out


def one_block_comm(costs: list[LayerCost]) -> tuple[float, float, float]:
    """(all-gather, reduce-scatter, all-reduce) seconds of the largest block: the share of a
    chunk's data-parallel traffic that cannot hide (the first gather before any compute, the
    last bucket after the last backward)."""
    blocks = costs[1:-1]
    return (max(c.dp_ag_s for c in blocks), max(c.dp_rs_s for c in blocks), max(c.dp_ar_s for c in blocks))


def tied_copy_comm(graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> tuple[float, float, float]:
    """DP collectives of the embedding copy a separate last stage keeps with tied embeddings."""
    if not (graph.spec.tie_embeddings and par.pp > 1):
        return 0.0, 0.0, 0.0
    from planner.layer_cost import _Ctx, _dp_comm_s

    return _dp_comm_s(0.0, graph.spec.vocab_size * graph.spec.hidden_size / par.tp, _Ctx(cluster, train, par, graph.spec))


def tied_params(graph: LayerGraph, par: Parallel) -> float:
    """Parameters of the embedding copy on a separate last stage (tied embeddings, Megatron)."""
    return graph.spec.vocab_size * graph.spec.hidden_size / par.tp if graph.spec.tie_embeddings and par.pp > 1 else 0.0


def add_per_microbatch_dp(chunks, costs, f, b, par: Parallel, tax: float) -> list[float]:
    """ZeRO-3/FSDP: all-gather weights before forward and again before backward, reduce-scatter
    gradients after, layer by layer, prefetched under the chunk's compute (FSDP2 implicit
    prefetch): exposed = ``comm.exposed_s`` over the chunk's compute (the excess, at least the
    overlap tax) + one block's gather/scatter. ZeRO-2 reduce-scatters every micro-batch's
    gradients under its backward (DeepSpeed). Returns the seconds added to each chunk."""
    ag1, rs1, _ = one_block_comm(costs)
    added = [0.0] * len(chunks)
    for c in chunks:
        ag = sum(costs[i].dp_ag_s for i in c.layer_ids)
        rs = sum(costs[i].dp_rs_s for i in c.layer_ids)
        ef = comm.exposed_s(ag, f[c.index], tax) + ag1 if par.zero == 3 else 0.0
        eb = comm.exposed_s(ag + rs if par.zero == 3 else rs, b[c.index], tax) + (ag1 if par.zero == 3 else 0.0) + rs1
        f[c.index] += ef
        b[c.index] += eb
        added[c.index] = ef + eb
    return added


def dp_tail(rank_layers: list[int], f_first: float, b_rank: float, costs, tied, par: Parallel,
            tax: float) -> float:
    """Exposed end-of-step data-parallel sync seconds of one pipeline rank.

    ZeRO-0: gradient all-reduce in buckets under the last micro-batch's backward (PyTorch DDP,
    Li et al. 2020 §3.2): exposed = exposed_s(AR, B) + the last bucket. ZeRO-1: reduce-scatter
    likewise; ZeRO-1/2: all-gather of the updated weights under the next forward (Megatron
    distributed optimizer): exposed_s(AG, F_first). ``exposed_s(m, c) = max(m − c, tax·m)``
    (hardware.comm: the hidden part slows the compute beside it).
    """
    ag1, rs1, ar1 = one_block_comm(costs)
    ag = sum(costs[i].dp_ag_s for i in rank_layers) + tied[0]
    rs = sum(costs[i].dp_rs_s for i in rank_layers) + tied[1]
    ar = sum(costs[i].dp_ar_s for i in rank_layers) + tied[2]
    sync = 0.0
    if par.dp * par.cp > 1:
        if par.zero == 0:
            sync = comm.exposed_s(ar, b_rank, tax) + ar1
        elif par.zero == 1:
            sync = comm.exposed_s(rs, b_rank, tax) + rs1
        if par.zero in (1, 2):
            sync += comm.exposed_s(ag, f_first, tax)
    return sync


def optimizer_s(rank_layers, costs, tied_params: float, par: Parallel, cluster) -> float:
    """Adam on the local (ZeRO-sharded) parameters, memory-bound at 30 bytes per parameter."""
    n_dense = par.dp * par.cp
    dense = sum(costs[i].params_dp_replicas for i in rank_layers) + tied_params
    exp = sum(costs[i].params_local - costs[i].params_dp_replicas for i in rank_layers)
    local = dense / n_dense + exp / (n_dense // par.ep) if par.zero >= 1 else dense + exp
    return local * OPTIMIZER_BYTES_PER_PARAM / cluster.gpu.hbm_effective_Bps


def p2p_list(chunks, cluster, train, par, graph) -> list[float]:
    """Activation (and its gradient) transfer between consecutive chunks: b·s/cp·h elements,
    /tp when sequence parallel keeps them split (Megatron scatter-gather optimisation)."""
    nbytes = par.micro_batch * train.seq_len / par.cp * graph.spec.hidden_size * train.act_bytes
    nbytes /= par.tp if par.sequence_parallel else 1
    stride = par.tp * par.cp * par.dp
    # Consecutive stages are `stride` ranks apart; once the pipeline spans nodes the slowest hop
    # (the network) sets the pace, so all transfers are priced on it.
    inter = stride * par.pp > cluster.gpus_per_node
    return [comm.p2p_s(cluster, nbytes, inter_node=inter) for _ in chunks]


def _prepare(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel):
    """What both the memory check and the timing need: graph, layer costs, chunks, per-chunk sums."""
    check_plan(par, train, model, cluster.num_gpus)
    graph = build_graph(model, train.seq_len, train.attention_impl, train.norm_impl)
    costs = graph_costs(graph, cluster, train, par)
    chunks = make_chunks(graph, par)
    sums = [_chunk_sums(c, costs, par) for c in chunks]
    return graph, costs, chunks, sums, _rank_states(chunks, costs, graph, par)


def fits_in_memory(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel) -> bool:
    """Whether ``estimate`` would report the plan as fitting, without timing the schedule (the
    in-flight activations depend on each rank's order only): the planner's heuristics try the
    least recompute that fits and skip the simulations of plans that do not."""
    graph, costs, chunks, sums, states = _prepare(model, cluster, train, par)
    m = par.num_micro_batches(train.global_batch)
    peak, inflight = inflight_peaks(par.schedule, par.pp, m, par.vpp, [s[2] for s in sums])
    cap = mem.capacity_bytes(cluster.gpu.hbm_bytes)
    return all(_rank_memory(r, chunks, sums, states[r], peak[r], inflight[r], train, par, graph).total_bytes <= cap
               for r in range(par.pp))


def estimate(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel,
             keep_events: bool = False) -> Estimate:
    """Score one plan (raises PlanError for an invalid one). See the module docstring."""
    graph, costs, chunks, sums, states = _prepare(model, cluster, train, par)
    m = par.num_micro_batches(train.global_batch)
    f = [s[0] for s in sums]
    b = [s[1] for s in sums]
    tax = cluster.gpu.efficiency.overlap_tax
    added = add_per_microbatch_dp(chunks, costs, f, b, par, tax) if par.zero >= 2 else [0.0] * len(chunks)
    zero_s = [m * sum(added[c.index] for c in chunks if c.pp_rank == r) for r in range(par.pp)]
    sim = simulate(par.schedule, par.pp, m, par.vpp, f, b, p2p_list(chunks, cluster, train, par, graph),
                   [s[2] for s in sums], keep_events)
    tied = tied_copy_comm(graph, cluster, train, par)
    tails = []
    for r in range(par.pp):
        mine = [c for c in chunks if c.pp_rank == r]
        layers = [i for c in mine for i in c.layer_ids]
        has_head = any(c.has_head for c in mine)
        sync = dp_tail(layers, f[mine[0].index], sum(sums[c.index][1] for c in mine), costs,
                       tied if has_head else (0.0, 0.0, 0.0), par, tax)
        tied_p = tied_params(graph, par) if has_head else 0.0
        tails.append((sync, optimizer_s(layers, costs, tied_p, par, cluster)))
    step = max(sim.rank_end_s[r] + sum(tails[r]) for r in range(par.pp))
    memories = [_rank_memory(r, chunks, sums, states[r], sim.peak_inflight_bytes[r], sim.peak_inflight_microbatches[r],
                             train, par, graph) for r in range(par.pp)]
    return _finish(model, cluster, train, par, graph, costs, chunks, sim, f, b, tails, step, memories, m, zero_s)


def _rank_memory(r, chunks, sums, state: _RankState, inflight_bytes: float, inflight_mb: float, train, par,
                 graph) -> mem.StageMemory:
    n_dense = par.dp * par.cp
    n_exp = n_dense // par.ep
    states = mem.model_state_bytes(state.dense_params, state.expert_params, par.zero, n_dense, n_exp, train)
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
    return mem.stage_memory(states, inflight_bytes, inflight_mb, transient, buffers)


def _finish(model, cluster, train, par, graph, costs, chunks, sim, f, b, tails, step, memories, m,
            zero_s) -> Estimate:
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
        "pipeline_bubble_s": max(0.0, sim.makespan_s - busy),  # clamp float noise: pp 1 has no bubble
        "time_breakdown_s": {
            "pipeline_s": sim.makespan_s,
            "exposed_comm_in_layers_s": max(sum(costs[i].comm_s for c in chunks if c.pp_rank == r for i in c.layer_ids)
                                            for r in range(par.pp)) * m,
            "zero_exposed_s": max(zero_s),  # ZeRO-2/3 gathers/scatters each micro-batch, not hidden
            "dp_sync_exposed_s": max(t[0] for t in tails),
            "optimizer_s": max(t[1] for t in tails),
        },
        "stages": stages,
    }
    return Estimate(model, cluster, train, par, chunks, predicted, not over, over, sim.events, sim.critical)


def time_components(p: dict) -> dict[str, float]:
    """The step split into what a user can act on (busiest rank's figures; compute is the rest of
    the pipeline time)."""
    tb = p["time_breakdown_s"]
    zero = tb.get("zero_exposed_s", 0.0)  # absent in plans written before it was reported
    return {"compute (incl. recompute)": tb["pipeline_s"] - p["pipeline_bubble_s"] - tb["exposed_comm_in_layers_s"] - zero,
            "pipeline bubble": p["pipeline_bubble_s"], "exposed tp/ep/cp communication": tb["exposed_comm_in_layers_s"],
            "exposed ZeRO-2/3 gather/scatter": zero,
            "data-parallel sync": tb["dp_sync_exposed_s"], "optimizer": tb["optimizer_s"]}


def _recompute_flops(graph, costs, par) -> float:
    """Extra FLOPs recompute performs per micro-batch on one GPU, summed over the model's blocks."""
    total = 0.0
    for i in range(len(graph.blocks)):
        c = costs[i + 1]
        total += c.hw_flops[par.recompute_of(i)] - c.model_flops
    return total
