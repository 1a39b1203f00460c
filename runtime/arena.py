"""``--memory-plan arena``: a rank's saved activations placed at planned offsets of one
pre-allocated buffer (issue 22, memory reuse in the runtime).

Planning, once per rank before the first step (:func:`plan_arena`):

1. sizes — a dry run of one micro-batch per chunk this rank holds (:mod:`runtime.arena_trace`)
   gives every tensor autograd saves, its layout and bytes, exactly as the step will save it;
2. lifetimes — the plan's schedule order for this rank (``planner.schedules``: the
   (F/B, chunk, micro-batch) sequence the torch schedule runs; with pp = 1 gradient accumulation,
   F then B per micro-batch) lays the traces on one time axis: forward event ``F(c, i)`` takes
   ``packs_c + 1`` time points and slot ``d`` of micro-batch ``i`` starts at its pack position; backward
   event ``B(c, i)`` takes ``releases_c + 1`` points and the slot ends one point after its
   release position; a slot autograd drops only with the graph lives to the end of the step;
3. offsets — :func:`planner.search.milp.arena.solve_arena` (CP-SAT NoOverlap2D, max-live bound,
   best-fit warm start) over those buffers, sizes in units of ``ALIGN_BYTES`` so every offset is
   aligned for any dtype (64 B: a cache line, and the alignment of PyTorch's CPU allocator,
   ``c10/core/alignment.h`` gAlignment).

Running: :class:`runtime.arena_hooks.ArenaHooks` copies each save into its slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from planner.schedules import SCHEDULES
from planner.search.milp.arena import ArenaResult, Buffer, solve_arena
from runtime.arena_trace import ChunkTrace, trace_chunk
from runtime.memory import state_storages
from runtime.model import next_token_loss
from runtime.options import MEMORY_PLANS
from runtime.pipeline import stage_io
from runtime.plan_io import PlanError

ALIGN_BYTES = 64
SlotKey = tuple[int, int, int]  # (local chunk, micro-batch, slot)


@dataclass(frozen=True)
class ArenaLayout:
    """Where every slot of every micro-batch goes, and the solve that placed them."""

    traces: tuple[ChunkTrace, ...]  # per local chunk
    forwards: tuple[tuple[int, int], ...]  # the rank's forward events (chunk, micro-batch), in order
    offsets: dict[SlotKey, int]  # bytes from the arena's start
    slot_bytes: dict[SlotKey, int]  # reserved bytes (the slot's bytes rounded up to ALIGN_BYTES)
    result: ArenaResult  # in units of ALIGN_BYTES
    buffers: int

    @property
    def arena_bytes(self) -> int:
        return self.result.arena_bytes * ALIGN_BYTES

    def summary(self) -> dict[str, Any]:
        """The plan's figures for the run report (bytes)."""
        reasons = sorted({r for t in self.traces for r in t.by_reference})
        return {
            "planned_arena_bytes": self.arena_bytes,
            "planned_max_live_bytes": self.result.max_live_bytes * ALIGN_BYTES,
            "best_fit_bytes": self.result.best_fit_bytes * ALIGN_BYTES,
            "solve_status": str(self.result.status),
            "solve_backend": self.result.backend,
            "solve_s": self.result.wall_time_s,
            "buffers": self.buffers,
            "by_reference_per_microbatch": sum(len(t.by_reference) for t in self.traces),
            "by_reference_kinds": reasons,
        }


def check_memory_plan(plan: dict, memory_plan: str) -> None:
    """One-line errors for a memory plan the runtime cannot carry out with this plan."""
    if memory_plan not in MEMORY_PLANS:
        raise PlanError(f"--memory-plan must be one of {', '.join(MEMORY_PLANS)} (got {memory_plan!r})")
    if memory_plan == "none":
        return
    p = plan["parallelism"]
    unsupported = [f"{k} = {p[k]}" for k in ("tp", "cp", "ep") if p.get(k, 1) > 1]
    if any(r != "none" for st in plan["stages"] for r in st.get("recompute", [])):
        unsupported.append("recompute")
    if unsupported:
        raise PlanError(
            f"--memory-plan arena runs pipeline and data parallel plans without recompute; not {', '.join(unsupported)}"
        )


