"""Plans found without a MILP: the incumbent the search prunes against, the plans that stand for
pruned candidates in the list of alternatives, and the ranking proxies ``explain`` warms with.

Every plan here is ``estimate`` of a real plan; the proxies rank candidates and are never bounds.
"""

from __future__ import annotations

import time

from planner.config import Parallel, PlanError
from planner.cost import memory as mem
from planner.cost.estimate import Estimate, estimate, fits_in_memory
from planner.search.context import Candidate, SearchContext, step_s
from planner.search.pace import schedule_ops
from planner.search.solve import EXACT_LP_MAX_OPS

LEVELS = ("full", "selective", "none")  # most memory-frugal first


def cheap(par: Parallel, global_batch: int) -> bool:
    """Whether the schedule is small enough (2·m·p·v operations) that estimating it is fast."""
    return 2 * par.num_micro_batches(global_batch) * par.chunks <= EXACT_LP_MAX_OPS


def least_recompute_that_fits(spec, cluster, train, par: Parallel, options) -> Estimate | None:
    """The estimate under the first uniform recompute option that fits, or None. Memory is checked
    first (no schedule timing), so the options that do not fit cost no simulation."""
    for o in options:
        try:
            if fits_in_memory(spec, cluster, train, par.with_(recompute=o)):
                return estimate(spec, cluster, train, par.with_(recompute=o))
        except PlanError:
            return None
    return None


def paced_try(ctx: SearchContext, par: Parallel, deadline: float, tried: dict[Parallel, Estimate | None]) -> bool:
    """``tried[par]``: its even split with the least uniform recompute that fits, unless the
    problem's pace of such tries (``ctx.estimate_pace``) predicts it would end past ``deadline``
    (then False, and not tried)."""
    ops = schedule_ops(par, ctx.train.global_batch)
    if not ctx.estimate_pace.fits(ops, deadline):
        return False
    t0 = time.perf_counter()
    tried[par] = least_recompute_that_fits(ctx.spec, ctx.cluster, ctx.train, par, ctx.options)
    ctx.estimate_pace.record(ops, time.perf_counter() - t0)
    return True


# Candidates tried after the deadline while no plan has been found (``_late_plan``): a time limit
# shorter than the search still returns a plan when one of them fits (issue 21: --time-limit 1e-9).
LATE_TRIES = 8


def heuristic_incumbent(
    ctx: SearchContext, cands: list[Candidate], deadline: float, tried: dict[Parallel, Estimate | None]
) -> Estimate | None:
    """A first plan to prune against: for candidates in bound order, the default even split with
    the least uniform recompute that fits, until the bound passes the best plan found. Candidates
    whose schedule is cheap to simulate go first (an estimate costs time linear in its 2·m·p·v
    operations, and a deep pipeline over hundreds of micro-batches can take 0.3 s), so a good
    incumbent is found before the expensive ones are tried; one predicted to end past
    ``deadline`` (planner.search.pace, from the tries made) is skipped for the cheaper ones after
    it. Every plan tried is kept in ``tried`` (candidate -> Estimate or None) for the list of
    alternatives."""
    best, batch = None, ctx.train.global_batch
    quick = [c for c in cands if cheap(c.par, batch)]
    dear = [c for c in cands if not cheap(c.par, batch)]
    for group in (quick, dear):
        for c in group:
            if c.mem_lb_bytes > ctx.cap_bytes:
                continue
            if best is not None and c.lb_s * (1 + ctx.gap) >= step_s(best) or time.perf_counter() > deadline:
                break
            if not paced_try(ctx, c.par, deadline, tried):
                continue
            e = tried[c.par]
            if e is not None and (best is None or step_s(e) < step_s(best)):
                best = e
    return best or late_plan(ctx, cands, tried)


def late_plan(ctx: SearchContext, cands: list[Candidate], tried: dict[Parallel, Estimate | None]) -> Estimate | None:
    """Past the deadline with no plan: the first that fits of the ``LATE_TRIES`` most sharded
    candidates (highest ZeRO stage, then most model-parallel ranks: the least memory per GPU), so
    that a limit too short for the search still answers when some plan fits."""

    def most_sharded(c: Candidate) -> tuple:
        p = c.par
        return (-p.zero, -(p.tp * p.pp * p.ep * p.cp), p.micro_batch, p.pp)

    for c in sorted(cands, key=most_sharded)[:LATE_TRIES]:
        if c.par not in tried and c.mem_lb_bytes <= ctx.cap_bytes:
            tried[c.par] = least_recompute_that_fits(ctx.spec, ctx.cluster, ctx.train, c.par, ctx.options)
            if tried[c.par] is not None:
                return tried[c.par]
    return None


