"""One outer candidate's placement, solved by constraint generation.

Solve the path-cut placement MILP (planner/search/milp/placement.py), simulate its plan exactly,
add the critical path of every rank as a cut, repeat until the MILP bound meets the simulated step
time. Before any MILP, LP relaxations (the path-cut model's, and for small schedules the exact
schedule model's) may prune the candidate against the cutoff. The same loop resumes an
unfinished solve from its cuts.

Under a time limit, ``hard_deadline`` (the search's, not this candidate's slice) stops the solve
between its pieces: no model is built, and no LP or MILP started, past it or when the pace of the
models solved so far (``SearchContext.milp_pace``, per nonzero) predicts it would end past it;
the result is ``time_limit`` with the bound and plan found so far, both valid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from planner.config import Parallel
from planner.cost.estimate import Estimate, estimate
from planner.cost.layer import LayerCost
from planner.cost.schedule import PathCounts, warmup_paths
from planner.search.bounds import candidate_bound
from planner.search.context import CandidateResult, CandStatus, SearchContext, step_s
from planner.search.kept_options import kept_set_options
from planner.search.milp.data import PlacementData, build_data
from planner.search.milp.model import Model, Solution, SolveStatus
from planner.search.milp.placement import build_placement_model, read_assignment

# Above this many schedule operations (2·m·p·v) the exact-schedule LP takes seconds; the
# path-cut LP and the MILP bound such candidates instead.
EXACT_LP_MAX_OPS = 8192
# Relative difference below which a bound and a plan's simulated time count as equal ("optimal"):
# HiGHS's default MIP feasibility tolerance is 1e-6, so a MILP's T may sit that far below the
# schedule its assignment encodes without any path being left uncut.
OPT_TOL = 1e-6
Cut = tuple[int, PathCounts]


@dataclass(frozen=True)
class _Job:
    """One candidate's solve: its data and the limits it runs under."""

    ctx: SearchContext
    par: Parallel
    data: PlacementData
    rel_tol: float  # the MILP closes to this relative gap (its bound stays valid either way)
    deadline: float  # perf_counter time
    cutoff_s: float  # T ≤ cutoff: infeasible proves the candidate cannot beat the incumbent
    floor_s: float  # the candidate's closed-form bound, a valid floor on T
    hard_deadline: float = math.inf  # the search's deadline: no piece of work starts past it


def solve(
    ctx: SearchContext,
    par: Parallel,
    costs: list[LayerCost],
    rel_tol: float,
    deadline: float,
    cutoff_s: float = float("inf"),
    prior: CandidateResult | None = None,
    floor_s: float | None = None,
    hard_deadline: float = math.inf,
) -> CandidateResult:
    """Solve ``par``'s placement (module docstring). ``cutoff_s`` (the incumbent shrunk by the gap
    target) is imposed as ``T ≤ cutoff``; ``prior``, an unfinished result of this candidate,
    resumes from its cuts, bound and plan; ``floor_s``: its ``candidate_bound`` (computed here
    when not given)."""
    t0 = time.perf_counter()
    if floor_s is None:  # the search passes the bound it already computed to order candidates
        floor_s = candidate_bound(ctx.graph, costs, ctx.cluster, ctx.train, par)[0]
    # A memory-bound candidate may also keep kept sets of its block's Pareto front: more options
    # only lower the MILP's optimum, and the floor (recompute none) stays valid.
    costs, options = kept_set_options(ctx, par, costs)
    job = _Job(
        ctx,
        par,
        build_data(ctx.graph, costs, ctx.cluster, ctx.train, par, options),
        rel_tol,
        deadline,
        cutoff_s,
        floor_s,
        hard_deadline,
    )
    if prior is not None:
        return _refine(job, list(prior.cuts), prior.best, prior.bound_s, prior.iterations, t0, prior.solve_s)
    cuts, seen = [], set()
    # Seed the cuts with the warm-up paths of the schedule (valid for any placement) and the
    # critical paths of the default even split under each allowed recompute option:
    # near-optimal placements share most of their binding paths.
    for rp in warmup_paths(par.schedule, par.pp, job.data.m, par.vpp):
        if rp not in seen:
            seen.add(rp)
            cuts.append(rp)
    lp = _lp_bound(build_placement_model(job.data, exact=False, cuts=cuts)[0], job)
    exact = par.pp > 1 and lp < cutoff_s and 2 * job.data.m * par.chunks <= EXACT_LP_MAX_OPS
    if exact and time.perf_counter() <= hard_deadline:
        lp = max(lp, _lp_bound(build_placement_model(job.data, exact=True)[0], job))
    if lp == float("inf"):
        return CandidateResult(par, lp, CandStatus.INFEASIBLE, None, 1, {}, time.perf_counter() - t0)
    lp = max(lp, floor_s)
    if lp >= cutoff_s:
        # An LP relaxation (of the rank-bound/warm-up-path model, which already holds memory and
        # recompute, or of the exact schedule) reaches the cutoff: prune without a MILP.
        return CandidateResult(par, lp, CandStatus.PRUNED_BOUND, None, 1, {}, time.perf_counter() - t0)
    return _refine(job, cuts, _seed_plans(job, cuts, seen), lp, 0, t0, 0.0)


