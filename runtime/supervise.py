"""Watching the ranks of one `autopar run` from the launching process (torch-free).

* A rank that fails stops the others, and its traceback is the error (as before).
* A rank stopped (SIGSTOP, a debugger, a swapped-out machine) for ``rank_timeout_s`` is named and
  the run ends: the other ranks would wait for it in their next collective until gloo's timeout,
  and the launcher on the stopped rank forever. A rank hung while running ends the run through
  gloo's own timeout, which the launcher sets to the same ``rank_timeout_s``
  (``init_process_group(timeout=...)``); the ranks still alive then are named.
* SIGTERM or SIGINT to the launcher stops every rank (a stopped one is continued first, so that
  it can die) before the launcher exits: no rank is left training as an orphan, and the fork
  server exits with its parent. Ranks ignore SIGINT themselves (``quiet_rank``), so a Ctrl-C
  to the whole process group prints one line, not a traceback per rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

POLL_S = 0.01


class RunInterrupted(KeyboardInterrupt):
    """The launcher was told to stop (SIGINT or SIGTERM); every rank was stopped first."""


class RankFailure(RuntimeError):
    """A rank failed, stopped or hung; the message names it. ``lost``: (rank, pid, exit code) of
    each rank that died without a Python traceback (killed, ``os._exit``, a lost machine), the
    ranks ``--elastic`` re-plans without; ``step``: the step rank 0 had started, ``losses``: the
    loss of each step it finished (the launcher sets both, from rank 0's step file)."""

    def __init__(self, message: str, lost: tuple[tuple[int, int, int], ...] = ()) -> None:
        super().__init__(message)
        self.lost = lost
        self.step: int | None = None
        self.losses: dict[int, float] = {}


def quiet_rank() -> None:
    """In a rank: leave SIGINT to the launcher, which stops the ranks itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def launcher_signals() -> Iterator[None]:
    """SIGTERM raises ``RunInterrupted`` in the launcher like SIGINT does, so the same cleanup runs
    (only from the main thread, where Python delivers signals)."""

    def on_term(signum: int, frame: Any) -> None:
        raise RunInterrupted(f"stopped by {signal.Signals(signum).name}")

    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _state(pid: int | None) -> str:
    """The process state letter from /proc ("T": stopped, "t": traced); "" when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def stop_all(procs: list) -> None:
    """Terminate every live rank (continued first if stopped), then kill what is left."""
    for p in procs:
        if p.exitcode is None and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def watch(procs: list, store_path: str, timeout_s: float, rank_timeout_s: float) -> None:
    """Wait for all ranks (module docstring); on failure, a stopped rank, the run's timeout or a
    signal, stop every rank and raise (``RankFailure``, ``RunInterrupted``)."""
    deadline, stopped_since = time.monotonic() + timeout_s, dict[int, float]()
    try:
        while any(p.exitcode is None for p in procs):
            now = time.monotonic()
            if any(p.exitcode not in (None, 0) for p in procs):
                alive, lost = [r for r, p in enumerate(procs) if p.exitcode is None], _lost(procs, store_path)
                stop_all(procs)
                raise RankFailure(_failure(procs, store_path, alive, rank_timeout_s), lost)
            for r, p in enumerate(procs):
                if _state(p.pid) not in ("T", "t"):
                    stopped_since.pop(r, None)
                elif now - stopped_since.setdefault(r, now) > rank_timeout_s:
                    stop_all(procs)
                    raise RankFailure(
                        f"rank {r} (pid {p.pid}) has been stopped for {rank_timeout_s:g} s "
                        "(--rank-timeout): the other ranks cannot go on without it; run stopped"
                    )
            if now > deadline:
                stop_all(procs)
                raise RankFailure(f"ranks timed out after {timeout_s:.0f} s")
            time.sleep(POLL_S)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through launcher_signals
        stop_all(procs)
        why = str(exc) or "stopped by SIGINT"
        raise RunInterrupted(f"{why}: {len(procs)} ranks stopped") from None
    if any(p.exitcode != 0 for p in procs):  # every rank ended before a poll saw one fail
        raise RankFailure(_failure(procs, store_path, [], rank_timeout_s), _lost(procs, store_path))


def _lost(procs: list, store_path: str) -> tuple[tuple[int, int, int], ...]:
    """The ranks that ended with an error but left no traceback file: they did not raise (their
    peers do, once the connection to them closes), they were killed or exited."""
    return tuple(
        (r, p.pid, p.exitcode)
        for r, p in enumerate(procs)
        if p.exitcode not in (None, 0) and not Path(f"{store_path}.error{r}").exists()
    )


def _failure(procs: list, store_path: str, alive: list[int], rank_timeout_s: float) -> str:
    """The error of a failed run: exit codes, the ranks that never failed when the others timed out
    (the likely hung ones), and the first rank's traceback."""
    codes = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode != 0}
    errors = sorted(Path(store_path).parent.glob("store.error*"), key=lambda f: f.stat().st_mtime)
    detail = errors[0].read_text() if errors else "no Python traceback: a rank aborted in C++ (see stderr)"
    timed_out = "timed out" in detail.lower() or "timeout" in detail.lower()
    hung = (
        f"; rank(s) {', '.join(map(str, alive))} still running when the others timed out: hung for "
        f"more than --rank-timeout {rank_timeout_s:g} s?"
        if alive and timed_out
        else ""
    )
    return f"ranks failed (exit codes {codes}){hung}; first error:\n{detail}"
