"""`autopar explain PLAN.json`: why this plan — counterfactuals, binding constraints, what-ifs.

* Counterfactuals: for each decision d (every searched knob of the registry) and each alternative
  value v, the best plan of the plan's own search space (its recorded knobs) with d forced to v —
  one branch and bound over the outer candidates with d = v (planner.search.bnb), all questions
  sharing one candidate pool — reported as Δ step time (s and %) and Δ peak memory against the
  plan; or why none fits, or why v is invalid (``check_plan``'s arithmetic).
* Recompute per stage and the binding constraint: planner.commands.explain_rows.
* What-ifs: re-plan with ``cluster.gpu.hbm_bytes`` + 1 GiB (a ``--set`` override) and with one
  more node of GPUs, under the same global batch.

One wall-clock budget (``--time-limit``) is shared out in slices; every figure is ``estimate``
of a real plan and carries its question's certificate (status, lower bound, gap).

Ctrl-C ends the questions with what is known: each question made so far with the best plan its
candidates hold and their bounds (``interrupted_outcome``, status ``interrupted`` where unsettled),
``search.interrupted`` true; the CLI prints the report and exits 130.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.cluster import ClusterSpec
from models.errors import SpecError
from models.spec import ModelSpec
from planner.commands.common import TIME_LIMIT_S, Opt
from planner.commands.explain_infeasible import explain_infeasible
from planner.commands.explain_rows import ExplainReport, GiB, binding, delta_row, over_text, recompute_rows
from planner.commands.plan import closest_plan
from planner.config import Parallel, PlanError, Training, check_plan, parse_headroom
from planner.cost.estimate import Estimate, estimate
from planner.inputs import apply_training_sets, build_inputs, override, parse_sets
from planner.knobs import BY_NAME, DECISIONS, SPACE_KNOBS, Knobs
from planner.planfile.build import parallel_dict
from planner.planfile.load import load_plan, plan_inputs
from planner.planfile.schema import SCHEMA_VERSION
from planner.schedules import INTERLEAVED
from planner.search.bnb import Outcome, Pool, best_known, branch_and_bound, interrupted_outcome
from planner.search.candidates import space_of
from planner.search.context import Candidate, SearchContext, SearchStatus
from planner.search.kept_options import kept_sets_allowed

WARM_SHARE = 0.3  # of the budget for the heuristic rounds that give every question a plan
WARM_ROUNDS = 4  # heuristic plans per question at most (its most promising candidates)
EXACT_GAP = 1e-4  # "+1 GiB, same mesh": a re-placement gain is small, so close it almost exactly
EXPLAIN_OPTIONS = (
    Opt(
        "plan_file",
        Path | None,
        None,
        (),
        "Plan JSON to explain (omit it with --infeasible -m -c -b -s).",
        argument=True,
    ),
    Opt("infeasible", bool, False, ("--infeasible",), "No plan fits: the conflicting constraints and what would fit."),
    Opt("time_limit", float, TIME_LIMIT_S, ("--time-limit",), "Wall-clock seconds shared by all the re-plans."),
)


@dataclass
class Problem:
    """The plan's recorded inputs (after --set) and the search space it was chosen from."""

    spec: ModelSpec
    cluster: ClusterSpec
    train: Training
    par: Parallel  # the chosen plan
    knobs: Knobs
    backend: str
    gap: float

    def pool(self, cluster: ClusterSpec | None = None, knobs: Knobs | None = None) -> Pool:
        knobs = knobs or self.knobs
        ctx = SearchContext.build(
            self.spec,
            cluster or self.cluster,
            self.train,
            knobs.options(),
            self.backend,
            self.gap,
            kept_sets_allowed(knobs),
        )
        return Pool(ctx, knobs)


@dataclass
class Task:
    """One question: which candidates answer it, and a starting incumbent if one is known."""

    pool: Pool
    cands: list[Candidate]
    incumbent: Estimate | None = None
    gap: float | None = None  # None: the plan's gap target
    answer: Outcome | None = None
    reason: str | None = None  # why there are no candidates


def load_problem(doc: dict, sets: dict) -> Problem:
    spec, cluster, train, par = plan_inputs(doc)
    if sets.get("model"):
        spec = override(spec, sets["model"], ModelSpec, "model")
    if sets.get("cluster"):
        cluster = override(cluster, sets["cluster"], ClusterSpec, "cluster")
    train = apply_training_sets(train, sets.get("training"))
    raw = {k: v for k, v in (doc["inputs"].get("knobs") or {}).items() if k in SPACE_KNOBS}
    cert = doc["solver"].get("certificate") or {}
    backend = "pulp" if str(doc["solver"]["backend"]).startswith("pulp") else "ortools"
    return Problem(spec, cluster, train, par, Knobs.parse(raw), backend, float(cert.get("gap_target", 0.01)))


