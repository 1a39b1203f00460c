"""Running a sweep's points: in this process, or on worker processes that Ctrl-C stops at once.

Workers ignore SIGINT (``_quiet``): a Ctrl-C at the terminal reaches the whole process group, and
the sweep's own process alone should handle it, once. On KeyboardInterrupt the pending points are
cancelled and the workers terminated (waiting for them, as ``ProcessPoolExecutor``'s shutdown
does, would finish every running point first); the caller keeps the rows already planned.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator

INTERRUPTED = "interrupted (Ctrl-C) before this point was planned"


def _quiet() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def execute(todo: list[tuple], jobs: int | None, solve: Callable[[tuple], dict]) -> Iterator[tuple]:
    """Yield (row index, key, ``solve(task)``) as points finish, in worker processes when there are
    several (``solve``: planner.commands.sweep.solve_point)."""
    workers = min(jobs or os.cpu_count() or 1, len(todo))
    if workers <= 1:
        for i, key, task in todo:
            yield i, key, solve(task)
        return
    # fork where available: workers inherit the imported planner (spawn would re-import it per
    # worker). All workers are forked at the first submit, before the caller's progress thread.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet)
    try:
        futures = {pool.submit(solve, task): (i, key) for i, key, task in todo}
        for fut in cf.as_completed(futures):
            i, key = futures[fut]
            yield i, key, fut.result()
    except BaseException:  # Ctrl-C (or the caller stopping): no point more
        for proc in list(getattr(pool, "_processes", {}).values()):  # the executor offers no terminate()
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
