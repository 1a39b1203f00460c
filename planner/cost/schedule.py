"""Pipeline schedules as explicit per-rank operation orders, timed exactly as a DAG.

Each pipeline rank runs its forward (F) and backward (B) operations for every (chunk, micro-batch)
in the fixed order of the schedule; an operation starts when the rank is free and its input has
arrived (previous chunk's F plus a point-to-point transfer, or next chunk's B plus a transfer).
The finish time of the last operation is then the length of the longest path through the
schedule's dependency DAG — bubbles and stage imbalance (embedding, head, uneven layer counts)
included, no closed form assumed. The orders come from the schedule registry
(planner/schedules.py), which cites each.

The simulation also tracks, per rank, the activation bytes of micro-batches whose forward has run
and whose backward has not — the in-flight memory of that schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.schedules import SCHEDULES


@dataclass(frozen=True)
class ScheduleResult:
    makespan_s: float
    rank_end_s: tuple[float, ...]  # when each rank finishes its last backward
    peak_inflight_bytes: tuple[float, ...]  # per rank
    peak_inflight_microbatches: tuple[float, ...]  # per rank, in units of a full micro-batch of its chunks
    events: tuple[tuple[int, str, int, int, float, float], ...]  # (rank, 'F'/'B', chunk, mb, start, end)
    critical: tuple[PathCounts, ...] = ()  # per rank: the longest path ending at its last op


@dataclass(frozen=True)
class PathCounts:
    """How often a path uses each chunk's F, B and transfer: length = Σ f·F + b·B + c·p2p."""

    f: tuple[int, ...]
    b: tuple[int, ...]
    c: tuple[int, ...]


def rank_order(schedule: str, rank: int, pp: int, m: int, v: int) -> tuple[tuple[str, int, int], ...]:
    """The (op, local chunk, micro-batch) sequence that pipeline rank ``rank`` executes
    (planner.schedules: each schedule's entry owns its order)."""
    return SCHEDULES[schedule].order(rank, pp, m, v)


@lru_cache(maxsize=256)
def _flat_order(schedule: str, rank: int, pp: int, m: int, v: int) -> tuple[tuple[int, int, int, int], ...]:
    """Rank ``rank``'s order as integers for the simulation loop: (op index, input's op index or
    −1, global chunk, 1 for a forward). Op index of (op, j, i): ``(2j + is_backward)·m + i``."""
    n = pp * v
    out = []
    for op, c, i in rank_order(schedule, rank, pp, m, v):
        j = c * pp + rank
        if op == "F":
            out.append((2 * j * m + i, 2 * (j - 1) * m + i if j > 0 else -1, j, 1))
        else:
            dep = 2 * j * m + i if j == n - 1 else (2 * (j + 1) + 1) * m + i
            out.append(((2 * j + 1) * m + i, dep, j, 0))
    return tuple(out)