def alternatives(prob: Problem, name: str) -> list:
    """Values a decision is forced to: the knob's ``widened`` range (the auto range, widened where
    that is a single value, cp and ep, so the question has an answer) and any value the plan's
    search space listed, without the plan's own."""
    knob, chosen = BY_NAME[name], prob.par.knob_values()
    values = knob.widened(space_of(prob.spec, prob.cluster, prob.train), chosen) if knob.widened else []
    values += [v for v in prob.knobs.given(name) or () if v not in values]
    if knob.kind == "int":
        values = sorted(values)
    return [v for v in values if v != getattr(prob.par, name)]


def question(name: str, value: Any) -> tuple[dict, dict]:
    """(knobs to fix, attributes a candidate must have) for 'decision = value'."""
    if name == "vpp":
        return ({} if value == 1 else {"vpp": (value,), "schedule": (INTERLEAVED.name,)}), {"vpp": value}
    return {name: (value,)}, {name: value}


def invalid_reason(prob: Problem, name: str, value: Any) -> str:
    """Why no candidate has 'name = value': check_plan's arithmetic on the chosen plan with that
    value (dp re-derived to keep the world size), else the search space excludes it."""
    par, n = prob.par.with_(recompute="none", stage_layers=None), prob.cluster.num_gpus
    trial = par.with_(**{name: value})
    if name == "vpp" and value > 1:
        trial = trial.with_(schedule=INTERLEAVED.name)
        if par.pp == 1 and par.dp % 2 == 0:  # interleaving needs a pipeline: try the smallest
            trial = trial.with_(pp=2, dp=par.dp // 2)
    if name in ("tp", "pp", "cp") and n % (trial.tp * trial.pp * trial.cp) == 0:
        trial = trial.with_(dp=n // (trial.tp * trial.pp * trial.cp))
    if name == "dp" and n % (value * par.tp * par.cp) == 0:
        trial = trial.with_(pp=n // (value * par.tp * par.cp))
    try:
        check_plan(trial, prob.train, prob.spec, n)
    except PlanError as exc:
        return str(exc)
    fixed = " ".join(
        f"{BY_NAME[k].flag} {','.join(str(x) for x in v)}"
        for k, v in prob.knobs.values.items()
        if v is not None and k != name
    )
    why = f"no candidate of the plan's search space has {name} = {value}"
    return why + (f" (the plan fixed {fixed})" if fixed else "")


def answer_row(prob: Problem, base: Estimate, value: Any, task: Task) -> dict:
    """One counterfactual: the best plan found for the question, or why there is none."""
    a, pool = task.answer, task.pool
    if not task.cands or a is None:
        return {"value": value, "status": "invalid", "reason": task.reason, "search": None}
    row = {
        "value": value,
        "search": {
            "status": a.status,
            "bound_s": a.bound_s if a.bound_s < float("inf") else None,
            "gap": a.gap,
            "candidates": a.candidates,
            "memory_pruned": a.memory_pruned,
        },
    }
    if a.best is not None:
        return {**row, "status": "fits", "reason": None, **delta_row(base, a.best)}
    if a.status in (SearchStatus.TIME_LIMIT, SearchStatus.INTERRUPTED):
        cut = "within the time limit" if a.status == SearchStatus.TIME_LIMIT else "before Ctrl-C"
        return {**row, "status": "not_found", "reason": f"no plan found {cut} (lower bound {a.bound_s:.3f} s)"}
    cap = pool.ctx.cap_bytes
    live = [c for c in task.cands if c.mem_lb_bytes <= cap]
    if not live:
        c = min(task.cands, key=lambda c: c.mem_lb_bytes)
        reason = (
            f"model states alone need {c.mem_lb_bytes / GiB:.2f} GiB per GPU even at "
            f"{c.par.describe('full')}, over the {cap / GiB:.2f} GiB usable"
        )
    else:
        closest = closest_plan(prob.spec, pool.ctx.cluster, prob.train, [c.par for c in live[:16]], pool.ctx.options)
        reason = (
            (f"closest ({closest[0].par.describe('full')}): " + over_text(closest[0]))
            if closest and closest[0].over
            else "no placement of any candidate fits (placement MILP infeasible)"
        )
    return {**row, "status": "does_not_fit", "reason": reason}


def _what_if_tasks(prob: Problem, base: Estimate) -> list[tuple[dict, Task]]:
    """+1 GiB usable per GPU (same mesh re-placed, and re-planned) and +1 node (re-planned). A
    headroom given as a share of HBM grows with it, so the HBM grows by 1 GiB / (1 - share)."""
    c = prob.cluster
    share, unit = parse_headroom(prob.train.memory_headroom)
    hbm = f"cluster.gpu.hbm_bytes={c.gpu.hbm_bytes + round(GiB / (1 - share) if unit == '%' else GiB)}"
    big = override(c, parse_sets([hbm])["cluster"], ClusterSpec, "cluster")
    pool = prob.pool(big)
    inc = estimate(prob.spec, big, prob.train, prob.par)
    mine = pool.seed(inc)
    _stop_if_interrupted(pool)
    n2 = c.num_gpus + c.gpus_per_node
    sets = [f"cluster.num_nodes={c.num_nodes + 1}", f"cluster.name={c.gpu.name}:{n2}"]
    more = override(c, parse_sets(sets)["cluster"], ClusterSpec, "cluster")
    pool2 = prob.pool(more, Knobs({**prob.knobs.values, "dp": None}))
    grown = Task(pool2, pool2.candidates())
    many = Task(pool, pool.candidates(), inc)
    _stop_if_interrupted(pool, pool2)
    if not grown.cands:
        grown.reason = _grown_reason(prob, more)
    return [
        ({"change": "+1 GiB per GPU, same mesh re-placed", "override": hbm}, Task(pool, [mine], inc, EXACT_GAP)),
        ({"change": "+1 GiB per GPU, re-planned", "override": hbm}, many),
        ({"change": f"+1 node ({n2} GPUs), re-planned", "override": " ".join(sets)}, grown),
    ]


def _grown_reason(prob: Problem, cluster: ClusterSpec) -> str:
    """Why the plan's search space has no candidate on a bigger cluster (the plan's degrees, dp re-derived)."""
    par, n = prob.par.with_(recompute="none", stage_layers=None), cluster.num_gpus
    rest = par.tp * par.pp * par.cp
    try:
        check_plan(par.with_(dp=max(1, n // rest)), prob.train, prob.spec, n)
    except PlanError as exc:
        return f"no candidate of the plan's search space on {n} GPUs, e.g. {exc}"
    return f"no candidate of the plan's search space on {n} GPUs"


def _answer(t: Task, deadline: float) -> Outcome:
    gap = t.pool.ctx.gap if t.gap is None else t.gap
    return branch_and_bound(t.pool, t.cands, best_known(t.cands, t.incumbent), gap, deadline)


def run_tasks(tasks: list[Task], deadline: float, progress=None) -> None:
    """Heuristic rounds (every task's k-th most promising candidate, k = 0, 1, ...) within
    WARM_SHARE of the budget, then equal slices of what is left (a task that certifies early
    leaves its time to the rest), then a second pass over the uncertified ones."""
    now = time.perf_counter()
    warm_end = now + WARM_SHARE * max(0.0, deadline - now)
    for k in range(WARM_ROUNDS):
        for t in tasks:
            if time.perf_counter() < warm_end:
                t.pool.warm(t.cands, k)
    for k, t in enumerate(tasks):
        now = time.perf_counter()
        t.answer = _answer(t, now + max(0.0, deadline - now) / (len(tasks) - k))
        if progress:
            progress(k + 1, len(tasks))
    for t in tasks:
        if t.answer is not None and t.answer.status == SearchStatus.TIME_LIMIT and time.perf_counter() < deadline:
            t.answer = _answer(t, deadline)


def _stop_if_interrupted(*pools: Pool) -> None:
    """Ctrl-C caught while bounding (``Pool.candidates`` records it and goes on) ends the
    questions here: asking the next one would bound every candidate the signal skipped."""
    if any(p.interrupted for p in pools):
        raise KeyboardInterrupt


def _decisions(prob: Problem, pool: Pool, decisions: list[dict], tasks: list[Task]) -> None:
    """Each decision with its alternative values, and one task per distinct question, appended to
    ``decisions`` and ``tasks`` as they are made (Ctrl-C keeps those made so far)."""
    same: dict[frozenset, Task] = {}
    for name in DECISIONS:
        entry: dict[str, Any] = {"decision": name, "chosen": getattr(prob.par, name), "alternatives": []}
        decisions.append(entry)
        for v in alternatives(prob, name):
            cands = pool.candidates(*question(name, v))
            _stop_if_interrupted(pool)
            key = frozenset(c.par for c in cands)  # e.g. vpp 2 and schedule interleaved: one question
            if cands and key not in same:
                same[key] = Task(pool, cands)
                tasks.append(same[key])
            entry["alternatives"].append((v, same.get(key)))


def _ask(
    prob: Problem, base: Estimate, pool: Pool, deadline: float, progress=None
) -> tuple[list[dict], list[Task], list[tuple[dict, Task]], bool]:
    """Make the questions (decisions, what-ifs) and answer them by ``deadline``; Ctrl-C ends with
    every question made so far and what is known of it (``interrupted_outcome``) and True."""
    decisions: list[dict] = []
    tasks: list[Task] = []
    what_if: list[tuple[dict, Task]] = []
    try:
        pool.candidates()
        _stop_if_interrupted(pool)
        pool.seed(base)
        _decisions(prob, pool, decisions, tasks)
        what_if = _what_if_tasks(prob, base)
        # What-ifs first: they are few, and the last slices shrink when earlier solves overrun theirs.
        run_tasks([t for _, t in what_if] + tasks, deadline, progress)
    except KeyboardInterrupt:
        for t in tasks + [t for _, t in what_if]:
            if t.answer is None and t.cands:
                t.answer = interrupted_outcome(t.pool, t.cands, t.incumbent, t.pool.ctx.gap if t.gap is None else t.gap)
        return decisions, tasks, what_if, True
    return decisions, tasks, what_if, False


def explain_plan(doc: dict, sets: dict, time_limit_s: float, progress=None) -> ExplainReport:
    """The explain report for a loaded plan document; see the module docstring."""
    t0 = time.perf_counter()
    prob = load_problem(doc, sets)
    base = estimate(prob.spec, prob.cluster, prob.train, prob.par)
    pool = prob.pool()
    decisions, tasks, what_if, interrupted = _ask(prob, base, pool, t0 + time_limit_s, progress)
    for entry in decisions:
        entry["alternatives"] = [
            answer_row(prob, base, v, t)
            if t
            else {"value": v, "status": "invalid", "reason": invalid_reason(prob, entry["decision"], v)}
            for v, t in entry["alternatives"]
        ]
    rows = [{**info, **answer_row(prob, base, None, t)} for info, t in what_if]
    p = base.predicted
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "explain",
        "plan": {
            "plan": base.par.describe("full"),
            "parallelism": parallel_dict(base.par, p.num_micro_batches),
            "step_time_s": p.step_time_s,
            "tokens_per_s": p.tokens_per_s,
            "peak_memory_bytes": p.peak_memory_bytes,
            "memory_capacity_bytes": p.memory_capacity_bytes,
            "fits": base.fits,
            "model": prob.spec.name,
            "cluster": prob.cluster.name,
            "certificate": {k: doc["solver"].get(k) for k in ("status", "gap")},
        },
        "binding": binding(prob.spec, base, prob.knobs.options()),
        "decisions": decisions,
        "recompute_per_stage": recompute_rows(prob.spec, base),
        "what_if": rows,
        "search": {
            "gap_target": prob.gap,
            "time_limit_s": time_limit_s,
            "wall_s": time.perf_counter() - t0,
            "milps": sum({id(t.pool): t.pool.milps for t in tasks + [t for _, t in what_if]}.values()),
            "candidates": len(pool.cands),
            "interrupted": interrupted,  # Ctrl-C: the questions not settled say so (status interrupted)
        },
    }
    return ExplainReport(report, base.fits, report["search"]["wall_s"], interrupted)


def run_explain(
    plan_file: Path | None, infeasible: bool, problem: dict, time_limit_s: float, sets: dict, progress=None
) -> ExplainReport:
    """`autopar explain`: a plan file's report, or with ``infeasible`` what would make the problem
    (a plan file's, or ``problem``'s model, cluster, batch and sequence) fit."""
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise SpecError(f"--time-limit must be > 0 (got {time_limit_s})")
    given = [k for k in ("model", "cluster", "global_batch", "seq_len") if problem.get(k) is not None]
    if plan_file is not None and given:
        raise SpecError(f"give a plan file or --{given[0].replace('_', '-')} (with --infeasible), not both")
    if plan_file is None and not infeasible:
        raise SpecError(
            "missing PLAN (a plan JSON), or --infeasible with --model, --cluster, --global-batch, --seq-len"
        )
    if not infeasible:
        assert plan_file is not None  # refused above
        return explain_plan(load_plan(plan_file), sets, time_limit_s, progress)
    if plan_file is not None:
        prob = load_problem(load_plan(plan_file), sets)
        return explain_infeasible(prob.spec, prob.cluster, prob.train, prob.knobs, time_limit_s)
    i = build_inputs(
        problem["model"],
        problem["cluster"],
        problem["global_batch"],
        problem["seq_len"],
        problem["dtype"],
        problem["attention"],
        sets,
        None,
        problem.get("stack"),
        problem.get("memory_headroom"),
    )
    return explain_infeasible(i.model, i.cluster, i.training, Knobs({}), time_limit_s)
