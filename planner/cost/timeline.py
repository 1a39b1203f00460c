"""What each pipeline rank does, and holds, over one step of a scored plan — the data the plots draw.

Everything is read off the cost model, nothing is re-timed here:

- operation start/end times are the events of the schedule simulation (``planner.cost.schedule.simulate``
  via ``planner.cost.estimate.estimate(..., keep_events=True)``);
- an F/B operation's duration is split into its parts with the same per-layer costs ``estimate`` sums
  (``planner.cost.layer.graph_costs``): forward = Σ fwd_s; backward = Σ bwd_s + Σ recompute_s[option];
  the rest of the op (``f[j] − Σ fwd_s``, ``b[j] − Σ bwd − Σ recompute``) is the exposed ZeRO-2/3
  collective time ``cost.data_parallel.add_per_microbatch_dp`` adds. Within an op the parts are drawn in a
  fixed order (forward: gather, compute; backward: recompute, backward, reduce) — the model gives
  their sums, not their interleaving layer by layer;
- a rank that waits for its input shows the point-to-point transfer ``[start − p2p, start]`` (clipped to
  the idle time) and the rest of the wait as idle (bubble);
- after its last backward a rank runs its exposed DP sync and its optimizer step, then idles until the
  slowest rank is done: every rank's row spans exactly the step time, and
  ``busy + idle + p2p + dp_sync + optimizer = step_time_s``.

Memory of rank r at time t, with the terms of ``planner.cost.memory.stage_memory``::

    (weights + gradients + optimizer + comm buffers + live(t) + transient(t)) · (1 + frag) + workspace

where ``live(t)`` sums the activation bytes of every (chunk, micro-batch) whose forward has started and
whose backward has not ended (the simulation's in-flight accounting), and ``transient(t)`` is the rank's
transient term (largest rematerialised layer, logits gradient, FSDP gathers) while a backward runs — the
estimate's worst case. Its maximum is the estimate's per-stage peak, since the in-flight peak is reached
by a forward that the schedule always follows with a backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.graph import build_graph
from planner.cost.estimate import Estimate, estimate, p2p_list
from planner.cost.kept_set import priced_costs
from planner.cost.memory import fragmentation

# Drawing order in the legend; "idle" is the pipeline bubble.
KINDS = ("forward", "backward", "recompute", "layer_comm", "zero_comm", "p2p", "dp_sync", "optimizer", "idle")
# The rank's busy time (F + B): compute, and the tp/ep/cp and ZeRO communication it waits for.
COMPUTE_KINDS = ("forward", "backward", "recompute", "layer_comm", "zero_comm")


@dataclass(frozen=True)
class Segment:
    """One bar of the Gantt chart: what pipeline rank ``rank`` does in [start_s, end_s)."""

    rank: int
    kind: str  # one of KINDS
    start_s: float
    end_s: float
    chunk: int = -1  # global model chunk j = c·pp + r, -1 when not an F/B part
    micro_batch: int = -1

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class ChunkParts:
    """Per-micro-batch seconds of one chunk's forward and backward, and its activation bytes."""

    fwd_s: float  # forward compute + exposed tp/ep/cp communication inside the layers
    fwd_zero_s: float  # exposed ZeRO-3 all-gather
    bwd_s: float  # backward compute + in-layer communication, no recompute
    recompute_s: float
    bwd_zero_s: float  # exposed ZeRO-2/3 reduce-scatter (and ZeRO-3 gather)
    act_bytes: float  # saved for backward per micro-batch
    fwd_comm_s: float = 0.0  # of fwd_s, the exposed tp/ep/cp communication
    bwd_comm_s: float = 0.0  # of bwd_s, likewise


@dataclass(frozen=True)
class MemoryTrace:
    """Step function of one rank's memory: bytes[k] holds on [times_s[k], times_s[k+1])."""

    rank: int
    times_s: tuple[float, ...]
    bytes: tuple[float, ...]
    static_bytes: float  # states + buffers (+ fragmentation) + workspace, held all step


def with_events(est: Estimate) -> Estimate:
    """The same plan scored with the simulation's per-operation events kept (``plan`` drops them)."""
    if est.events:
        return est
    return estimate(est.model, est.cluster, est.train, est.par, keep_events=True)


def chunk_parts(est: Estimate) -> list[ChunkParts]:
    """Split every chunk's F and B time into the cost model's parts (see the module docstring)."""
    graph = build_graph(est.model, est.train.seq_len, est.train.attention_impl, est.train.norm_impl)
    costs = priced_costs(graph, est.cluster, est.train, est.par)
    n_blocks = len(graph.blocks)
    per_chunk = {c.chunk: c for s in est.predicted.stages for c in s.chunks}
    out = []
    for ch in est.chunks:
        f = b = rec = act = cf = cb = 0.0
        for lid in ch.layer_ids:
            c = costs[lid]
            opt = est.par.recompute_of(lid - 1) if 0 < lid <= n_blocks else "none"
            f, b, rec, act = f + c.fwd_s, b + c.bwd_s, rec + c.recompute_s[opt], act + c.act_bytes[opt]
            cf, cb = cf + c.comm_fwd_s, cb + c.comm_s - c.comm_fwd_s
        total_f = per_chunk[ch.index].fwd_s_per_microbatch
        total_b = per_chunk[ch.index].bwd_s_per_microbatch
        zf, zb = _residue(total_f - f, total_f), _residue(total_b - b - rec, total_b)
        out.append(ChunkParts(f, zf, b, rec, zb, act, cf, cb))
    return out


