"""The branch and bound over outer candidates, shared by ``plan``, ``sweep`` and ``explain``.

A ``Pool`` holds one ``Candidate`` record per outer candidate of a problem: its closed-form bound,
its best plan found and proof state. ``plan`` (and each ``sweep`` point) asks one question of all
of them; ``explain`` asks many ("the best plan with tp forced to 2", "... with ZeRO forced to
1"), each over a subset, and every question reuses what earlier ones proved.

One question (``branch_and_bound``), with ``gap`` the relative optimality target:

1. visit the candidates by increasing bound; a candidate whose model states alone exceed the
   capacity is pruned by memory, one whose bound cannot beat the incumbent by more than the gap
   is pruned by time (``bound·(1 + gap) ≥ incumbent``), one already settled within the gap is
   not solved again;
2. solve the others' placement MILP (``planner.search.solve``) with the cutoff
   ``incumbent / (1 + gap)``; each gets a slice of the time left (an eighth, at least 0.5 s) so
   one hard MILP cannot starve the rest, and none starts when the pace of the solves before it
   (``planner.search.pace``) predicts it would end past the deadline;
3. candidates whose slice ran out while their bound could still beat the incumbent resume from
   their cuts, sharing the time that is left, until they settle or the deadline passes;
4. the question's lower bound is the minimum over its candidates of their best known bound, so
   ``gap = (incumbent − bound) / incumbent`` is certified even when time runs out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from planner.config import Parallel
from planner.cost import memory as mem
from planner.cost.estimate import Estimate
from planner.cost.layer import graph_costs
from planner.knobs import Knobs
from planner.search.bounds import candidate_bound
from planner.search.candidates import enumerate_candidates
from planner.search.context import Candidate, CandidateResult, CandStatus, SearchContext, SearchStatus, step_s
from planner.search.heuristics import mixed_recompute_plan, recompute_proxy_s
from planner.search.pace import Pace, schedule_ops
from planner.search.solve import OPT_TOL, solve

Progress = Callable[[int, int, "Estimate | None", CandidateResult], None]
SETTLED = {CandStatus.OPTIMAL: 0.0, CandStatus.INFEASIBLE: 0.0}  # relative gap each status proves


@dataclass
class Outcome:
    """The answer to one question: its best plan, certified bound, and how each candidate ended."""

    best: Estimate | None
    bound_s: float  # certified lower bound over the question's candidates (inf: none can fit)
    status: SearchStatus
    results: list[CandidateResult]  # one per candidate, in visiting order
    candidates: int
    memory_pruned: int

    @property
    def gap(self) -> float | None:
        if self.best is None:
            return None
        t = step_s(self.best)
        return max(0.0, (t - min(self.bound_s, t)) / t)


class Pool:
    """Outer candidates of one problem with shared proof state."""

    def __init__(self, ctx: SearchContext, knobs: Knobs):
        self.ctx, self.knobs = ctx, knobs
        self.cands: dict[Parallel, Candidate] = {}
        self.milps = 0
        self.rejected = 0  # of the last enumeration
        self.enumerate_s = self.bound_s = 0.0  # seconds the last ``candidates`` call spent on each
        self.interrupted = False  # Ctrl-C arrived while bounding (``candidates``)
        self.pace = Pace()  # of the placement solves (planner.search.pace): one predicted past the deadline waits

    def candidates(
        self, fixed: dict[str, tuple] | None = None, where: dict[str, object] | None = None, deadline: float = math.inf
    ) -> list[Candidate]:
        """Candidates of the base knob space with ``fixed`` knobs replaced, in bound order;
        ``where`` filters by the candidate's resulting attribute (enumeration normalises e.g.
        pp 1 to 1f1b). Past ``deadline`` the rest are not bounded (``unbounded``)."""
        ctx, t0 = self.ctx, time.perf_counter()
        knobs = Knobs({**self.knobs.values, **(fixed or {})})
        pars, self.rejected = enumerate_candidates(ctx.spec, ctx.cluster, ctx.train, knobs)
        t1 = time.perf_counter()
        pars = [par for par in pars if not where or all(getattr(par, k) == v for k, v in where.items())]
        out: list[Candidate] = []
        try:
            for par in pars:
                out.append(self.cand(par) if time.perf_counter() <= deadline else self.unbounded(par))
        except KeyboardInterrupt:  # Ctrl-C while bounding: the rest unbounded, the search told
            self.interrupted = True
            out += [self.unbounded(par) for par in pars[len(out) :]]
        self.enumerate_s, self.bound_s = t1 - t0, time.perf_counter() - t1
        # Deterministic order: ties in bound go to less sharding, narrower tp, shorter pipelines.
        return sorted(out, key=lambda c: (c.bound_s, c.par.zero, c.par.tp, c.par.pp, c.par.micro_batch))

    def cand(self, par: Parallel) -> Candidate:
        """The pool's record of one outer candidate (placement fields are dropped)."""
        par = par.with_(recompute="none", stage_layers=None)
        if par not in self.cands:
            ctx = self.ctx
            costs = graph_costs(ctx.graph, ctx.cluster, ctx.train, par)
            lb, mem_lb = candidate_bound(ctx.graph, costs, ctx.cluster, ctx.train, par)
            self.cands[par] = Candidate(par, costs, lb, mem_lb, lb)
        return self.cands[par]

    @staticmethod
    def unbounded(par: Parallel) -> Candidate:
        """A candidate the time limit left unbounded: 0 s and 0 bytes are valid lower bounds, so
        the certificate stays true (its gap just shows how little was proven); never solved,
        since the search is past its deadline, and not cached."""
        return Candidate(par.with_(recompute="none", stage_layers=None), [], 0.0, 0.0, 0.0)

    def seed(self, est: Estimate) -> Candidate:
        """Record a known plan (the chosen one) as its candidate's best."""
        c = self.cand(est.par)
        if est.fits and step_s(est) < c.step_s:
            c.best = est
        return c

    def warm(self, cands: list[Candidate], k: int) -> None:
        """Heuristic plan (``mixed_recompute_plan``) for the candidate ranked k-th by
        ``recompute_proxy_s`` — the bound order alone favours memory-hungry candidates."""
        ctx = self.ctx
        for c in cands:
            if not c.proxy_s:
                c.proxy_s = recompute_proxy_s(c, ctx.train.global_batch, ctx.cap_bytes, mem.fragmentation(ctx.train))
        live = sorted((c for c in cands if c.mem_lb_bytes <= ctx.cap_bytes), key=lambda c: c.proxy_s)
        if k >= len(live) or live[k].warmed or live[k].proxy_s == float("inf"):
            return
        c = live[k]
        c.warmed = True
        e = mixed_recompute_plan(ctx.spec, ctx.cluster, ctx.train, c.par, ctx.options)
        if e is not None and step_s(e) < c.step_s:
            c.best = e

    def absorb(self, c: Candidate, r: CandidateResult, gap: float) -> None:
        """Fold one solve into the candidate's record: bounds only rise, plans only get faster."""
        self.milps += max(1, r.iterations)
        c.last = r
        if r.best is not None and step_s(r.best) < c.step_s:
            c.best = r.best
        # pruned_bound proves no plan of c beats the cutoff; optimal/gap bound its best plan.
        c.bound_s = max(c.bound_s, r.bound_s if r.status != CandStatus.INFEASIBLE else float("inf"))
        c.settled_gap = min(
            c.settled_gap, SETTLED.get(r.status, gap / 2 if r.status == CandStatus.GAP else float("inf"))
        )


