"""Outer search over mesh degrees and knobs, with the placement MILP inside and a certified gap.

1. Enumerate every valid outer candidate (dp, tp, pp, cp, ep, micro-batch, ZeRO, schedule,
   virtual stages, sequence parallel) allowed by the knob lists.
2. Give each a valid lower bound on its step time that needs no solve (``candidate_bound``):
   the busiest rank must run m micro-batches of at least the average work (of whole blocks:
   ``busiest_rank_work``), and with one chunk per rank the drain path adds the geometric-series
   bound below; a memory bound rejects
   candidates whose model states alone exceed the capacity on average.
3. Visit candidates by increasing bound; solve each with the placement MILP by constraint
   generation (rank bounds + critical-path cuts, ``solve_candidate``) until its bound meets the
   simulated time; prune every candidate whose bound is within the gap target of the incumbent.
   Candidates whose time slice ran out resume from their cuts with the time left
   (``_resume_unfinished``).
4. Report incumbent, global best bound (minimum over unsolved/pruned/unfinished candidates'
   bounds and the solved ones' MILP bounds), the relative gap and the prune counts.
5. Among equally fast placements of the incumbent, keep the one with less recompute
   (``planner.polish.least_recompute``; never slower, so the certificate holds).
6. Re-score the plan and its runner-ups with more virtual stages (``planner.polish.deepen_all``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from hardware.cluster import ClusterSpec
from models.errors import SpecError
from models.graph import build_graph
from models.spec import ModelSpec
from planner import memory as mem
from planner.config import PlanError, Parallel, Training, check_plan
from planner.bounds import candidate_bound
from planner.estimate import Estimate, estimate, fits_in_memory
from planner.layer_cost import graph_costs
from planner.milp.data import build_data
from planner.milp.placement import build_placement_model, read_assignment
from planner.polish import deepen_all, deeper_record, least_recompute
from planner.schedule import warmup_paths

# Above this many schedule operations (2·m·p·v) the exact-schedule LP takes seconds; the
# path-cut LP and the MILP bound such candidates instead.
EXACT_LP_MAX_OPS = 8192
# Relative difference below which a bound and a plan's simulated time count as equal ("optimal"):
# HiGHS's default MIP feasibility tolerance is 1e-6, so a MILP's T may sit that far below the
# schedule its assignment encodes without any path being left uncut.
OPT_TOL = 1e-6
# Virtual stages per rank the exact search tries when `--vpp` is auto (deeper ones: polish.py).
AUTO_VPP = (2,)
KNOBS = ("dp", "tp", "pp", "cp", "ep", "micro_batch", "zero", "schedule", "vpp", "sequence_parallel", "recompute")


@dataclass
class Knobs:
    """Allowed values per knob; None means auto (the documented default range)."""

    values: dict[str, tuple | None] = field(default_factory=dict)

    def get(self, name: str, auto: tuple) -> tuple:
        v = self.values.get(name)
        return tuple(auto) if v is None else tuple(v)


@dataclass
class CandidateResult:
    par: Parallel  # the outer candidate (no placement)
    bound_s: float  # valid lower bound on this candidate's best step time
    status: str  # optimal | gap | time_limit | stalled | infeasible | pruned_time | pruned_bound | pruned_memory
    #               | heuristic (alternatives only)
    best: Estimate | None = None
    iterations: int = 0
    model_size: dict = field(default_factory=dict)
    solve_s: float = 0.0
    cuts: list = field(default_factory=list, repr=False)  # critical-path cuts, to resume an unfinished solve


@dataclass
class SearchResult:
    best: Estimate | None
    alternatives: list[CandidateResult]
    certificate: dict
    phases_s: dict
    candidates: list[CandidateResult]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_candidates(spec: ModelSpec, cluster: ClusterSpec, train: Training, knobs: Knobs) -> tuple[list[Parallel], int]:
    """All outer candidates that pass ``check_plan``; returns them and the count rejected. ZeRO
    over a data-parallel group of one rank (dp·cp = 1) shards nothing: when stage 0 is allowed,
    stages 1-3 there are the same plan (or, for 3, a worse one) and are not listed."""
    n = cluster.num_gpus
    pow2 = [x for x in _divisors(n) if x & (x - 1) == 0]
    tps = knobs.get("tp", [t for t in pow2 if t <= cluster.gpus_per_node and t <= 8])
    pps = knobs.get("pp", [p for p in _divisors(n) if p <= spec.num_layers])
    cps = knobs.get("cp", [c for c in pow2 if c <= 8] if train.seq_len >= 16384 else [1])
    eps = knobs.get("ep", [e for e in pow2 if spec.moe and spec.moe.num_experts % e == 0] if spec.moe else [1])
    mbs = knobs.get("micro_batch", [1, 2, 4, 8])
    zeros = knobs.get("zero", [0, 1, 2, 3])
    scheds = knobs.get("schedule", ["1f1b", "interleaved", "gpipe"])
    vpps = knobs.get("vpp", AUTO_VPP)
    # Under this cost model sequence parallelism never loses when tp > 1 (same TP traffic as
    # RS+AG instead of AR, less norm work, fewer activation bytes), so auto only tries it on.
    sps = knobs.get("sequence_parallel", [True])
    dps = knobs.values.get("dp")
    out, rejected = [], 0
    for tp, pp, cp, ep, mb, zero, sched, sp in itertools.product(tps, pps, cps, eps, mbs, zeros, scheds, sps):
        if tp == 1 and sp:
            sp = False
        if n % (tp * pp * cp) or (pp == 1 and sched != scheds[0]):
            continue
        dp = n // (tp * pp * cp)
        if dps is not None and dp not in dps or dp * cp == 1 and zero > 0 and 0 in zeros:
            continue
        for v in (vpps if sched == "interleaved" and pp > 1 else (1,)):
            par = Parallel(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, micro_batch=mb, zero=zero,
                           schedule=sched if pp > 1 else "1f1b", vpp=v, sequence_parallel=sp)
            try:
                check_plan(par, train, spec, n)
            except PlanError:
                rejected += 1
                continue
            if par.chunks > spec.num_layers:
                rejected += 1
                continue
            out.append(par)
    return out, rejected


def solve_candidate(spec, graph, costs, cluster, train, par: Parallel, options: tuple[str, ...], backend: str,
                    rel_tol: float, deadline: float, cutoff_s: float = float("inf"),
                    prior: CandidateResult | None = None, floor_s: float | None = None) -> CandidateResult:
    """Constraint generation: solve the bound MILP, simulate its plan exactly, add the critical
    paths of every rank as cuts, repeat until the MILP bound meets the simulated step time.

    ``cutoff_s`` (the incumbent shrunk by the gap target) is imposed as ``T ≤ cutoff``: an
    infeasible MILP then proves this candidate cannot beat it (branch-and-bound pruning).
    ``prior``, an unfinished result of this candidate, resumes from its cuts, bound and plan.
    ``floor_s``: the candidate's ``candidate_bound`` (computed here when not given)."""
    d = build_data(graph, costs, cluster, train, par, options)
    t0 = time.perf_counter()
    # The candidate's combinatorial bound (whole blocks per rank, which LP relaxations miss) is
    # also a valid floor on T in the relaxed MILP: it starts branch and bound from there.
    if floor_s is None:  # the search passes the bound it already computed to order candidates
        floor_s = candidate_bound(graph, costs, cluster, train, par)[0]
    if prior is not None:
        return _refine(spec, cluster, train, par, d, backend, rel_tol, deadline, cutoff_s, floor_s, list(prior.cuts),
                       prior.best, prior.bound_s, prior.iterations, t0, prior.solve_s)
    cuts, seen = [], set()
    # Seed the cuts with the warm-up paths of the schedule (valid for any placement) and the
    # critical paths of the default even split under each allowed recompute option:
    # near-optimal placements share most of their binding paths.
    for rp in warmup_paths(par.schedule, par.pp, d.m, par.vpp):
        if rp not in seen:
            seen.add(rp)
            cuts.append(rp)
    lp = _lp_bound(build_placement_model(d, exact=False, cuts=cuts)[0], backend, deadline)
    if par.pp > 1 and lp < cutoff_s and 2 * d.m * par.chunks <= EXACT_LP_MAX_OPS:
        lp = max(lp, _lp_bound(build_placement_model(d, exact=True)[0], backend, deadline))
    if lp == float("inf"):
        return CandidateResult(par, lp, "infeasible", None, 1, {}, time.perf_counter() - t0)
    lp = max(lp, floor_s)
    if lp >= cutoff_s:
        # An LP relaxation (of the rank-bound/warm-up-path model, which already holds memory and
        # recompute, or of the exact schedule) reaches the cutoff: prune without a MILP.
        return CandidateResult(par, lp, "pruned_bound", None, 1, {}, time.perf_counter() - t0)
    best: Estimate | None = None
    for o in options:
        seed = estimate(spec, cluster, train, par.with_(recompute=o))
        new = [(r, p) for r, p in enumerate(seed.critical) if (r, p) not in seen]
        seen.update(new)
        cuts.extend(new)
        if seed.fits and (best is None or seed.predicted["step_time_s"] < best.predicted["step_time_s"]):
            best = seed
    return _refine(spec, cluster, train, par, d, backend, rel_tol, deadline, cutoff_s, floor_s, cuts, best, lp, 0, t0,
                   0.0)


