"""The CPU start method for rank and helper processes: a fork server with torch preloaded.

A fork server is a clean, single-threaded process: children forked from it start in
milliseconds like ``fork`` but never inherit a lock held by another thread of the caller (a
pytest-xdist worker's I/O thread deadlocked plain ``fork``). Used by :func:`runtime.launch.run`
for CPU ranks and by :func:`runtime.measure.measure_saved_bytes_per_layer` for its tp > 1 child.

Kept apart from :mod:`runtime.launch` so that measuring does not import the launcher (and the
training loop behind it). The preload list names modules as strings, so it imports none of them
here; the server imports them once, and every child starts with them loaded.
"""

from __future__ import annotations

from multiprocessing.context import ForkServerContext

import torch.multiprocessing as mp

PRELOAD = ("torch", "torch.distributed", "runtime.train", "runtime.parallelize")


def cpu_context() -> ForkServerContext:
    """A fork-server multiprocessing context with torch and the runtime preloaded."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx
