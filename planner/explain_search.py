"""Best plan over a *subset* of the outer candidates, for `autopar explain`'s counterfactuals.

`explain` asks many questions of one problem ("the best plan with tp forced to 2", "... with
ZeRO forced to 1", "... with one more GiB per GPU"). Each is a branch and bound over the outer
candidates that answer it, exactly as ``planner.search.search`` runs over all of them, so they
share one ``Pool``: a candidate's bound, best plan found and proof state are computed once and
reused by every question that contains it.

Per question (``Pool.best_of``), with ``gap`` the relative optimality target:

1. heuristic pass (``Pool.warm``): the even split with each rank's blocks split between two
   adjacent recompute levels to fill its memory (``mixed_recompute_plan``), for the few
   candidates that ``recompute_proxy_s`` ranks first — every question gets a real plan fast;
2. candidates by increasing bound: stop once ``bound·(1 + gap) ≥ incumbent`` (no remaining
   candidate can beat the incumbent by more than the gap); otherwise solve the candidate's
   placement MILP (``planner.search.solve_candidate``) with the cutoff ``incumbent / (1 + gap)``;
3. certificate: the question's lower bound is the minimum over its candidates of their best
   known bound, so ``gap = (incumbent − bound) / incumbent`` is certified even when the time
   slice ends first.

Every number reported is ``estimate`` of a real plan; bounds are only ever reported as bounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from models.graph import build_graph
from planner import memory as mem
from planner.config import PlanError, Parallel
from planner.estimate import Estimate, estimate
from planner.layer_cost import graph_costs
from planner.bounds import candidate_bound
from planner.search import OPT_TOL, Knobs, enumerate_candidates, solve_candidate


@dataclass
class Cand:
    """One outer candidate and what is known about it so far."""

    par: Parallel
    costs: list
    lb_s: float  # closed-form lower bound (planner.bounds.candidate_bound)
    mem_lb_bytes: float  # model states of an average pipeline rank: above capacity = cannot fit
    bound_s: float  # best valid lower bound on any plan of this candidate
    best: Estimate | None = None
    settled_gap: float = float("inf")  # relative gap to which best is proven (0: optimal or infeasible)
    warmed: bool = False
    proxy_s: float = 0.0  # ranking heuristic (recompute_proxy_s), not a bound

    @property
    def step_s(self) -> float:
        return self.best.predicted["step_time_s"] if self.best else float("inf")


@dataclass
class Answer:
    """The best plan found for one question and its certificate."""

    best: Estimate | None
    bound_s: float  # certified lower bound over the question's candidates (inf: none can fit)
    status: str  # optimal | within_gap | time_limit | infeasible | no_candidates
    candidates: int
    memory_pruned: int

    @property
    def gap(self) -> float | None:
        if self.best is None:
            return None
        t = self.best.predicted["step_time_s"]
        return max(0.0, (t - min(self.bound_s, t)) / t)


class Pool:
    """Outer candidates of one (model, cluster, training) with shared proof state."""

    def __init__(self, spec, cluster, train, base_knobs: Knobs, options: tuple[str, ...], backend: str,
                 gap: float):
        self.spec, self.cluster, self.train = spec, cluster, train
        self.base, self.options, self.backend, self.gap = base_knobs, options, backend, gap
        self.graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
        self.cap_bytes = mem.capacity_bytes(cluster.gpu.hbm_bytes)
        self.cands: dict[Parallel, Cand] = {}
        self.milps = 0

    def candidates(self, fixed: dict[str, tuple], where: dict[str, object] | None = None) -> list[Cand]:
        """Candidates of the base knob space with ``fixed`` knobs replaced; ``where`` filters by
        the candidate's resulting attribute (enumeration normalises e.g. pp 1 to 1f1b)."""
        knobs = Knobs({**self.base.values, **fixed})
        pars, _ = enumerate_candidates(self.spec, self.cluster, self.train, knobs)
        out = [self.cand(par) for par in pars if not where or all(getattr(par, k) == v for k, v in where.items())]
        return sorted(out, key=lambda c: (c.bound_s, c.par.zero, c.par.tp, c.par.pp, c.par.micro_batch))

    def cand(self, par: Parallel) -> Cand:
        """The pool's record of one outer candidate (placement fields are dropped)."""
        par = par.with_(recompute="none", stage_layers=None)
        if par not in self.cands:
            costs = graph_costs(self.graph, self.cluster, self.train, par)
            lb, mem_lb = candidate_bound(self.graph, costs, self.cluster, self.train, par)
            c = self.cands[par] = Cand(par, costs, lb, mem_lb, lb)
            c.proxy_s = recompute_proxy_s(c, self.train, self.cap_bytes)
        return self.cands[par]

    def seed(self, est: Estimate) -> Cand:
        """Record a known plan (the chosen one) as its candidate's best."""
        c = self.cand(est.par)
        if est.fits and est.predicted["step_time_s"] < c.step_s:
            c.best = est
        return c

    def warm(self, cands: list[Cand], k: int) -> None:
        """Heuristic plan (``mixed_recompute_plan``) for the candidate ranked k-th by
        ``recompute_proxy_s`` — the bound order alone favours memory-hungry candidates."""
        live = sorted((c for c in cands if c.mem_lb_bytes <= self.cap_bytes), key=lambda c: c.proxy_s)
        if k >= len(live) or live[k].warmed or live[k].proxy_s == float("inf"):
            return
        c = live[k]
        c.warmed = True
        e = mixed_recompute_plan(self.spec, self.cluster, self.train, c.par, self.options)
        if e is not None and e.predicted["step_time_s"] < c.step_s:
            c.best = e

    def best_of(self, cands: list[Cand], deadline: float, incumbent: Estimate | None = None,
                gap: float | None = None) -> Answer:
        """Branch and bound over ``cands`` until certified within ``gap`` (default: the pool's)
        or the deadline."""
        gap = self.gap if gap is None else gap
        live = [c for c in cands if c.mem_lb_bytes <= self.cap_bytes]
        inc = min((c.best for c in live if c.best), key=_t, default=None)
        if incumbent is not None and (inc is None or _t(incumbent) < _t(inc)):
            inc = incumbent
        for c in sorted(live, key=lambda c: c.bound_s):
            if inc is not None and c.bound_s * (1 + gap) >= _t(inc):
                break
            if c.settled_gap <= gap:
                continue
            if time.perf_counter() > deadline:
                break
            self._solve(c, _t(inc) / (1 + gap) if inc else float("inf"), deadline, gap)
            if c.best is not None and (inc is None or c.step_s < _t(inc)):
                inc = c.best
        return self._answer(cands, live, inc, gap)

    def _solve(self, c: Cand, cutoff_s: float, deadline: float, gap: float) -> None:
        r = solve_candidate(self.spec, self.graph, c.costs, self.cluster, self.train, c.par, self.options,
                            self.backend, gap / 2, deadline, cutoff_s, floor_s=c.lb_s)
        self.milps += max(1, r.iterations)
        if r.best is not None and r.best.predicted["step_time_s"] < c.step_s:
            c.best = r.best
        # pruned_bound proves no plan of c beats the cutoff; optimal/gap bound its best plan.
        c.bound_s = max(c.bound_s, r.bound_s if r.status != "infeasible" else float("inf"))
        settled = {"optimal": 0.0, "infeasible": 0.0, "gap": gap / 2}
        c.settled_gap = min(c.settled_gap, settled.get(r.status, float("inf")))

    def _answer(self, cands: list[Cand], live: list[Cand], inc: Estimate | None, gap_target: float) -> Answer:
        bound = min((c.bound_s for c in live), default=float("inf"))
        if inc is not None:
            bound = min(bound, _t(inc))
        if not cands:
            status = "no_candidates"
        elif inc is None:
            status = "infeasible" if bound == float("inf") else "time_limit"
        else:
            gap = (_t(inc) - bound) / _t(inc)
            status = "optimal" if gap <= OPT_TOL else "within_gap" if gap <= gap_target else "time_limit"
        return Answer(inc, bound, status, len(cands), len(cands) - len(live))