def _refine(spec, cluster, train, par: Parallel, d, backend: str, rel_tol: float, deadline: float, cutoff_s: float,
            floor_s: float, cuts: list, best: Estimate | None, bound: float, it: int, t0: float,
            spent_s: float) -> CandidateResult:
    """The constraint-generation loop of ``solve_candidate`` from a given cut set, plan and bound."""
    seen = set(cuts)
    size, status = {}, "time_limit"
    while True:
        it += 1
        model, v = build_placement_model(d, exact=False, cuts=cuts)
        if cutoff_s < float("inf"):
            model.add(v.T, "<=", cutoff_s, "cutoff[incumbent]")
        model.add(v.T, ">=", floor_s, "floor[candidate_bound]")
        size = model.size
        # The MILP only needs to close to the gap target: its bound stays valid either way.
        sol = model.solve(backend, max(0.05, deadline - time.perf_counter()), rel_gap=max(rel_tol, 1e-9))
        if sol.status == "infeasible":
            # No placement beats the cutoff (or none fits at all when there is no cutoff).
            if cutoff_s < float("inf"):
                status, bound = "pruned_bound", max(bound, cutoff_s)
                if best is not None and best.predicted["step_time_s"] <= bound * (1 + OPT_TOL):
                    status, bound = "optimal", best.predicted["step_time_s"]
            elif best is None:
                status = "infeasible"
            break
        if sol.objective is None:
            break
        bound = max(bound, sol.best_bound if sol.best_bound is not None else 0.0)
        sizes, recompute = read_assignment(d, v, sol.values)
        est = estimate(spec, cluster, train, par.with_(stage_layers=sizes, recompute=recompute))
        if est.fits and (best is None or est.predicted["step_time_s"] < best.predicted["step_time_s"]):
            best = est
        ub = best.predicted["step_time_s"] if best else float("inf")
        if ub <= bound * (1 + max(rel_tol, OPT_TOL)) + 1e-12:
            status = "optimal" if ub <= bound * (1 + OPT_TOL) + 1e-12 else "gap"
            break
        new = [(r, p) for r, p in enumerate(est.critical) if (r, p) not in seen]
        if not new:
            status = "stalled"  # no new path to cut: more time would not help (not resumed)
            break
        if time.perf_counter() > deadline:
            break
        seen.update(new)
        cuts.extend(new)
    return CandidateResult(par, bound, status, best, it, size, spent_s + time.perf_counter() - t0, cuts)


