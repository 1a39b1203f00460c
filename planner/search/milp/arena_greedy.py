"""Greedy placements for dynamic storage allocation (planner/search/milp/arena.py): the best-fit
reference, and the portfolio of orders that gives CP-SAT its starting point.

A greedy placement takes the buffers in some order and puts each at an offset among the buffers
already placed that overlap it in time: ``best`` — the smallest free gap that fits it, else on
top (Pisarchyk & Lee 2020, "Efficient Memory Management for Deep Neural Net Inference", §4.2,
greedy by size); ``first`` — the lowest gap that fits it (first fit). Any packing is what
``first`` gives in the order of its offsets, so some order reaches the optimum; the question is
which orders to try in the time there is.

The portfolio (``_orders``, tried in that order until the time share is spent, the best kept):

1. ``best-fit``: decreasing size, best gap — the reference figure, so the result is never worse;
2. ``breadth``: decreasing *breadth* — the most bytes live at any moment of the buffer's
   lifetime (its ``contention``) — then earliest start, best gap. This is Pisarchyk & Lee's
   §4.3 "greedy by breadth" (operators by the total size of the tensors live at them, their
   tensors first) with the breadth read per buffer: the buffers around the peak of the live
   profile are placed first, stacked by start time, and the rest fill around them;
3. the same ties broken by decreasing size, best and first gap;
4. decreasing breadth × size, earliest start, first gap;
5. decreasing breadth, latest end first, best gap.

Measured on 1,000 random buffers (bench/memory_reuse.py's generator, 8 seeds), gap to max-live:
best fit 7.4-15.4% (mean 10.5%), ``breadth`` alone 0.5-8.8% (mean 4.0%), the whole portfolio
0.0-8.8% (mean 3.3%); each pass takes 20-50 ms in numpy on one core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from planner.search.milp.arena_buffers import Buffer


@dataclass(frozen=True)
class _Arrays:
    """The buffers as arrays: lifetimes, sizes, and each one's breadth (module docstring)."""

    start: np.ndarray
    end: np.ndarray
    size: np.ndarray
    breadth: np.ndarray


def _arrays(buffers: list[Buffer]) -> _Arrays:
    start = np.array([b.start for b in buffers], dtype=np.int64)
    end = np.array([b.end for b in buffers], dtype=np.int64)
    size = np.array([b.size_bytes for b in buffers], dtype=np.int64)
    # Live bytes between consecutive event times (times ranked, so any integer times will do):
    # +size at a start, -size at an end, summed; a buffer's breadth is the maximum over its span.
    times = np.unique(np.concatenate([start, end]))
    s, e = np.searchsorted(times, start), np.searchsorted(times, end)
    delta = np.zeros(len(times) + 1, dtype=np.int64)
    np.add.at(delta, s, size)
    np.add.at(delta, e, -size)
    live = np.cumsum(delta)
    breadth = np.array([live[a:b].max() for a, b in zip(s, e)], dtype=np.int64)
    return _Arrays(start, end, size, breadth)


def place(a: _Arrays, order: np.ndarray | list[int], rule: str) -> np.ndarray:
    """Offsets from placing the buffers in ``order`` by ``rule`` ("best" or "first", module
    docstring). The placed buffers that overlap the next one in time are found with one
    vectorised comparison per buffer: O(n²) element operations, milliseconds for a thousand."""
    n = len(a.size)
    offset = np.zeros(n, dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    for i in order:
        near = np.flatnonzero(placed & (a.start < a.end[i]) & (a.end > a.start[i]))
        by_offset = np.argsort(offset[near], kind="stable")
        lows, highs = offset[near][by_offset], (offset + a.size)[near][by_offset]
        # The free gap before each placed range ends at its low and starts at the highest top
        # of the ranges below it; the one above them all is unbounded.
        tops = np.concatenate(([0], np.maximum.accumulate(highs))) if len(near) else np.zeros(1, dtype=np.int64)
        gaps = lows - tops[:-1]
        fits = np.flatnonzero(gaps >= a.size[i])
        if not len(fits):
            offset[i] = tops[-1]
        else:
            offset[i] = tops[fits[np.argmin(gaps[fits])] if rule == "best" else fits[0]]
        placed[i] = True
    return offset


def _orders(a: _Arrays) -> list[tuple[str, np.ndarray, str]]:
    """(name, order, rule) of the portfolio (module docstring); np.lexsort's last key is the first."""
    n = np.arange(len(a.size))
    return [
        ("best-fit", np.lexsort((n, a.start, -a.size)), "best"),
        ("breadth", np.lexsort((n, a.start, -a.breadth)), "best"),
        ("breadth-size", np.lexsort((n, -a.size, a.start, -a.breadth)), "best"),
        ("breadth-size-first", np.lexsort((n, -a.size, a.start, -a.breadth)), "first"),
        ("breadth-area-first", np.lexsort((n, a.start, -a.breadth * a.size)), "first"),
        ("breadth-late-end", np.lexsort((n, -a.end, -a.breadth)), "best"),
    ]


def best_fit(buffers: list[Buffer]) -> tuple[list[int], int]:
    """Greedy by size with best fit (module docstring): offsets in input order and the arena."""
    if not buffers:
        return [], 0
    a = _arrays(buffers)
    offset = place(a, _orders(a)[0][1], "best")
    return offset.tolist(), int((offset + a.size).max())


@dataclass(frozen=True)
class Greedy:
    """The portfolio's outcome: the best offsets, their arena, which order gave them, and the
    best-fit arena (the reference)."""

    offsets: list[int]
    arena_bytes: int
    name: str
    best_fit_bytes: int
    tried: int


def portfolio(buffers: list[Buffer], lower: int, deadline_s: float) -> Greedy:
    """Try the portfolio's orders until one meets ``lower`` (max-live: then it is optimal) or
    ``deadline_s`` (a ``time.perf_counter`` value) passes; best fit always runs."""
    a = _arrays(buffers)
    best: Greedy | None = None
    for k, (name, order, rule) in enumerate(_orders(a)):
        if best is not None and (best.arena_bytes == lower or time.perf_counter() > deadline_s):
            break
        offset = place(a, order, rule)
        arena = int((offset + a.size).max())
        if best is None or arena < best.arena_bytes:
            reference = arena if best is None else best.best_fit_bytes
            best = Greedy(offset.tolist(), arena, name, reference, k + 1)
        else:
            best = Greedy(best.offsets, best.arena_bytes, best.name, best.best_fit_bytes, k + 1)
    assert best is not None  # best fit always runs
    return best


def lowest_fit(size: int, placed: list[tuple[int, int]]) -> int:
    """Lowest offset where ``size`` bytes fit among the occupied ranges ``placed`` ([lo, hi))."""
    offset = 0
    for lo, hi in sorted(placed):
        if lo - offset >= size:
            return offset
        offset = max(offset, hi)
    return offset
