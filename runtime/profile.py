"""Collective time per kind from the torch profiler, on one profiled step.

The process-group backends record each collective as a profiler event named ``<backend>:<op>``
(``gloo:all_reduce``, ``gloo:all_gather``, ``gloo:send``; ``nccl:...`` on CUDA), which spans
the collective from its start to its completion, waiting for the other ranks included. Summed by
kind here: the time collectives were in flight on this rank, not the part compute did not hide
(a collective that overlaps compute counts whole). On CUDA the NCCL kernels run on their own
stream; the CPU-side event is what is counted, so treat CUDA figures as indicative.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.profiler import ProfilerActivity, profile

BACKENDS = ("gloo:", "nccl:")
# Collective kinds, matched in this order against the op name after the backend prefix
# (reduce_scatter before the others, as its name contains neither all_reduce nor all_gather).
KINDS = ("reduce_scatter", "all_reduce", "all_gather", "all_to_all", "broadcast", "send", "recv", "barrier")


@dataclass
class CommTimes:
    """Seconds per collective kind on the profiled step; empty when not profiled."""

    seconds: dict[str, float] = field(default_factory=dict)


def comm_kind(event_name: str) -> str | None:
    """The collective kind of a profiler event (``gloo:all_gather`` -> ``all_gather``), else None."""
    if not event_name.startswith(BACKENDS):
        return None
    op = event_name.split(":", 1)[1].lower().replace("allreduce", "all_reduce").replace("allgather", "all_gather")
    return next((k for k in KINDS if k in op), "other")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: kineto writes a "USDT: ... profiler_start/stop" line from
    C++ on every start and stop, per rank. Only the start and stop calls run under it."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def profile_comm(enabled: bool) -> Iterator[CommTimes]:
    """Profile the enclosed code when ``enabled`` and fill the yielded record's ``seconds``."""
    times = CommTimes()
    if not enabled:
        yield times
        return
    prof = profile(activities=[ProfilerActivity.CPU])
    with _quiet_stderr():
        prof.__enter__()
    try:
        yield times
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    for event in prof.key_averages():
        kind = comm_kind(event.key)
        if kind is not None:
            times.seconds[kind] = times.seconds.get(kind, 0.0) + event.cpu_time_total / 1e6  # µs -> s
