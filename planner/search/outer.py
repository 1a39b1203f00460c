"""The outer search over mesh degrees and knobs, with the placement MILP inside and a certified gap.

1. Enumerate every valid outer candidate allowed by the knob lists (``candidates``).
2. Give each a valid lower bound on its step time that needs no solve (``bounds``): the busiest
   rank must run m micro-batches of at least the average work (of whole blocks), and with one
   chunk per rank the drain path adds a geometric-series bound; a memory bound rejects
   candidates whose model states alone exceed the capacity on average.
3. A heuristic incumbent: the even split under the least uniform recompute that fits
   (``heuristics``).
4. Branch and bound (``bnb``): visit candidates by increasing bound; solve each with the
   placement MILP by constraint generation (``solve``); prune every candidate whose bound is
   within the gap target of the incumbent; resume the unfinished ones with the time left.
5. The runner-ups (``alternatives``) and the certificate (``certificate``): incumbent, global
   best bound, the relative gap and the prune counts.
6. Among equally fast placements of the incumbent, keep the one with less recompute, then
   re-score the plan and its runner-ups with more virtual stages (``polish``; neither is ever
   slower, so the certificate holds).

Ctrl-C (KeyboardInterrupt) during steps 3-5 ends the search with the best plan recorded so far and
status ``interrupted`` (``interrupted_state``); the CLI prints it and exits 130.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from hardware.cluster import ClusterSpec
from models.errors import SpecError
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.estimate import Estimate
from planner.knobs import AUTO_VPP, Knobs
from planner.schedules import SCHEDULES
from planner.search.alternatives import alternatives
from planner.search.bnb import Pool, Progress, branch_and_bound
from planner.search.certificate import Certificate, DeeperRecord, certify
from planner.search.context import Candidate, CandidateResult, CandStatus, SearchContext, SearchStatus, step_s
from planner.search.heuristics import heuristic_incumbent, late_plan
from planner.search.kept_options import kept_sets_allowed
from planner.search.pace import Timed
from planner.search.polish import deepen_all, deeper_record, least_recompute, probe_outside


@dataclass
class SearchResult:
    best: Estimate | None
    alternatives: list[CandidateResult]
    certificate: Certificate
    phases_s: dict[str, float]
    candidates: list[CandidateResult]
    solved_with: tuple[str, ...] = ()  # the backends that answered its MILPs (SearchContext.solved_with)


def _polish(
    ctx: SearchContext, knobs: Knobs, incumbent: Estimate, alts: list[CandidateResult], top_k: int, timed: Timed
) -> tuple[Estimate, list[CandidateResult], dict[str, DeeperRecord]]:
    """Least recompute on ties, then deeper interleaving of the plan and its runner-ups
    (planner.search.polish), within the recompute options the user allows; no trial that
    ``timed`` predicts past the deadline (a deep pipeline's estimate can take seconds)."""
    incumbent = least_recompute(incumbent, None, ctx.options, timed)  # ties go to less recompute
    allowed = knobs.given("schedule") or tuple(SCHEDULES)
    if knobs.given("vpp") is not None or not any(SCHEDULES[s].virtual_stages for s in allowed):
        return incumbent, alts, {}
    runner_ups: list[tuple[str, float, Estimate]] = [(r.status, r.bound_s, r.best) for r in alts if r.best is not None]
    ranked = deepen_all(incumbent, runner_ups, ctx.options, timed)
    polished = deeper_record(incumbent, ranked[0][2], AUTO_VPP)
    alts = [
        CandidateResult(e.par.with_(recompute="none", stage_layers=None), b, CandStatus(st), e)
        for st, b, e in ranked[1 : top_k + 1]
    ]
    return ranked[0][2], alts, polished


def interrupted_state(cands: list[Candidate], heuristic: Estimate | None) -> tuple[Estimate | None, list]:
    """The best plan recorded when the search was interrupted (the heuristic's or a candidate's
    best) and one result per candidate with the bound its record holds: closed-form, raised by a
    solve, or 0 when unbounded, each valid, so the certificate's gap stays true."""
    plans = [e for e in [heuristic, *(c.best for c in cands)] if e is not None]
    best = min(plans, key=step_s) if plans else None
    return best, [CandidateResult(c.par, c.bound_s, CandStatus.TIME_LIMIT, c.best) for c in cands]


def _explore(
    ctx: SearchContext,
    pool: Pool,
    cands: list[Candidate],
    top_k: int,
    deadlines: tuple[float, float],
    progress: Progress | None,
) -> tuple[Estimate | None, list[CandidateResult], list[CandidateResult], tuple[float, float]]:
    """Steps 3-5: heuristic incumbent (until the first deadline), branch and bound and the
    runner-ups (until the second). Returns (plan, runner-ups, results, (end of heuristic, end of
    solve)). Ctrl-C here, or while bounding (``pool.interrupted``), ends with ``interrupted_state``."""
    tried: dict[Parallel, Estimate | None] = {}
    incumbent, gap, deadline = None, ctx.gap, deadlines[1]
    try:
        if pool.interrupted:
            raise KeyboardInterrupt
        incumbent = heuristic_incumbent(ctx, cands, deadlines[0], tried)
        t_heur = time.perf_counter()
        outcome = branch_and_bound(pool, cands, incumbent, gap, deadline, progress)
        incumbent, results = outcome.best, outcome.results
        t_solve = time.perf_counter()
        alts = alternatives(ctx, results, incumbent, top_k, tried, deadline)
        while incumbent and alts and step_s(alts[0].best) < step_s(incumbent):
            # With a loose --gap a bound may prune a candidate whose even split beats the incumbent
            # by up to the gap; found while listing alternatives, it becomes the plan.
            incumbent = alts[0].best
            alts = alternatives(ctx, results, incumbent, top_k, tried, deadline)
    except KeyboardInterrupt:  # Ctrl-C: the best plan so far, its bound over every candidate
        pool.interrupted = True
        incumbent = incumbent or late_plan(ctx, cands, tried)  # a few tries when none was found yet
        (incumbent, results), alts = interrupted_state(cands, incumbent), []
        t_heur = t_solve = time.perf_counter()
    return incumbent, alts, results, (t_heur, t_solve)


def search(
    spec: ModelSpec,
    cluster: ClusterSpec,
    train: Training,
    knobs: Knobs,
    backend: str = "ortools",
    gap: float = 0.01,
    time_limit_s: float = 60.0,
    top_k: int = 3,
    progress: Progress | None = None,
) -> SearchResult:
    """Find the fastest plan that fits; see the module docstring for the algorithm."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    kept = kept_sets_allowed(knobs)
    ctx = SearchContext.build(spec, cluster, train, knobs.options(), backend, gap, kept)
    pool = Pool(ctx, knobs)
    cands = pool.candidates(deadline=deadline)
    if not cands:
        raise SpecError(
            "no valid parallel configuration for these knobs (every combination fails the "
            "divisibility checks); widen --tp/--pp/--micro-batch/--zero/--dp-replicate or check the global batch"
        )
    incumbent, alts, results, times = _explore(ctx, pool, cands, top_k, (t0 + time_limit_s / 2, deadline), progress)
    interrupted, t_alt = pool.interrupted, time.perf_counter()
    polished: dict[str, DeeperRecord] = {}
    timed = Timed(ctx.estimate_pace, deadline)
    if incumbent and t_alt < deadline and not interrupted:  # never slower: the certificate stays true
        incumbent, alts, polished = _polish(ctx, knobs, incumbent, alts, top_k, timed)
    probe = knobs.given("cp") is None and time.perf_counter() < deadline and not interrupted
    outside = probe_outside(incumbent, ctx.options, timed) if incumbent and probe else ()
    t_pol = time.perf_counter()
    cert = certify(results, incumbent, pool.rejected, gap, polished.get("deeper_interleaving"), outside)
    if interrupted:
        cert = dataclasses.replace(cert, status=SearchStatus.INTERRUPTED)
    t_bound, t_heur, t_solve = t0 + pool.enumerate_s + pool.bound_s, *times
    phases = {
        "enumerate_s": pool.enumerate_s,
        "bound_s": pool.bound_s,
        "heuristic_s": t_heur - t_bound,
        "solve_s": t_solve - t_heur,
        "alternatives_s": t_alt - t_solve,
        "polish_s": t_pol - t_alt,
        "total_s": t_pol - t0,
    }
    return SearchResult(incumbent, alts, cert, phases, results, tuple(sorted(ctx.solved_with)))
