"""Pipeline schedules as explicit per-rank operation orders, timed exactly as a DAG.

Each pipeline rank runs its forward (F) and backward (B) operations for every (chunk, micro-batch)
in the fixed order of the schedule; an operation starts when the rank is free and its input has
arrived (previous chunk's F plus a point-to-point transfer, or next chunk's B plus a transfer).
The finish time of the last operation is then the length of the longest path through the
schedule's dependency DAG — bubbles and stage imbalance (embedding, head, uneven layer counts)
included, no closed form assumed. Orders follow:

- GPipe (Huang et al. 2019): all forwards, then all backwards.
- 1F1B (PipeDream-Flush, Narayanan et al. 2021 §2.2.1): rank r warms up with min(pp-r-1, m)
  forwards, then alternates one forward and one backward, then drains backwards.
- Interleaved 1F1B (Narayanan et al. 2021 §2.2.2, Megatron-LM ``forward_backward_pipelining_with_
  interleaving``): v chunks per rank, chunk c of rank r is model chunk c·pp + r; micro-batches in
  groups of pp; warm-up (pp-r-1)·2 + (v-1)·pp forwards.

The simulation also tracks, per rank, the activation bytes of micro-batches whose forward has run
and whose backward has not — the in-flight memory of that schedule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleResult:
    makespan_s: float
    rank_end_s: tuple[float, ...]  # when each rank finishes its last backward
    peak_inflight_bytes: tuple[float, ...]  # per rank
    peak_inflight_microbatches: tuple[float, ...]  # per rank, in units of a full micro-batch of its chunks
    events: tuple[tuple[int, str, int, int, float, float], ...]  # (rank, 'F'/'B', chunk, mb, start, end)
    critical: tuple["PathCounts", ...] = ()  # per rank: the longest path ending at its last op


@dataclass(frozen=True)
class PathCounts:
    """How often a path uses each chunk's F, B and transfer: length = Σ f·F + b·B + c·p2p."""

    f: tuple[int, ...]
    b: tuple[int, ...]
    c: tuple[int, ...]


def rank_order(schedule: str, rank: int, pp: int, m: int, v: int) -> list[tuple[str, int, int]]:
    """The (op, local chunk, micro-batch) sequence that pipeline rank ``rank`` executes."""
    if pp == 1:  # plain gradient accumulation: each micro-batch's backward right after its forward
        return [x for i in range(m) for x in (("F", 0, i), ("B", 0, i))]
    if schedule == "gpipe":
        fw = [("F", c, i) for i in range(m) for c in range(v)]
        bw = [("B", c, i) for i in range(m) for c in reversed(range(v))]
        return fw + bw
    if schedule == "1f1b" and v == 1:
        return _one_f_one_b([("F", 0, i) for i in range(m)], [("B", 0, i) for i in range(m)],
                            min(pp - rank - 1, m))
    total = m * v
    fw = [("F", (k // pp) % v, (k // (pp * v)) * pp + k % pp) for k in range(total)]
    bw = [("B", v - 1 - (k // pp) % v, (k // (pp * v)) * pp + k % pp) for k in range(total)]
    return _one_f_one_b(fw, bw, min((pp - rank - 1) * 2 + (v - 1) * pp, total))


def _one_f_one_b(fw: list, bw: list, warmup: int) -> list:
    order = fw[:warmup]
    f, b = warmup, 0
    while f < len(fw):
        order += [fw[f], bw[b]]
        f, b = f + 1, b + 1
    return order + bw[b:]


def simulate(schedule: str, pp: int, m: int, v: int, fwd_s: list[float], bwd_s: list[float],
             p2p_s: list[float], act_bytes: list[float], keep_events: bool = False) -> ScheduleResult:
    """Time a schedule. Lists are indexed by global chunk j = c·pp + r (v·pp entries); ``p2p_s[j]``
    is the transfer from chunk j to j+1 (and of the gradient back)."""
    n = pp * v
    orders = [rank_order(schedule, r, pp, m, v) for r in range(pp)]
    done: dict[tuple[str, int, int], float] = {}
    pred: dict[tuple[str, int, int], tuple | None] = {}
    last_of: dict[int, tuple[str, int, int]] = {}
    pos = [0] * pp
    free = [0.0] * pp
    events = []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(pp):
            while pos[r] < len(orders[r]):
                op, c, i = orders[r][pos[r]]
                j = c * pp + r
                ready = _ready_time(op, j, i, n, done, p2p_s)
                if ready is None:
                    break
                start = max(ready, free[r])
                end = start + (fwd_s[j] if op == "F" else bwd_s[j])
                done[(op, j, i)] = end
                # The binding predecessor: the data dependency if it arrives last, else the rank's previous op.
                pred[(op, j, i)] = _data_dep(op, j, i, n) if ready >= free[r] else last_of.get(r)
                last_of[r] = (op, j, i)
                free[r] = end
                if keep_events:
                    events.append((r, op, j, i, start, end))
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {schedule} deadlocks for pp={pp} m={m} v={v}")
    peak, inflight = inflight_peaks(orders, pp, v, act_bytes)
    paths = tuple(_path_counts(last_of[r], pred, n) for r in range(pp))
    return ScheduleResult(max(free), tuple(free), peak, inflight, tuple(events), paths)


def inflight_peaks(orders: list[list[tuple[str, int, int]]], pp: int, v: int,
                   act_bytes: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per rank, the peak activation bytes held (forward run, backward not yet) over its order,
    and that peak in units of a full micro-batch of its chunks. A rank runs its operations in
    order, so this needs the orders only, not the timing: memory can be checked without a
    simulation."""
    peak, inflight = [], []
    for r in range(pp):
        live = top = 0.0
        for op, c, _ in orders[r]:
            a = act_bytes[c * pp + r]
            live += a if op == "F" else 0.0
            top = max(top, live)
            live -= a if op == "B" else 0.0
        per_mb = sum(act_bytes[c * pp + r] for c in range(v))
        peak.append(top)
        inflight.append(top / per_mb if per_mb else 0.0)
    return tuple(peak), tuple(inflight)


def _data_dep(op: str, j: int, i: int, n: int) -> tuple[str, int, int] | None:
    if op == "F":
        return ("F", j - 1, i) if j > 0 else None
    return ("F", j, i) if j == n - 1 else ("B", j + 1, i)


def _path_counts(node, pred: dict, n: int) -> PathCounts:
    """Walk binding predecessors back from ``node``; count F, B and transfers per chunk."""
    f, b, c = [0] * n, [0] * n, [0] * n
    while node is not None:
        op, j, i = node
        (f if op == "F" else b)[j] += 1
        prev = pred[node]
        if prev is not None and prev[2] == i and prev != node and (
                (op == "F" and prev == ("F", j - 1, i)) or (op == "B" and prev == ("B", j + 1, i))):
            c[min(j, prev[1])] += 1  # crossed the link between chunks j-1|j (F) or j|j+1 (B)
        node = prev
    return PathCounts(tuple(f), tuple(b), tuple(c))


def _ready_time(op: str, j: int, i: int, n: int, done: dict, p2p_s: list[float]) -> float | None:
    """When the input of op (F or B of chunk j, micro-batch i) is available, or None if not yet."""
    if op == "F":
        if j == 0:
            return 0.0
        prev = done.get(("F", j - 1, i))
        return None if prev is None else prev + p2p_s[j - 1]
    if j == n - 1:
        return done.get(("F", j, i))
    nxt = done.get(("B", j + 1, i))
    return None if nxt is None else nxt + p2p_s[j]


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