def _visit(pool: Pool, c: Candidate, inc: Estimate | None, gap: float, deadline: float) -> CandidateResult:
    """Settle one candidate of the question: prune it (memory, bound, time) or solve it."""
    ctx, t = pool.ctx, step_s(inc)
    if c.mem_lb_bytes > ctx.cap_bytes:
        return CandidateResult(c.par, float("inf"), CandStatus.PRUNED_MEMORY)
    if c.settled_gap <= gap and c.last is not None:
        return CandidateResult(
            c.par, c.bound_s, c.last.status, c.best, c.last.iterations, c.last.model_size, c.last.solve_s, c.last.cuts
        )
    ops = schedule_ops(c.par, ctx.train.global_batch)
    if c.bound_s * (1 + gap) >= t or not pool.pace.fits(ops, deadline):
        status = CandStatus.PRUNED_TIME if c.bound_s * (1 + gap) >= t else CandStatus.TIME_LIMIT
        return CandidateResult(c.par, c.bound_s, status)
    budget = max(0.5, (deadline - time.perf_counter()) / 8)
    end = min(deadline, time.perf_counter() + budget)
    r = solve(ctx, c.par, c.costs, gap / 2, end, t / (1 + gap), floor_s=c.lb_s, hard_deadline=deadline)
    pool.pace.record(ops, r.first_s or r.solve_s)
    r.bound_s = max(r.bound_s, c.lb_s)
    pool.absorb(c, r, gap)
    return r


