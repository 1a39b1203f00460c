"""Score one fully specified plan: step time from the pipeline schedule, memory per stage, MFU.

Step time = longest path of the schedule DAG (planner.cost.schedule) over per-chunk forward/backward
times (planner.cost.layer, with exposed tp/ep/cp communication and per-micro-batch ZeRO-2/3
exposure, planner.cost.data_parallel) + per rank tail (data-parallel gradient sync not hidden
behind the last backward, and the optimizer step). MFU = model FLOPs / (step time · GPUs · peak)
with model FLOPs per Narayanan et al. 2021 eq. 3 (full attention matrix, no recompute); HFU adds
recompute FLOPs. The result is typed (planner.cost.records); its ``to_json`` is the plan file's
``predicted`` block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardware import comm
from hardware.cluster import ClusterSpec
from models.graph import LayerGraph, build_graph
from models.spec import ModelSpec
from planner.config import Parallel, Training, check_plan
from planner.cost import memory as mem
from planner.cost.chunks import ChunkInfo, chunk_sums, make_chunks
from planner.cost.data_parallel import (
    add_per_microbatch_dp,
    comm_stage,
    dp_tail,
    optimizer_s,
    tied_copy_comm,
    tied_params,
    zero3_overlap,
)
from planner.cost.kept_set import priced_costs
from planner.cost.layer import LayerCost
from planner.cost.records import ChunkResult, Predicted, StageResult, TimeBreakdown
from planner.cost.schedule import PathCounts, ScheduleResult, inflight_peaks, simulate


@dataclass
class Estimate:
    """The scored plan: its inputs, chunks and typed ``predicted`` figures."""

    model: ModelSpec
    cluster: ClusterSpec
    train: Training
    par: Parallel
    chunks: list[ChunkInfo]
    predicted: Predicted
    fits: bool
    over: list[tuple[int, float]] = field(default_factory=list)  # (pp rank, bytes over capacity)
    events: tuple = ()
    critical: tuple[PathCounts, ...] = ()  # per pipeline rank, the schedule's longest path to its last op

    @property
    def step_time_s(self) -> float:
        return self.predicted.step_time_s


@dataclass(frozen=True)
class _RankState:
    dense_params: float
    expert_params: float
    layers: int
    largest_layer_params: float


@dataclass(frozen=True)
class _Prepared:
    """What both the memory check and the timing need."""

    graph: LayerGraph
    costs: list[LayerCost]
    chunks: list[ChunkInfo]
    sums: list[tuple[float, float, float, float]]  # per chunk: fwd s, bwd s, activation bytes, remat bytes
    states: list[_RankState]

    def of_rank(self, r: int) -> list[ChunkInfo]:
        return [c for c in self.chunks if c.pp_rank == r]


@dataclass(frozen=True)
class _Timing:
    f: list[float]  # per chunk forward seconds per micro-batch, ZeRO-3 exposure included
    b: list[float]
    zero_s: list[float]  # per rank, ZeRO-2/3 exposure over the step
    sim: ScheduleResult
    tails: list[tuple[float, float]]  # per rank: (exposed dp sync, optimizer) seconds
    step_s: float


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


def p2p_list(
    chunks: list[ChunkInfo], cluster: ClusterSpec, train: Training, par: Parallel, graph: LayerGraph
) -> list[float]:
    """Activation (and its gradient) transfer between consecutive chunks: b·s/cp·h elements,
    /tp when sequence parallel keeps them split (Megatron scatter-gather optimisation)."""
    nbytes = par.micro_batch * train.seq_len / par.cp * graph.spec.hidden_size * train.act_bytes
    nbytes /= par.tp if par.sequence_parallel else 1
    stride = par.tp * par.cp * par.dp
    # Consecutive stages are `stride` ranks apart; once the pipeline spans nodes the slowest hop
    # (the network) sets the pace, so all transfers are priced on it.
    inter = stride * par.pp > cluster.gpus_per_node
    return [comm.p2p_s(cluster, nbytes, inter_node=inter) for _ in chunks]


def _prepare(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel) -> _Prepared:
    check_plan(par, train, model, cluster.num_gpus)
    graph = build_graph(model, train.seq_len, train.attention_impl, train.norm_impl)
    costs = priced_costs(graph, cluster, train, par)
    chunks = make_chunks(graph, par)
    sums = [chunk_sums(c, costs, par) for c in chunks]
    return _Prepared(graph, costs, chunks, sums, _rank_states(chunks, costs, graph, par))


def rank_memory_bytes(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel) -> list[float]:
    """Each pipeline rank's peak bytes as ``estimate`` reports them, without timing the schedule
    (the in-flight activations depend on each rank's order only)."""
    p = _prepare(model, cluster, train, par)
    m = par.num_micro_batches(train.global_batch)
    peak, inflight = inflight_peaks(par.schedule, par.pp, m, par.vpp, [s[2] for s in p.sums])
    return [_rank_memory(r, p, peak[r], inflight[r], train, par).total_bytes for r in range(par.pp)]


def fits_in_memory(model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel) -> bool:
    """Whether ``estimate`` would report the plan as fitting (``rank_memory_bytes``): the
    planner's heuristics try the least recompute that fits and skip the simulations of plans
    that do not."""
    cap = mem.capacity_bytes(cluster.gpu.hbm_bytes, train)
    return all(b <= cap for b in rank_memory_bytes(model, cluster, train, par))


def estimate(
    model: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel, keep_events: bool = False
) -> Estimate:
    """Score one plan (raises PlanError for an invalid one). See the module docstring."""
    p = _prepare(model, cluster, train, par)
    timing = _time(p, cluster, train, par, keep_events)
    sim = timing.sim
    memories = [
        _rank_memory(r, p, sim.peak_inflight_bytes[r], sim.peak_inflight_microbatches[r], train, par)
        for r in range(par.pp)
    ]
    cap = mem.capacity_bytes(cluster.gpu.hbm_bytes, train)
    over = [(r, mm.total_bytes - cap) for r, mm in enumerate(memories) if mm.total_bytes > cap]
    predicted = _predicted(cluster, train, par, p, timing, memories)
    return Estimate(model, cluster, train, par, p.chunks, predicted, not over, over, sim.events, sim.critical)


def _time(p: _Prepared, cluster: ClusterSpec, train: Training, par: Parallel, keep_events: bool) -> _Timing:
    """Chunk times with ZeRO-2/3 exposure, the schedule simulation, and each rank's tail."""
    m = par.num_micro_batches(train.global_batch)
    f = [s[0] for s in p.sums]
    b = [s[1] for s in p.sums]
    tax = cluster.gpu.efficiency.overlap_tax
    added = (
        add_per_microbatch_dp(p.chunks, p.costs, f, b, train, par, tax, zero3_overlap(p.graph, train, par))
        if comm_stage(train, par) >= 2
        else [0.0] * len(p.chunks)
    )
    zero_s = [m * sum(added[c.index] for c in p.of_rank(r)) for r in range(par.pp)]
    sim = simulate(
        par.schedule,
        par.pp,
        m,
        par.vpp,
        f,
        b,
        p2p_list(p.chunks, cluster, train, par, p.graph),
        [s[2] for s in p.sums],
        keep_events,
    )
    tied = tied_copy_comm(p.graph, cluster, train, par)
    tails = []
    for r in range(par.pp):
        mine = p.of_rank(r)
        layers = [i for c in mine for i in c.layer_ids]
        has_head = any(c.has_head for c in mine)
        sync = dp_tail(
            layers,
            f[mine[0].index],
            sum(p.sums[c.index][1] for c in mine),
            p.costs,
            tied if has_head else (0.0, 0.0, 0.0, 0.0),
            par,
            tax,
            train.stack.dp_grad_overlap,
            comm_stage(train, par),
        )
        tied_p = tied_params(p.graph, par) if has_head else 0.0
        tails.append((sync, optimizer_s(layers, p.costs, tied_p, par, cluster)))
    step = max(sim.rank_end_s[r] + sum(tails[r]) for r in range(par.pp))
    return _Timing(f, b, zero_s, sim, tails, step)


def _rank_memory(
    r: int, p: _Prepared, inflight_bytes: float, inflight_mb: float, train: Training, par: Parallel
) -> mem.StageMemory:
    state = p.states[r]
    states = mem.model_state_bytes(
        state.dense_params,
        state.expert_params,
        par.zero,
        par.dense_shard,
        par.expert_shard,
        train,
        mem.unsharded_bytes_per_param(train, par),
    )
    mine = p.of_rank(r)
    transient = max(p.sums[c.index][3] for c in mine)
    tokens = par.micro_batch * train.seq_len / par.cp
    if any(c.has_head for c in mine):
        transient += mem.loss_transient_bytes(tokens, p.graph.spec.vocab_size, par.tp, train)
    if par.zero == 3 and not mem.holds_unsharded(train, par):
        per_matrix = mem.zero3_parameter_gather_bytes(mem.largest_matrix_params(p.graph, par), train)
        transient += (
            per_matrix if per_matrix is not None else mem.zero3_gather_bytes(state.largest_layer_params, train.dtype)
        )
    buffers = 2 * 25 * 2**20 if par.zero < 3 and par.dense_dp > 1 else 0.0  # DDP 25 MiB buckets
    if par.pp > 1:
        buffers += 2 * tokens * p.graph.spec.hidden_size * train.act_bytes  # p2p send + recv
    return mem.stage_memory(states, inflight_bytes, inflight_mb, transient, buffers, mem.fragmentation(train))


def _stage_results(
    p: _Prepared, par: Parallel, t: _Timing, memories: list[mem.StageMemory], m: int
) -> tuple[StageResult, ...]:
    out = []
    for r, mm in enumerate(memories):
        mine = p.of_rank(r)
        chunks = tuple(
            ChunkResult(
                c.index,
                (c.first_block, c.first_block + c.num_blocks),
                c.has_embedding,
                c.has_head,
                t.f[c.index],
                t.b[c.index],
            )
            for c in mine
        )
        out.append(
            StageResult(
                r,
                chunks,
                mm,
                sum(t.f[c.index] + t.b[c.index] for c in mine) * m,
                t.sim.rank_end_s[r],
                t.tails[r][0],
                t.tails[r][1],
            )
        )
    return tuple(out)


def _predicted(
    cluster: ClusterSpec, train: Training, par: Parallel, p: _Prepared, t: _Timing, memories: list[mem.StageMemory]
) -> Predicted:
    m = par.num_micro_batches(train.global_batch)
    tokens = train.global_batch * train.seq_len
    n, step = cluster.num_gpus, t.step_s
    peak_dtype = "bf16" if train.dtype == "fp8" else train.dtype  # MFU against the 16-bit peak (torchtitan)
    peak = cluster.gpu.peak_flops(peak_dtype)
    model_flops = p.graph.model_flops_per_token() * tokens
    hw_flops = (
        model_flops
        + _recompute_flops(p.graph, p.costs, par)
        * train.global_batch
        / (par.micro_batch * par.dp)
        * par.dp
        * par.tp
        * par.cp
    )
    stages = _stage_results(p, par, t, memories, m)
    busy = max(s.busy_s for s in stages)
    in_layers = max(sum(p.costs[i].comm_s for c in p.of_rank(r) for i in c.layer_ids) for r in range(par.pp)) * m
    breakdown = TimeBreakdown(
        t.sim.makespan_s, in_layers, max(t.zero_s), max(x[0] for x in t.tails), max(x[1] for x in t.tails)
    )
    return Predicted(
        step_time_s=step,
        tokens_per_s=tokens / step,
        tokens_per_s_per_gpu=tokens / step / n,
        mfu=model_flops / (step * n * peak),
        hfu=hw_flops / (step * n * peak),
        model_tflops_per_gpu=model_flops / step / n / 1e12,
        hw_tflops_per_gpu=hw_flops / step / n / 1e12,
        model_flops_per_step=model_flops,
        peak_memory_bytes=max(mm.total_bytes for mm in memories),
        memory_capacity_bytes=mem.capacity_bytes(cluster.gpu.hbm_bytes, train),
        num_micro_batches=m,
        pipeline_bubble_s=max(0.0, t.sim.makespan_s - busy),  # clamp float noise: pp 1 has no bubble
        time_breakdown_s=breakdown,
        stages=stages,
        stack=train.stack.name,
        step_time_interval_s=train.stack.band(step),
    )


def _recompute_flops(graph: LayerGraph, costs: list[LayerCost], par: Parallel) -> float:
    """Extra FLOPs recompute performs per micro-batch on one GPU, summed over the model's blocks."""
    total = 0.0
    for i in range(len(graph.blocks)):
        c = costs[i + 1]
        total += c.hw_flops[par.recompute_of(i)] - c.model_flops
    return total
