"""The runner-ups a search lists beside its plan (``--top-k``)."""

from __future__ import annotations

import time

from planner.config import Parallel
from planner.cost.estimate import Estimate
from planner.search.context import CandidateResult, CandStatus, SearchContext, step_s
from planner.search.heuristics import cheap, paced_try

UNPLACED = (CandStatus.PRUNED_TIME, CandStatus.PRUNED_BOUND, CandStatus.TIME_LIMIT)


def alternatives(
    ctx: SearchContext,
    results: list[CandidateResult],
    incumbent: Estimate | None,
    top_k: int,
    tried: dict[Parallel, Estimate | None],
    deadline: float,
) -> list[CandidateResult]:
    """The ``top_k`` fastest other candidates. Solved candidates bring their MILP plan. Candidates
    pruned by a bound (or cut by the time limit) were never placed: each gets the even split with
    the least uniform recompute that fits (status ``heuristic``, an upper bound on that candidate's
    best), reusing the plans the incumbent heuristic tried, then more in bound order while the bound
    could still beat the k-th plan listed: every cheap one (a small schedule, estimated in
    milliseconds) and up to ``4·top_k`` others (a count, not a time budget, so the list is
    deterministic unless the time limit has already passed; one predicted to end past it is
    skipped, ``paced_try``). Without this the list would skip
    the strongest losers: exactly the ones a bound prunes."""
    same = incumbent.par.with_(recompute="none", stage_layers=None) if incumbent else None
    alts = [r for r in results if r.best is not None and r.par != same]
    pool = [r for r in results if r.status in UNPLACED and r.best is None and r.par != same]
    pool.sort(key=lambda r: (r.par not in tried, r.bound_s, r.par.zero, r.par.tp, r.par.pp, r.par.micro_batch))

    def kth() -> float:
        times = sorted(step_s(r.best) for r in alts)
        return times[top_k - 1] if len(times) >= top_k else float("inf")

    extra = 4 * top_k
    for r in pool if top_k > 0 else []:
        if r.par in tried:
            e = tried[r.par]
        elif r.bound_s >= kth() or time.perf_counter() > deadline:
            break  # bound order from here: no later candidate can beat the k-th either
        else:
            quick = cheap(r.par, ctx.train.global_batch)
            if not quick and extra <= 0 or not paced_try(ctx, r.par, deadline, tried):
                continue  # past the count, or predicted to end past the deadline
            extra -= not quick
            e = tried[r.par]
        if e is not None:
            alts.append(CandidateResult(r.par, r.bound_s, CandStatus.HEURISTIC, e))
    return sorted(alts, key=tie_order)[:top_k]


def tie_order(r: CandidateResult) -> tuple:
    """Runner-ups by step time; equal times (one plan reached through two backends' MILPs, or two
    candidates whose costs tie exactly) go to less sharding, narrower tp, shorter pipelines, then
    the candidate's knobs as text: a fixed rule, so the list is the same bytes on every run and
    with either --solver backend."""
    p = r.par
    return (step_s(r.best), p.zero, p.tp, p.pp, p.micro_batch, repr(p))