def search(spec: ModelSpec, cluster: ClusterSpec, train: Training, knobs: Knobs, backend: str = "ortools",
           gap: float = 0.01, time_limit_s: float = 60.0, top_k: int = 3, progress=None) -> SearchResult:
    """Find the fastest plan that fits; see the module docstring for the algorithm."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
    options = knobs.get("recompute", ("none", "selective", "full"))
    pars, rejected = enumerate_candidates(spec, cluster, train, knobs)
    if not pars:
        raise SpecError("no valid parallel configuration for these knobs (every combination fails the "
                        "divisibility checks); widen --tp/--pp/--micro-batch or check the global batch")
    t_enum = time.perf_counter()
    cap = mem.capacity_bytes(cluster.gpu.hbm_bytes)
    scored = []
    for par in pars:
        costs = graph_costs(graph, cluster, train, par)
        lb, mem_lb = candidate_bound(graph, costs, cluster, train, par)
        scored.append((lb, mem_lb, par, costs))
    scored.sort(key=lambda x: (x[0], x[2].zero, x[2].tp, x[2].pp, x[2].micro_batch))  # deterministic
    t_bound = time.perf_counter()
    tried: dict = {}
    incumbent = _heuristic_incumbent(spec, cluster, train, scored, options, cap, gap, t0 + time_limit_s / 2, tried)
    t_heur = time.perf_counter()
    results: list[CandidateResult] = []
    for k, (lb, mem_lb, par, costs) in enumerate(scored):
        inc = incumbent.predicted["step_time_s"] if incumbent else float("inf")
        if mem_lb > cap:
            results.append(CandidateResult(par, float("inf"), "pruned_memory"))
            continue
        if lb * (1 + gap) >= inc or time.perf_counter() > deadline:
            results.append(CandidateResult(par, lb, "pruned_time" if lb * (1 + gap) >= inc else "time_limit"))
            continue
        # Each candidate gets a slice of the remaining time so one hard MILP cannot starve the
        # rest; an unfinished candidate keeps its valid bound and enters the certified gap.
        budget = max(0.5, (deadline - time.perf_counter()) / 8)
        r = solve_candidate(spec, graph, costs, cluster, train, par, options, backend, gap / 2,
                            min(deadline, time.perf_counter() + budget), inc / (1 + gap), floor_s=lb)
        r.bound_s = max(r.bound_s, lb)
        results.append(r)
        if r.best and (incumbent is None or r.best.predicted["step_time_s"] < inc):
            incumbent = r.best
        if progress:
            progress(k + 1, len(scored), incumbent, r)
    incumbent = _resume_unfinished(spec, graph, cluster, train, options, backend, gap, deadline, scored, results,
                                   incumbent)
    t_solve = time.perf_counter()
    alternatives = _alternatives(spec, cluster, train, options, results, incumbent, top_k, tried, deadline)
    while incumbent and alternatives and alternatives[0].best.predicted["step_time_s"] < incumbent.predicted["step_time_s"]:
        # With a loose --gap a bound may prune a candidate whose even split beats the incumbent
        # by up to the gap; found while listing alternatives, it becomes the plan.
        incumbent = alternatives[0].best
        alternatives = _alternatives(spec, cluster, train, options, results, incumbent, top_k, tried, deadline)
    t_alt = time.perf_counter()
    polished = {}
    if incumbent:  # neither step makes the plan slower, so the certificate stays true
        incumbent = least_recompute(incumbent)  # ties go to less recompute
        if knobs.values.get("vpp") is None and "interleaved" in knobs.get("schedule", ["interleaved"]):
            ranked = deepen_all(incumbent, [(r.status, r.bound_s, r.best) for r in alternatives])
            polished = deeper_record(incumbent, ranked[0][2], AUTO_VPP)
            incumbent = ranked[0][2]
            alternatives = [CandidateResult(e.par.with_(recompute="none", stage_layers=None), b, st, e)
                            for st, b, e in ranked[1:top_k + 1]]
    t_pol = time.perf_counter()
    return SearchResult(incumbent, alternatives,
                        _certificate(results, incumbent, rejected, gap, outside=bool(polished)) | polished,
                        {"enumerate_s": t_enum - t0, "bound_s": t_bound - t_enum, "heuristic_s": t_heur - t_bound,
                         "solve_s": t_solve - t_heur, "alternatives_s": t_alt - t_solve, "polish_s": t_pol - t_alt,
                         "total_s": t_pol - t0},
                        results)


def _resume_unfinished(spec, graph, cluster, train, options, backend: str, gap: float, deadline: float, scored,
                       results: list[CandidateResult], incumbent: Estimate | None) -> Estimate | None:
    """Second pass: candidates whose time slice ran out while their bound could still beat the
    incumbent resume from their cuts, sharing the time that is left, until they settle or the
    deadline passes. Without it the search could stop at a third of ``--time-limit`` and report
    ``time_limit`` with a gap above the target."""
    costs = {par: c for _, _, par, c in scored}
    floors = {par: lb for lb, _, par, _ in scored}
    while time.perf_counter() < deadline:
        inc = incumbent.predicted["step_time_s"] if incumbent else float("inf")
        open_ = [k for k, r in enumerate(results)
                 if r.status == "time_limit" and r.iterations and r.bound_s * (1 + gap) < inc]
        if not open_:
            break
        budget = (deadline - time.perf_counter()) / len(open_)
        for k in open_:
            old = results[k]
            r = solve_candidate(spec, graph, costs[old.par], cluster, train, old.par, options, backend, gap / 2,
                                min(deadline, time.perf_counter() + budget), inc / (1 + gap), prior=old,
                                floor_s=floors[old.par])
            r.bound_s = max(r.bound_s, old.bound_s)
            results[k] = r
            if r.best and (incumbent is None or r.best.predicted["step_time_s"] < incumbent.predicted["step_time_s"]):
                incumbent = r.best
    return incumbent


def _heuristic_incumbent(spec, cluster, train, scored, options, cap, gap, deadline: float,
                         tried: dict) -> Estimate | None:
    """A first plan to prune against: for candidates in bound order, the default even split with
    the least uniform recompute that fits, until the bound passes the best plan found. Candidates
    whose schedule is cheap to simulate go first (an estimate costs time linear in its 2·m·p·v
    operations, and a deep pipeline over hundreds of micro-batches can take 0.3 s), so a good
    incumbent is found before the expensive ones are tried. Every plan tried is kept in ``tried``
    (candidate -> Estimate or None) for the list of alternatives."""
    best = None
    cheap = [x for x in scored if _cheap(x[2], train)]
    dear = [x for x in scored if x not in cheap]
    for group in (cheap, dear):
        for lb, mem_lb, par, _ in group:
            if mem_lb > cap:
                continue
            if best is not None and lb * (1 + gap) >= best.predicted["step_time_s"] or time.perf_counter() > deadline:
                break
            tried[par] = _least_recompute_that_fits(spec, cluster, train, par, options)
            best = _better(best, tried[par])
    return best


def _cheap(par: Parallel, train: Training) -> bool:
    """Whether the schedule is small enough that estimating it is fast (see _heuristic_incumbent)."""
    return 2 * par.num_micro_batches(train.global_batch) * par.chunks <= EXACT_LP_MAX_OPS


def _least_recompute_that_fits(spec, cluster, train, par: Parallel, options) -> Estimate | None:
    """The estimate under the first uniform recompute option that fits, or None. Memory is checked
    first (no schedule timing), so the options that do not fit cost no simulation."""
    for o in options:
        try:
            if fits_in_memory(spec, cluster, train, par.with_(recompute=o)):
                return estimate(spec, cluster, train, par.with_(recompute=o))
        except PlanError:
            return None
    return None


def _better(a: Estimate | None, b: Estimate | None) -> Estimate | None:
    if b is None:
        return a
    return b if a is None or b.predicted["step_time_s"] < a.predicted["step_time_s"] else a


def _lp_bound(model, backend: str, deadline: float) -> float:
    """Lower bound from a placement model's LP relaxation (block counts fractional); 0 when the
    LP does not finish. The exact schedule form's relaxation is far stronger than the path-cut
    form's for deep pipelines but costs one LP over 2·m·p·v start times; the path-cut form's
    is tiny and already prices memory-forced recompute (the cheap bound in ``candidate_bound``
    assumes none)."""
    for var in model.vars:
        var.integer = False
    sol = model.solve(backend, max(0.05, min(5.0, deadline - time.perf_counter())), rel_gap=1e-9)
    if sol.status == "infeasible":
        return float("inf")
    return sol.objective if sol.status == "optimal" else 0.0


def _alternatives(spec, cluster, train, options, results, incumbent, top_k: int, tried: dict,
                  deadline: float) -> list[CandidateResult]:
    """The ``top_k`` fastest other candidates. Solved candidates bring their MILP plan. Candidates
    pruned by a bound (or cut by the time limit) were never placed: each gets the even split with
    the least uniform recompute that fits (status ``heuristic``, an upper bound on that candidate's
    best), reusing the plans the incumbent heuristic tried, then more in bound order while the bound
    could still beat the k-th plan listed: every cheap one (a small schedule, estimated in
    milliseconds) and up to ``4·top_k`` others (a count, not a time budget, so the list is
    deterministic unless the time limit has already passed). Without this the list would skip
    the strongest losers: exactly the ones a bound prunes."""
    same = incumbent.par.with_(recompute="none", stage_layers=None) if incumbent else None
    alts = [r for r in results if r.best is not None and r.par != same]
    pool = [r for r in results if r.status in ("pruned_time", "pruned_bound", "time_limit") and r.best is None
            and r.par != same]
    pool.sort(key=lambda r: (r.par not in tried, r.bound_s, r.par.zero, r.par.tp, r.par.pp, r.par.micro_batch))

    def kth() -> float:
        times = sorted(r.best.predicted["step_time_s"] for r in alts)
        return times[top_k - 1] if len(times) >= top_k else float("inf")

    extra = 4 * top_k
    for r in pool if top_k > 0 else []:
        if r.par in tried:
            e = tried[r.par]
        elif r.bound_s >= kth() or time.perf_counter() > deadline:
            break  # bound order from here: no later candidate can beat the k-th either
        else:
            cheap = _cheap(r.par, train)
            if not cheap and extra <= 0:
                continue
            extra -= not cheap
            e = tried[r.par] = _least_recompute_that_fits(spec, cluster, train, r.par, options)
        if e is not None:
            alts.append(CandidateResult(r.par, r.bound_s, "heuristic", e))
    return sorted(alts, key=lambda r: r.best.predicted["step_time_s"])[:top_k]


def _certificate(results: list[CandidateResult], incumbent, rejected: int, gap_target: float,
                 outside: bool = False) -> dict:
    """Incumbent, best bound over every candidate, relative gap, and how candidates were settled.
    ``outside``: the plan came from ``deeper_interleaving``, outside the searched space; the bound
    is then the searched space's, and a negative gap says by how much the plan beats all of it."""
    inc = incumbent.predicted["step_time_s"] if incumbent else None
    bounds = [r.bound_s for r in results if r.status not in ("infeasible", "pruned_memory")]
    best_bound = min(bounds) if bounds else None
    if inc is not None and best_bound is not None and not outside:
        best_bound = min(best_bound, inc)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    gap = (inc - best_bound) / inc if inc and best_bound is not None else None
    status = "infeasible" if inc is None else ("optimal" if gap is not None and gap <= OPT_TOL else
                                               "within_gap" if gap is not None and gap <= gap_target else "time_limit")
    return {"status": status, "incumbent_s": inc, "best_bound_s": best_bound, "gap": gap, "gap_target": gap_target,
            "candidates": len(results), "rejected_invalid": rejected, "settled": counts,
            "pruned_by_time_bound": counts.get("pruned_time", 0),
            "pruned_by_memory_bound": counts.get("pruned_memory", 0),
            "pruned_by_milp_bound": counts.get("pruned_bound", 0)}
