"""The buffers one pipeline rank allocates over a step, read off a scored plan — the input of the
memory-reuse formulation (planner/search/milp/arena.py).

Everything comes from the cost model, nothing is re-timed here (as ``planner.cost.timeline``):

- the schedule simulation's F/B events (``estimate(..., keep_events=True)``) give when each
  (chunk, micro-batch) runs; inside an F event the chunk's layers run in order, each for its
  share of the chunk's forward seconds (``LayerCost.fwd_s``), and inside a B event in reverse
  order, each for ``bwd_s + recompute_s[option]``;
- every tensor a layer keeps for backward under its recompute option
  (``planner.cost.layer.saved_tensor_bytes``) is one buffer from the start of that layer's forward
  to the end of that layer's backward, per micro-batch;
- the rank's transient term (rematerialised layer, logits gradient, FSDP gathers:
  ``StageMemory.transient_bytes``) is one buffer per backward event;
- weights, gradients, optimizer states, communication buffers and the workspace are held all
  step: one buffer each over the whole step.

Sizes are rounded up to ``alignment`` bytes (512: the CUDA caching allocator's rounding,
``c10/cuda/CUDACachingAllocator.cpp`` kMinBlockSize). Times become integer ranks of the distinct
event times (only their order matters to the allocation).
"""

from __future__ import annotations

import math

from models.graph import build_graph
from planner.cost.estimate import Estimate, estimate
from planner.cost.kept_set import kept_tensor_bytes, priced_costs
from planner.cost.layer import saved_tensor_bytes
from planner.kept_sets import is_kept_set
from planner.search.milp.arena import Buffer

ALIGNMENT_BYTES = 512


def _aligned(nbytes: float, alignment: int) -> int:
    return int(math.ceil(nbytes / alignment)) * alignment


def _layer_slices(start: float, end: float, weights: list[float]) -> list[tuple[float, float]]:
    """Split [start, end) into consecutive slices proportional to ``weights``."""
    total = sum(weights) or 1.0
    out, t = [], start
    for k, w in enumerate(weights):
        stop = end if k == len(weights) - 1 else t + (end - start) * w / total
        out.append((t, stop))
        t = stop
    return out


def _activation_buffers(est: Estimate, rank: int) -> list[tuple[str, float, float, float]]:
    """(name, start_s, end_s, bytes) of every saved tensor and backward transient on ``rank``."""
    graph = build_graph(est.model, est.train.seq_len, est.train.attention_impl, est.train.norm_impl)
    costs = priced_costs(graph, est.cluster, est.train, est.par)
    n_blocks = len(graph.blocks)
    chunks = {c.index: c for c in est.chunks}
    transient = est.predicted.stages[rank].memory.transient_bytes
    fwd: dict[tuple[int, int], tuple[float, float]] = {}
    out = []
    for r, op, j, i, start, end in est.events:
        if r != rank:
            continue
        if op == "F":
            fwd[(j, i)] = (start, end)
        elif transient > 0:
            out.append((f"transient[chunk={j},mb={i}]", start, end, transient))
    for r, op, j, i, start, end in est.events:
        if r != rank or op != "B":
            continue
        ids = list(chunks[j].layer_ids)
        opts = [est.par.recompute_of(lid - 1) if 0 < lid <= n_blocks else "none" for lid in ids]
        f_slices = _layer_slices(*fwd[(j, i)], [costs[lid].fwd_s for lid in ids])
        back = [costs[lid].bwd_s + costs[lid].recompute_s[o] for lid, o in zip(ids, opts)]
        b_slices = _layer_slices(start, end, back[::-1])[::-1]
        for lid, opt, (f0, _), (_, b1) in zip(ids, opts, f_slices, b_slices):
            layer = graph.layers[lid]
            kept = (
                kept_tensor_bytes(layer, graph, est.cluster, est.train, est.par, opt)
                if is_kept_set(opt)
                else saved_tensor_bytes(layer, graph, est.cluster, est.train, est.par)[opt]
            )
            for name, nbytes in kept:
                out.append((f"{name}[layer={lid},mb={i}]", f0, b1, nbytes))
    return out


def stage_buffers(est: Estimate, rank: int, alignment: int = ALIGNMENT_BYTES) -> list[Buffer]:
    """Every buffer pipeline rank ``rank`` holds over one step of ``est`` (module docstring)."""
    if not est.events:
        est = estimate(est.model, est.cluster, est.train, est.par, keep_events=True)
    if not 0 <= rank < est.par.pp:
        raise ValueError(f"rank {rank} is not a pipeline rank of this plan (pp = {est.par.pp})")
    raw = _activation_buffers(est, rank)
    times = sorted({t for _, a, b, _ in raw for t in (a, b)} | {0.0, est.step_time_s})
    index = {t: k for k, t in enumerate(times)}
    end = len(times) - 1
    m = est.predicted.stages[rank].memory
    held = [
        ("weights", m.weights_bytes),
        ("gradients", m.gradients_bytes),
        ("optimizer", m.optimizer_bytes),
        ("comm_buffers", m.comm_buffer_bytes),
        ("workspace", m.workspace_bytes),
    ]
    out = [Buffer(name, 0, end, _aligned(b, alignment)) for name, b in held if b > 0]
    out += [
        Buffer(name, index[a], index[b], _aligned(nbytes, alignment))
        for name, a, b, nbytes in raw
        if nbytes > 0 and index[b] > index[a]
    ]
    return out
