"""The registry of pipeline schedules: one entry per schedule, carrying everything the rest of
autopar asks of it, so that code branches on properties and never on a schedule's name.

An entry says which operations it runs (``ops``: F = forward, B = backward), the per-rank order
of those operations (``order``), the rules the micro-batch count must meet, how many
micro-batches rank 0 holds at its peak (a ranking proxy; the exact peak comes from the order),
and how each target builds it: the torch.distributed.pipelining class of the bundled runtime,
torchtitan's ``pipeline_parallel_schedule`` name, and whether Megatron-LM and DeepSpeed have it.

Orders (sources in each entry's ``source``):

- GPipe (Huang et al. 2019): all forwards, then all backwards.
- 1F1B (PipeDream-Flush, Narayanan et al. 2021 §2.2.1): rank r warms up with min(pp-r-1, m)
  forwards, then alternates one forward and one backward, then drains backwards.
- Interleaved 1F1B (Narayanan et al. 2021 §2.2.2, Megatron-LM ``forward_backward_pipelining_with_
  interleaving``): v chunks per rank, chunk c of rank r is model chunk c·pp + r; micro-batches in
  groups of pp; warm-up (pp-r-1)·2 + (v-1)·pp forwards.

Adding a schedule: write its ``order`` function and one ``Schedule`` entry below; the cost model
(simulation, in-flight memory), the placement MILP, the checks, the exports and the runtime read
the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

Op = tuple[str, int, int]  # (operation "F"/"B", local chunk, micro-batch)


@dataclass(frozen=True)
class Schedule:
    """One pipeline schedule and its properties."""

    name: str  # the value of ``--schedule`` and of ``parallelism.schedule`` in plan files
    title: str  # how it is named in prose
    source: str  # where its order comes from
    ops: tuple[str, ...]  # operation vocabulary of ``order``
    virtual_stages: bool  # runs v > 1 model chunks per pipeline rank (needs pp > 1)
    min_microbatches_pp: bool  # needs at least pp micro-batches when pp > 1
    microbatches_multiple_of_pp: bool  # needs micro-batches % pp == 0 when pp > 1
    torch_class: str  # torch.distributed.pipelining class the runtime builds
    torch_multi_stage: bool  # the class takes a list of stages (one per local chunk)
    torchtitan: str  # torchtitan ``pipeline_parallel_schedule``
    megatron: bool  # Megatron-LM runs this schedule (else it runs 1F1B in its place)
    deepspeed: bool  # DeepSpeed's pipeline engine runs this schedule
    _order: Callable[[int, int, int, int], tuple[Op, ...]]
    _inflight: Callable[[int, int, int], float]

    def order(self, rank: int, pp: int, m: int, v: int) -> tuple[Op, ...]:
        """The (op, local chunk, micro-batch) sequence pipeline rank ``rank`` runs; with pp = 1,
        plain gradient accumulation (each micro-batch's backward right after its forward)."""
        return _cached_order(self.name, rank, pp, m, v)

    def inflight_microbatches(self, pp: int, m: int, v: int) -> float:
        """Micro-batches whose activations rank 0 holds at its peak, in units of its whole layers
        (ranking proxy; ``cost.schedule.inflight_peaks`` gives the exact peak of any rank)."""
        return self._inflight(pp, m, v)


def _accumulate(m: int) -> tuple[Op, ...]:
    return tuple(x for i in range(m) for x in (("F", 0, i), ("B", 0, i)))


def _one_f_one_b(fw: list[Op], bw: list[Op], warmup: int) -> tuple[Op, ...]:
    order = fw[:warmup]
    f, b = warmup, 0
    while f < len(fw):
        order += [fw[f], bw[b]]
        f, b = f + 1, b + 1
    return tuple(order + bw[b:])


def _gpipe_order(rank: int, pp: int, m: int, v: int) -> tuple[Op, ...]:
    fw = [("F", c, i) for i in range(m) for c in range(v)]
    bw = [("B", c, i) for i in range(m) for c in reversed(range(v))]
    return tuple(fw + bw)


def _1f1b_order(rank: int, pp: int, m: int, v: int) -> tuple[Op, ...]:
    if v > 1:
        return _interleaved_order(rank, pp, m, v)
    return _one_f_one_b([("F", 0, i) for i in range(m)], [("B", 0, i) for i in range(m)], min(pp - rank - 1, m))


def _interleaved_order(rank: int, pp: int, m: int, v: int) -> tuple[Op, ...]:
    total = m * v
    fw = [("F", (k // pp) % v, (k // (pp * v)) * pp + k % pp) for k in range(total)]
    bw = [("B", v - 1 - (k // pp) % v, (k // (pp * v)) * pp + k % pp) for k in range(total)]
    return _one_f_one_b(fw, bw, min((pp - rank - 1) * 2 + (v - 1) * pp, total))


GPIPE = Schedule(
    "gpipe",
    "GPipe",
    "Huang et al. 2019",
    ("F", "B"),
    False,
    False,
    False,
    "ScheduleGPipe",
    False,
    "GPipe",
    False,
    False,
    _gpipe_order,
    lambda p, m, v: m,
)
ONE_F_ONE_B = Schedule(
    "1f1b",
    "1F1B",
    "Narayanan et al. 2021 §2.2.1 (PipeDream-Flush)",
    ("F", "B"),
    False,
    True,
    False,
    "Schedule1F1B",
    False,
    "1F1B",
    True,
    True,
    _1f1b_order,
    lambda p, m, v: min(m, p),
)
INTERLEAVED = Schedule(
    "interleaved",
    "interleaved 1F1B",
    "Narayanan et al. 2021 §2.2.2",
    ("F", "B"),
    True,
    True,
    True,
    "ScheduleInterleaved1F1B",
    True,
    "Interleaved1F1B",
    True,
    False,
    _interleaved_order,
    lambda p, m, v: min(m * v, 2 * (p - 1) + (v - 1) * p + 1) / v,
)

# Registry order is the search's tie-break order (the default first, GPipe, never faster, last).
SCHEDULES: dict[str, Schedule] = {s.name: s for s in (ONE_F_ONE_B, INTERLEAVED, GPIPE)}


@lru_cache(maxsize=256)
def _cached_order(name: str, rank: int, pp: int, m: int, v: int) -> tuple[Op, ...]:
    # Cached: a search asks for the same orders once per candidate, bound, memory check and
    # simulation (25,000 calls, 3 s of a 30 s search on a 384-GPU case before caching).
    if pp == 1:
        return _accumulate(m)
    return SCHEDULES[name]._order(rank, pp, m, v)