def branch_and_bound(
    pool: Pool,
    cands: list[Candidate],
    incumbent: Estimate | None,
    gap: float,
    deadline: float,
    progress: Progress | None = None,
) -> Outcome:
    """Best plan over ``cands`` (in bound order) within ``gap``; see the module docstring."""
    results: list[CandidateResult] = []
    for k, c in enumerate(cands):
        r = _visit(pool, c, incumbent, gap, deadline)
        results.append(r)
        if r.best is not None and step_s(r.best) < step_s(incumbent):
            incumbent = r.best
        if progress and r.iterations:  # solved now or earlier (pruned ones report nothing)
            progress(k + 1, len(cands), incumbent, r)
    incumbent = _resume_unfinished(pool, cands, results, incumbent, gap, deadline)
    return _outcome(pool, cands, results, incumbent, gap)


def _resume_unfinished(
    pool: Pool,
    cands: list[Candidate],
    results: list[CandidateResult],
    incumbent: Estimate | None,
    gap: float,
    deadline: float,
) -> Estimate | None:
    """Step 3: candidates whose time slice ran out while their bound could still beat the
    incumbent resume from their cuts, sharing the time that is left. Without it the search could
    stop at a third of ``--time-limit`` and report ``time_limit`` with a gap above the target."""
    while time.perf_counter() < deadline:
        inc = step_s(incumbent)
        open_ = [
            k
            for k, r in enumerate(results)
            if r.status == CandStatus.TIME_LIMIT and r.iterations and r.bound_s * (1 + gap) < inc
        ]
        if not open_:
            break
        budget, solved = (deadline - time.perf_counter()) / len(open_), 0
        for k in open_:
            old, c = results[k], cands[k]
            ops = schedule_ops(c.par, pool.ctx.train.global_batch)
            if not pool.pace.fits(ops, deadline):  # its first MILP alone would end past the deadline
                continue
            solved += 1
            r = solve(
                pool.ctx,
                c.par,
                c.costs,
                gap / 2,
                min(deadline, time.perf_counter() + budget),
                inc / (1 + gap),
                prior=old,
                floor_s=c.lb_s,
                hard_deadline=deadline,
            )
            pool.pace.record(ops, r.first_s)
            r.bound_s = max(r.bound_s, old.bound_s)
            pool.absorb(c, r, gap)
            results[k] = r
            if r.best is not None and step_s(r.best) < step_s(incumbent):
                incumbent = r.best
        if not solved:
            break
    return incumbent


def interrupted_outcome(pool: Pool, cands: list[Candidate], incumbent: Estimate | None, gap: float) -> Outcome:
    """A question Ctrl-C cut short: the best plan its candidates hold so far (a heuristic's, or a
    solve's before the signal) against the least of their recorded bounds, each valid whether
    closed-form, raised by a solve or 0 when unbounded, so the gap stays true. ``optimal`` or
    ``within_gap`` when those already prove it, ``infeasible`` when no candidate can fit, else
    ``interrupted``."""
    out = _outcome(pool, cands, [], best_known(cands, incumbent), gap)
    return dataclasses.replace(out, status=SearchStatus.INTERRUPTED) if out.status == SearchStatus.TIME_LIMIT else out


def best_known(cands: list[Candidate], incumbent: Estimate | None = None) -> Estimate | None:
    """The fastest plan already known among ``cands`` (and ``incumbent``): a question's start."""
    known = [c.best for c in cands if c.best is not None] + ([incumbent] if incumbent is not None else [])
    return min(known, key=step_s, default=None)


def _outcome(
    pool: Pool, cands: list[Candidate], results: list[CandidateResult], inc: Estimate | None, gap_target: float
) -> Outcome:
    live = [c for c in cands if c.mem_lb_bytes <= pool.ctx.cap_bytes]
    bound = min((c.bound_s for c in live), default=float("inf"))
    if inc is not None:
        bound = min(bound, step_s(inc))
    if not cands:
        status = SearchStatus.NO_CANDIDATES
    elif inc is None:
        status = SearchStatus.INFEASIBLE if bound == float("inf") else SearchStatus.TIME_LIMIT
    else:
        g = (step_s(inc) - bound) / step_s(inc)
        status = (
            SearchStatus.OPTIMAL
            if g <= OPT_TOL
            else SearchStatus.WITHIN_GAP
            if g <= gap_target
            else SearchStatus.TIME_LIMIT
        )
    return Outcome(inc, bound, status, results, len(cands), len(cands) - len(live))