def _op_key(idx: int, m: int) -> tuple[str, int, int]:
    """(op, global chunk, micro-batch) of a flat op index."""
    q, i = divmod(idx, m)
    return ("B" if q % 2 else "F", q // 2, i)


def simulate(
    schedule: str,
    pp: int,
    m: int,
    v: int,
    fwd_s: list[float],
    bwd_s: list[float],
    p2p_s: list[float],
    act_bytes: list[float],
    keep_events: bool = False,
) -> ScheduleResult:
    """Time a schedule. Lists are indexed by global chunk j = c·pp + r (v·pp entries); ``p2p_s[j]``
    is the transfer from chunk j to j+1 (and of the gradient back)."""
    n = pp * v
    orders = [_flat_order(schedule, r, pp, m, v) for r in range(pp)]
    # Per op index: finish time (−1 = not run yet) and binding predecessor (−1 = none).
    done = [-1.0] * (2 * n * m)
    pred = [-1] * (2 * n * m)
    # Delay between an op's input finishing and the op being able to start: the transfer from
    # the previous chunk (F) or from the next one (B); none for the last chunk's own loss.
    delay_f = [0.0] + [p2p_s[j - 1] for j in range(1, n)]
    delay_b = [p2p_s[j] for j in range(n - 1)] + [0.0]
    last_of = [-1] * pp
    pos = [0] * pp
    free = [0.0] * pp
    events = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(pp):
            order, q, t_free, last = orders[r], pos[r], free[r], last_of[r]
            while q < len(order):
                idx, dep, j, is_f = order[q]
                if dep < 0:
                    ready = 0.0
                else:
                    t = done[dep]
                    if t < 0:
                        break
                    ready = t + (delay_f[j] if is_f else delay_b[j])
                start = ready if ready > t_free else t_free
                end = start + (fwd_s[j] if is_f else bwd_s[j])
                done[idx] = end
                # The binding predecessor: the data dependency if it arrives last, else the rank's previous op.
                pred[idx] = dep if ready >= t_free else last
                last, t_free = idx, end
                if keep_events:
                    events.append((r, "F" if is_f else "B", j, idx % m, start, end))
                q += 1
            if q != pos[r]:
                remaining -= q - pos[r]
                pos[r], free[r], last_of[r] = q, t_free, last
                progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {schedule} deadlocks for pp={pp} m={m} v={v}")
    peak, inflight = inflight_peaks(schedule, pp, m, v, act_bytes)
    paths = tuple(_path_counts(last_of[r], pred, n, m) for r in range(pp))
    return ScheduleResult(max(free), tuple(free), peak, inflight, tuple(events), paths)


@lru_cache(maxsize=256)
def live_vectors(schedule: str, rank: int, pp: int, m: int, v: int) -> tuple[tuple[int, ...], ...]:
    """Distinct live-micro-batch count vectors (per local chunk of ``rank``) right after each
    forward of its order, keeping only those no other vector dominates component-wise (they can
    never be the peak, activation bytes being non-negative), in the order they first occur."""
    live = [0] * v
    seen: dict[tuple[int, ...], None] = {}
    for op, c, _ in rank_order(schedule, rank, pp, m, v):
        live[c] += 1 if op == "F" else -1
        if op == "F":
            seen.setdefault(tuple(live), None)
    # A vector dominated by another is dominated by one with a larger sum, and then by a maximal
    # one: visiting by decreasing sum, comparing against the maximal vectors kept so far suffices.
    # (A gpipe rank over 2,048 micro-batches has 2,048 vectors; pairwise it took minutes.)
    kept: list[tuple[int, ...]] = []
    for a in sorted(seen, key=sum, reverse=True):
        if not any(all(x <= y for x, y in zip(a, b)) for b in kept):
            kept.append(a)
    maximal = set(kept)
    return tuple(a for a in seen if a in maximal)


def inflight_peaks(
    schedule: str, pp: int, m: int, v: int, act_bytes: list[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per rank, the peak activation bytes held (forward run, backward not yet) over its order,
    and that peak in units of a full micro-batch of its chunks. A rank runs its operations in
    order, so this needs the orders only, not the timing: memory can be checked without a
    simulation. The peak is reached right after a forward, at one of ``live_vectors``."""
    peak, inflight = [], []
    for r in range(pp):
        acts = [act_bytes[c * pp + r] for c in range(v)]
        top = max((sum(k * a for k, a in zip(live, acts)) for live in live_vectors(schedule, r, pp, m, v)), default=0.0)
        per_mb = sum(acts)
        peak.append(top)
        inflight.append(top / per_mb if per_mb else 0.0)
    return tuple(peak), tuple(inflight)


def _path_counts(node: int, pred: list[int], n: int, m: int) -> PathCounts:
    """Walk binding predecessors back from ``node``; count F, B and transfers per chunk."""
    f, b, c = [0] * n, [0] * n, [0] * n
    while node >= 0:
        op, j, i = _op_key(node, m)
        (f if op == "F" else b)[j] += 1
        prev = pred[node]
        if prev >= 0:
            pop, pj, pi = _op_key(prev, m)
            if pi == i and ((op == "F" and (pop, pj) == ("F", j - 1)) or (op == "B" and (pop, pj) == ("B", j + 1))):
                c[min(j, pj)] += 1  # crossed the link between chunks j-1|j (F) or j|j+1 (B)
        node = prev
    return PathCounts(tuple(f), tuple(b), tuple(c))


def warmup_paths(schedule: str, pp: int, m: int, v: int) -> list[tuple[int, PathCounts]]:
    """Two schedule paths per rank r, valid for any chunk durations (lower bounds on makespan):

    micro-batch 0 runs forward through every chunk and backward to rank r's last chunk; rank r
    then runs the rest of its order from its first backward. The first path ends at rank r's
    last operation; the second continues that micro-batch's backward down to chunk 0 (rank 0).
    """
    n = pp * v
    out = []
    for r in range(pp):
        order = rank_order(schedule, r, pp, m, v)
        q0 = next(q for q, (op, _, _) in enumerate(order) if op == "B")
        last = (v - 1) * pp + r  # rank r's last chunk: where its first backward runs
        f, b, c = [1] * n, [0] * n, [0] * n
        for j in range(n - 1):
            c[j] += 1  # forward chain crosses every link
        for j in range(last + 1, n):
            b[j] += 1
        for j in range(last, n - 1):
            c[j] += 1  # backward chain back to chunk `last`
        for op, cl, _ in order[q0:]:
            (f if op == "F" else b)[cl * pp + r] += 1
        out.append((r, PathCounts(tuple(f), tuple(b), tuple(c))))
        if r > 0:
            b2, c2 = list(b), list(c)
            for j in range(r):
                b2[j] += 1
                c2[j] += 1
            out.append((0, PathCounts(tuple(f), tuple(b2), tuple(c2))))
    return out