def _residue(x: float, scale: float) -> float:
    """The ZeRO share of an op: zero when it is only float round-off of the subtraction."""
    return x if x > 1e-9 * scale else 0.0


def p2p_seconds(est: Estimate) -> list[float]:
    """Transfer time from chunk j to j+1, priced by the estimate's own p2p model."""
    graph = build_graph(est.model, est.train.seq_len, est.train.attention_impl, est.train.norm_impl)
    return p2p_list(est.chunks, est.cluster, est.train, est.par, graph)  # same function estimate uses


def _op_parts(op: str, part: ChunkParts) -> list[tuple[str, float]]:
    if op == "F":
        return [
            ("zero_comm", part.fwd_zero_s),
            ("forward", part.fwd_s - part.fwd_comm_s),
            ("layer_comm", part.fwd_comm_s),
        ]
    return [
        ("recompute", part.recompute_s),
        ("backward", part.bwd_s - part.bwd_comm_s),
        ("layer_comm", part.bwd_comm_s),
        ("zero_comm", part.bwd_zero_s),
    ]


def _split_op(r: int, op: str, j: int, i: int, start: float, end: float, part: ChunkParts) -> list[Segment]:
    """Cut one F/B event into its parts; the last part ends exactly at the event's end."""
    parts = [(k, d) for k, d in _op_parts(op, part) if d > 0]
    out, t = [], start
    for n, (kind, dur) in enumerate(parts):
        stop = end if n == len(parts) - 1 else min(end, t + dur)
        out.append(Segment(r, kind, t, stop, j, i))
        t = stop
    return out


def _wait(r: int, free: float, start: float, arrival_from: float | None, p2p: float) -> list[Segment]:
    """The gap [free, start) of a rank: the incoming transfer's share of it, the rest idle."""
    if start <= free:
        return []
    if arrival_from is None or p2p <= 0:
        return [Segment(r, "idle", free, start)]
    p_start = max(free, start - p2p)
    out = [Segment(r, "idle", free, p_start)] if p_start > free else []
    return out + [Segment(r, "p2p", p_start, start)]


def gantt_segments(est: Estimate) -> list[Segment]:
    """Every bar of the Gantt chart, per rank in time order, covering [0, step_time_s] exactly."""
    est = with_events(est)
    par, parts, p2p = est.par, chunk_parts(est), p2p_seconds(est)
    n_chunks = par.chunks
    step = est.predicted.step_time_s
    by_rank: dict[int, list] = {r: [] for r in range(par.pp)}
    for ev in est.events:
        by_rank[ev[0]].append(ev)
    out: list[Segment] = []
    for r in range(par.pp):
        free = 0.0
        for _, op, j, i, start, end in sorted(by_rank[r], key=lambda e: e[4]):
            # An op that waited started when its input arrived: the producer's end + the transfer.
            has_input = (op == "F" and j > 0) or (op == "B" and j < n_chunks - 1)
            link = j - 1 if op == "F" else j
            out += _wait(r, free, start, link if has_input else None, p2p[link] if has_input else 0.0)
            out += _split_op(r, op, j, i, start, end, parts[j])
            free = end
        stage = est.predicted.stages[r]
        sync_end = free + stage.dp_sync_exposed_s
        opt_end = sync_end + stage.optimizer_s
        out += [
            Segment(r, k, a, b)
            for k, a, b in (("dp_sync", free, sync_end), ("optimizer", sync_end, opt_end), ("idle", opt_end, step))
            if b > a
        ]
    return out


def seconds_by_kind(segments: list[Segment], rank: int) -> dict[str, float]:
    """Total seconds of each kind on one rank (the figures the Gantt's legend summarises)."""
    out = {k: 0.0 for k in KINDS}
    for s in segments:
        if s.rank == rank:
            out[s.kind] += s.duration_s
    return out


def memory_traces(est: Estimate) -> list[MemoryTrace]:
    """Per rank, memory over one step as a step function (formula in the module docstring)."""
    est = with_events(est)
    parts = chunk_parts(est)
    step = est.predicted.step_time_s
    frag = fragmentation(est.train)
    out = []
    for r, stage in enumerate(est.predicted.stages):
        m = stage.memory
        held = m.weights_bytes + m.gradients_bytes + m.optimizer_bytes + m.comm_buffer_bytes

        def total(extra: float, held: float = held, workspace: float = m.workspace_bytes) -> float:
            return (held + extra) * (1 + frag) + workspace

        # (time, change in live activations, change in transient); ends before starts at a tie
        # so that back-to-back ops do not double count.
        changes: list[tuple[float, int, float, float]] = []
        for rank, op, j, _, start, end in est.events:
            if rank != r:
                continue
            if op == "F":
                changes.append((start, 1, parts[j].act_bytes, 0.0))
            else:
                changes += [(start, 1, 0.0, m.transient_bytes), (end, 0, -parts[j].act_bytes, -m.transient_bytes)]
        times, values, live, trans = [0.0], [total(0.0)], 0.0, 0.0
        for t, _, d_live, d_trans in sorted(changes):
            live, trans = live + d_live, trans + d_trans
            if t == times[-1]:
                values[-1] = total(live + trans)
            else:
                times.append(t)
                values.append(total(live + trans))
        times.append(step)
        values.append(values[-1])
        out.append(MemoryTrace(r, tuple(times), tuple(values), total(0.0)))
    return out