def schedule_buffers(
    traces: list[ChunkTrace], order: tuple[tuple[str, int, int], ...]
) -> tuple[list[Buffer], list[SlotKey]]:
    """The buffers of one step on one rank (module docstring, step 2), in units of ALIGN_BYTES,
    and the slot each one is."""
    start: dict[SlotKey, int] = {}
    end: dict[SlotKey, int] = {}
    t = 0
    for op, c, i in order:
        trace = traces[c]
        for d, s in enumerate(trace.slots):
            if op == "F":
                start[(c, i, d)] = t + s.packed_at
            elif s.released_at is not None:
                end[(c, i, d)] = t + s.released_at + 1
        t += (trace.packs if op == "F" else trace.releases) + 1
    keys = sorted(start)
    buffers = [
        Buffer(
            f"chunk{c}.mb{i}.slot{d}", start[(c, i, d)], end.get((c, i, d), t + 1), _units(traces[c].slots[d].nbytes)
        )
        for c, i, d in keys
    ]
    return buffers, keys


def _units(nbytes: int) -> int:
    return max(1, math.ceil(nbytes / ALIGN_BYTES))


def layout_arena(
    traces: list[ChunkTrace], order: tuple[tuple[str, int, int], ...], time_limit_s: float = 1.0
) -> ArenaLayout:
    """Offsets for every slot of the step ``order`` runs (module docstring, steps 2-3)."""
    buffers, keys = schedule_buffers(traces, order)
    result = solve_arena(buffers, time_limit_s=time_limit_s, workers=1) if buffers else _empty()
    offsets = {k: o * ALIGN_BYTES for k, o in zip(keys, result.offsets)}
    sizes = {k: b.size_bytes * ALIGN_BYTES for k, b in zip(keys, buffers)}
    forwards = tuple((c, i) for op, c, i in order if op == "F")
    return ArenaLayout(tuple(traces), forwards, offsets, sizes, result, len(buffers))


def _empty() -> ArenaResult:
    from planner.search.milp.model import SolveStatus

    return ArenaResult((), 0, 0, 0, SolveStatus.OPTIMAL, 0.0, "empty")


def _dry_run(pm, part, index: int, dtype: torch.dtype) -> ChunkTrace:
    """Trace one micro-batch of chunk ``part`` (plan stage ``index``) as the step runs it: the
    pipeline schedule's stage forward and loss, or the accumulation loop's model, loss and scaled
    backward (runtime.step). Inputs are seeded random tokens or hidden states of the stage's shapes
    (``dtype``: the run's compute dtype, that of the activations a stage receives)."""
    plan, last = pm.plan, index == len(pm.plan["stages"]) - 1
    x_meta, _ = stage_io(plan, index, dtype)
    g = torch.Generator().manual_seed(0)
    vocab = plan["inputs"]["model"]["vocab_size"]
    if x_meta.dtype == torch.long:
        x = torch.randint(0, vocab, tuple(x_meta.shape), generator=g).to(pm.device)
    else:
        x = torch.randn(tuple(x_meta.shape), generator=g).to(pm.device, dtype).requires_grad_()
    y = torch.randint(0, vocab, (x_meta.shape[0], x_meta.shape[1]), generator=g).to(pm.device)
    n = plan["parallelism"]["num_micro_batches"]
    excluded = state_storages(part)
    if pm.schedule is None:  # runtime.step's accumulation loop
        return trace_chunk(
            lambda: next_token_loss(part(x), y), lambda loss: (loss * pm.loss_scale / n).backward(), excluded
        )
    if last:
        return trace_chunk(lambda: pm.scaled_loss(part(x), y), lambda loss: loss.backward(), excluded)
    return trace_chunk(lambda: part(x), lambda out: out.backward(torch.ones_like(out)), excluded)


def plan_arena(pm, pp_rank: int, dtype: torch.dtype = torch.float32, time_limit_s: float = 1.0) -> ArenaLayout:
    """The arena layout of this rank (module docstring); ``dtype``: the run's compute dtype. The
    dry run leaves the parameters' gradients as it found them (None), the 16-bit parameter
    copies uncached and the global random state untouched."""
    p = pm.plan["parallelism"]
    with torch.random.fork_rng(devices=[]):
        traces = [_dry_run(pm, part, index, dtype) for part, index in zip(pm.parts, pm.stage_indices)]
    for param in pm.parameters():
        param.grad = None
    if pm.cast_cache is not None:
        pm.cast_cache.clear()
    order = SCHEDULES[p["schedule"]].order(pp_rank, p["pp"], p["num_micro_batches"], len(pm.parts))
    return layout_arena(traces, order, time_limit_s)