def _seed_plans(job: _Job, cuts: list[Cut], seen: set) -> Estimate | None:
    """The even split under each allowed recompute option: its critical paths join ``cuts`` and
    the fastest that fits is the first plan (none past the search's deadline)."""
    ctx, par, best = job.ctx, job.par, None
    for o in ctx.options:
        if time.perf_counter() > job.hard_deadline:
            break  # _refine stops at once: time_limit with the LP bound
        seed = estimate(ctx.spec, ctx.cluster, ctx.train, par.with_(recompute=o))
        new = [(r, p) for r, p in enumerate(seed.critical) if (r, p) not in seen]
        seen.update(new)
        cuts.extend(new)
        if seed.fits and seed.predicted.step_time_s < step_s(best):
            best = seed
    return best


def _refine(
    job: _Job, cuts: list[Cut], best: Estimate | None, bound: float, it: int, t0: float, spent_s: float
) -> CandidateResult:
    """The constraint-generation loop of ``solve`` from a given cut set, plan and bound."""
    ctx, par, seen = job.ctx, job.par, set(cuts)
    size, status, first_s = {}, CandStatus.TIME_LIMIT, 0.0
    while True:
        it += 1
        if time.perf_counter() > job.hard_deadline:
            break
        model, v = build_placement_model(job.data, exact=False, cuts=cuts)
        if job.cutoff_s < float("inf"):
            model.add(v.T, "<=", job.cutoff_s, "cutoff[incumbent]")
        model.add(v.T, ">=", job.floor_s, "floor[candidate_bound]")
        size = model.size
        sol = _solve_in_time(job, model, job.deadline, max(job.rel_tol, 1e-9))
        first_s = first_s or time.perf_counter() - t0
        if sol is None:
            break  # predicted to end past the search's deadline
        if sol.status == SolveStatus.INFEASIBLE:
            # No placement beats the cutoff (or none fits at all when there is no cutoff).
            if job.cutoff_s < float("inf"):
                status, bound = CandStatus.PRUNED_BOUND, max(bound, job.cutoff_s)
                if best is not None and step_s(best) <= bound * (1 + OPT_TOL):
                    status, bound = CandStatus.OPTIMAL, step_s(best)
            elif best is None:
                status = CandStatus.INFEASIBLE
            break
        if sol.objective is None:
            break
        bound = max(bound, sol.best_bound if sol.best_bound is not None else 0.0)
        sizes, recompute = read_assignment(job.data, v, sol.values)
        est = estimate(ctx.spec, ctx.cluster, ctx.train, par.with_(stage_layers=sizes, recompute=recompute))
        if est.fits and est.predicted.step_time_s < step_s(best):
            best = est
        ub = step_s(best)
        if ub <= bound * (1 + max(job.rel_tol, OPT_TOL)) + 1e-12:
            status = CandStatus.OPTIMAL if ub <= bound * (1 + OPT_TOL) + 1e-12 else CandStatus.GAP
            break
        new = [(r, p) for r, p in enumerate(est.critical) if (r, p) not in seen]
        if not new:
            status = CandStatus.STALLED  # no new path to cut: more time would not help (not resumed)
            break
        if time.perf_counter() > job.deadline:
            break
        seen.update(new)
        cuts.extend(new)
    return CandidateResult(par, bound, status, best, it, size, spent_s + time.perf_counter() - t0, cuts, first_s)


def _solve_in_time(job: _Job, model: Model, deadline: float, rel_gap: float) -> Solution | None:
    """``model`` solved within ``deadline`` (the candidate's slice) by the search's backend, noting
    which backend answered (after a fallback, not the requested one) and how long it took per
    nonzero; None, and not started, when that pace predicts it would end past ``job.hard_deadline``
    (building the backend's model alone takes seconds at 400,000 nonzeros, whatever the limit)."""
    ctx = job.ctx
    if not ctx.milp_pace.fits(model.nonzeros, job.hard_deadline):
        return None
    t0 = time.perf_counter()
    sol = model.solve(ctx.backend, max(0.05, deadline - t0), rel_gap=rel_gap)
    ctx.milp_pace.record(model.nonzeros, time.perf_counter() - t0)
    if sol.status != SolveStatus.ERROR:  # an error is no answer
        ctx.solved_with.add(sol.backend)
    return sol


def _lp_bound(model: Model, job: _Job) -> float:
    """Lower bound from a placement model's LP relaxation (block counts fractional); 0 when the
    LP does not finish. The exact schedule form's relaxation is far stronger than the path-cut
    form's for deep pipelines but costs one LP over 2·m·p·v start times; the path-cut form's
    is tiny and already prices memory-forced recompute (the cheap bound in ``candidate_bound``
    assumes none)."""
    for var in model.vars:
        var.integer = False
    sol = _solve_in_time(job, model, min(job.deadline, time.perf_counter() + 5.0), 1e-9)
    if sol is None:
        return 0.0  # not started: 0 is a valid bound
    if sol.status == SolveStatus.INFEASIBLE:
        return float("inf")
    return sol.objective if sol.status == SolveStatus.OPTIMAL and sol.objective is not None else 0.0


def solve_candidate(
    spec,
    graph,
    costs,
    cluster,
    train,
    par: Parallel,
    options: tuple[str, ...],
    backend: str,
    rel_tol: float,
    deadline: float,
    cutoff_s: float = float("inf"),
    prior: CandidateResult | None = None,
    floor_s: float | None = None,
) -> CandidateResult:
    """``solve`` for one candidate given loose inputs (scripts, tests): builds the context."""
    ctx = SearchContext(spec, cluster, train, graph, tuple(options), backend)
    return solve(ctx, par, costs, rel_tol, deadline, cutoff_s, prior, floor_s)