def least_memory_proxy_bytes(c: Candidate, global_batch: int) -> float:
    """Average rank's model states + its blocks' activations at full recompute (ranking only)."""
    blocks = c.costs[1:-1]
    inflight = c.par.schedule_spec.inflight_microbatches(c.par.pp, c.par.num_micro_batches(global_batch), c.par.vpp)
    return c.mem_lb_bytes + sum(b.act_bytes["full"] for b in blocks) / c.par.pp * inflight


def recompute_proxy_s(c: Candidate, global_batch: int, cap_bytes: float, frag: float) -> float:
    """A guess at the candidate's best step time, used only to rank candidates for heuristic
    plans: its bound plus the recompute an average rank needs to fit its activations.

    In-flight micro-batches of rank 0 come from the schedule's registry entry (GPipe m, 1F1B
    min(m, pp), interleaved 1F1B 2(pp − 1) + (v − 1)·pp + 1 chunk micro-batches of 1/v of the
    rank's layers). Room for activations = capacity less workspace, fragmentation and the average
    rank's model states; the blocks are split between two adjacent recompute levels to fill it
    (as ``mixed_recompute_plan`` does), and their recompute seconds over m micro-batches are added.
    inf when even full recompute does not fit."""
    m = c.par.num_micro_batches(global_batch)
    blocks = c.costs[1:-1]
    per_rank = len(blocks) / c.par.pp
    inflight = c.par.schedule_spec.inflight_microbatches(c.par.pp, m, c.par.vpp)
    act = {o: sum(b.act_bytes[o] for b in blocks) / len(blocks) * inflight for o in LEVELS}
    rec = {o: sum(b.recompute_s[o] for b in blocks) / len(blocks) * m for o in LEVELS}
    room = (cap_bytes - mem.WORKSPACE_BYTES) / (1 + frag) - c.mem_lb_bytes
    for lo, hi in (("none", None), ("selective", "none"), ("full", "selective")):
        if per_rank * act[lo] <= room:
            if hi is None:
                return c.lb_s
            k = min(per_rank, (room - per_rank * act[lo]) / (act[hi] - act[lo]))
            return c.lb_s + k * rec[hi] + (per_rank - k) * rec[lo]
    return float("inf")


def _rank_blocks(e: Estimate, pp: int) -> list[list[int]]:
    return [
        [i for ch in e.chunks if ch.pp_rank == r for i in range(ch.first_block, ch.first_block + ch.num_blocks)]
        for r in range(pp)
    ]


def mixed_recompute_plan(spec, cluster, train, par: Parallel, options: tuple[str, ...]) -> Estimate | None:
    """Even split; on each pipeline rank k blocks one recompute level lower than the rest, k the
    most that fits. Memory of a rank is affine in its blocks' options (activations × in-flight
    micro-batches, plus 5% fragmentation), so k comes from the uniform estimates by linear
    interpolation, ``k = ⌊(capacity − M_lo) / ((M_hi − M_lo) / blocks)⌋``, and is verified by
    ``estimate`` (lowered on the ranks still over, at most three tries). Between adjacent levels
    this is the per-rank optimum of the placement MILP's memory row when selective recompute
    lies on the (memory, time) hull, which it does for transformer blocks."""
    levels = [o for o in LEVELS if o in options]
    uniform = {}
    for o in levels:
        try:
            uniform[o] = estimate(spec, cluster, train, par.with_(recompute=o))
        except PlanError:
            return None
    cap = uniform[levels[0]].predicted.memory_capacity_bytes
    used = {o: [s.memory.total_bytes for s in e.predicted.stages] for o, e in uniform.items()}
    rc = [levels[0]] * spec.num_layers
    extra: list[tuple[int, list[int], str, int, float]] = []  # (rank, its blocks, level, k, bytes/block)
    for r, ids in enumerate(_rank_blocks(uniform[levels[0]], par.pp)):
        fit = [i for i, o in enumerate(levels) if used[o][r] <= cap]
        if not fit:
            return None
        lo = levels[fit[-1]]
        for i in ids:
            rc[i] = lo
        if fit[-1] + 1 < len(levels) and ids:
            hi = levels[fit[-1] + 1]
            per_block = (used[hi][r] - used[lo][r]) / len(ids)
            k = min(len(ids), int((cap - used[lo][r]) // per_block)) if per_block > 0 else len(ids)
            extra.append((r, ids, hi, k, per_block))
    for _ in range(3):
        plan = list(rc)
        for _r, ids, hi, k, _pb in extra:
            for i in ids[: max(0, k)]:
                plan[i] = hi
        e = estimate(spec, cluster, train, par.with_(recompute=tuple(plan)))
        if e.fits:
            return e
        over = dict(e.over)
        extra = [(r, ids, hi, k - (int(over[r] // pb) + 1 if r in over else 0), pb) for r, ids, hi, k, pb in extra]
    best = [u for u in uniform.values() if u.fits]
    return min(best, key=step_s) if best else None