def _t(e: Estimate) -> float:
    return e.predicted["step_time_s"]


LEVELS = ("full", "selective", "none")  # most memory-frugal first


def inflight_microbatches(par: Parallel, m: int) -> float:
    """Micro-batches whose activations rank 0 holds at its peak, in units of its whole layers."""
    p, v = par.pp, par.vpp
    if par.schedule == "gpipe":
        return m
    if par.schedule == "interleaved" and p > 1:
        return min(m * v, 2 * (p - 1) + (v - 1) * p + 1) / v
    return min(m, p)


def least_memory_proxy_bytes(c: Cand, train) -> float:
    """Average rank's model states + its blocks' activations at full recompute (ranking only)."""
    blocks = c.costs[1:-1]
    inflight = inflight_microbatches(c.par, c.par.num_micro_batches(train.global_batch))
    return c.mem_lb_bytes + sum(b.act_bytes["full"] for b in blocks) / c.par.pp * inflight


def recompute_proxy_s(c: Cand, train, cap_bytes: float) -> float:
    """A guess at the candidate's best step time, used only to rank candidates for heuristic
    plans: its bound plus the recompute an average rank needs to fit its activations.

    In-flight micro-batches of rank 0: m for GPipe, min(m, pp) for 1F1B, and for interleaved 1F1B
    (Narayanan et al. 2021 §2.2) 2(pp − 1) + (v − 1)·pp + 1 chunk micro-batches of 1/v of the
    rank's layers. Room for activations = capacity less workspace, fragmentation and the average
    rank's model states; the blocks are split between two adjacent recompute levels to fill it
    (as ``mixed_recompute_plan`` does), and their recompute seconds over m micro-batches are added.
    inf when even full recompute does not fit."""
    m = c.par.num_micro_batches(train.global_batch)
    blocks = c.costs[1:-1]
    per_rank = len(blocks) / c.par.pp
    act = {o: sum(b.act_bytes[o] for b in blocks) / len(blocks) * inflight_microbatches(c.par, m) for o in LEVELS}
    rec = {o: sum(b.recompute_s[o] for b in blocks) / len(blocks) * m for o in LEVELS}
    room = (cap_bytes - mem.WORKSPACE_BYTES) / (1 + mem.FRAGMENTATION) - c.mem_lb_bytes
    for lo, hi in (("none", None), ("selective", "none"), ("full", "selective")):
        if per_rank * act[lo] <= room:
            if hi is None:
                return c.lb_s
            k = min(per_rank, (room - per_rank * act[lo]) / (act[hi] - act[lo]))
            return c.lb_s + k * rec[hi] + (per_rank - k) * rec[lo]
    return float("inf")


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
    cap = uniform[levels[0]].predicted["memory_capacity_bytes"]
    ranks = [[i for ch in uniform[levels[0]].chunks if ch.pp_rank == r
              for i in range(ch.first_block, ch.first_block + ch.num_blocks)] for r in range(par.pp)]
    used = {o: [s["memory"]["total_bytes"] for s in e.predicted["stages"]] for o, e in uniform.items()}
    rc = [levels[0]] * spec.num_layers
    extra: list[tuple[int, list[int], str, int, float]] = []  # (rank, its blocks, level, k, bytes/block)
    for r, ids in enumerate(ranks):
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
            for i in ids[:max(0, k)]:
                plan[i] = hi
        e = estimate(spec, cluster, train, par.with_(recompute=tuple(plan)))
        if e.fits:
            return e
        over = dict(e.over)
        extra = [(r, ids, hi, k - (int(over[r] // pb) + 1 if r in over else 0), pb) for r, ids, hi, k, pb in extra]
    best = [u for u in uniform.values() if u.fits]
    return min(best, key=_t) if best else None
