"""The data of the memory-reuse problem (planner/search/milp/arena.py): buffers with a lifetime
and a size, the checks every strategy's input and output go through, and the max-live lower
bound."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Buffer:
    """One allocation: alive on ``[start, end)`` (integer time points), ``size_bytes`` bytes."""

    name: str
    start: int
    end: int
    size_bytes: int

    def overlaps(self, other: Buffer) -> bool:
        return self.start < other.end and other.start < self.end


def check_buffers(buffers: list[Buffer]) -> None:
    """One-line errors for buffers no allocator can place."""
    for b in buffers:
        if b.end <= b.start:
            raise ValueError(f"buffer {b.name}: lifetime [{b.start}, {b.end}) is empty; end must exceed start")
        if b.size_bytes <= 0:
            raise ValueError(f"buffer {b.name}: size {b.size_bytes} bytes; sizes must be positive")


def max_live_bytes(buffers: list[Buffer]) -> int:
    """max_t Σ_{i: start_i ≤ t < end_i} size_i, by a sweep over the events (frees first at a tie,
    since lifetimes are half-open)."""
    events = sorted([(b.start, 1, b.size_bytes) for b in buffers] + [(b.end, 0, -b.size_bytes) for b in buffers])
    live = best = 0
    for _, _, d in events:
        live += d
        best = max(best, live)
    return best


def check_packing(buffers: list[Buffer], offsets: tuple[int, ...] | list[int]) -> int:
    """The arena ``offsets`` use; ValueError naming the first two buffers that collide."""
    for i, a in enumerate(buffers):
        for j in range(i + 1, len(buffers)):
            b = buffers[j]
            if a.overlaps(b) and offsets[i] < offsets[j] + b.size_bytes and offsets[j] < offsets[i] + a.size_bytes:
                raise ValueError(f"buffers {a.name} and {b.name} overlap in time and in memory")
    return max((o + b.size_bytes for o, b in zip(offsets, buffers)), default=0)
