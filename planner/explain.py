"""`autopar explain PLAN.json`: why this plan — counterfactuals, binding constraints, what-ifs.

* Counterfactuals: for each decision d (tp, pp, dp, cp, ep, ZeRO stage, micro-batch, schedule,
  virtual stages, sequence parallel) and each alternative value v, the best plan of the plan's
  own search space (its recorded knobs) with d forced to v — a branch and bound over the outer
  candidates with d = v (planner.explain_search), all questions sharing one candidate pool —
  reported as Δ step time (s and %) and Δ peak memory against the plan; or why none fits, or
  why v is invalid (``check_plan``'s arithmetic).
* Recompute per stage: every block of one pipeline stage forced to none / selective / full on
  the chosen plan, scored by ``estimate``.
* Binding constraints: the stage with the least memory headroom, and whether memory or time
  binds: one block of that stage one allowed recompute level lower (the smallest move towards a
  faster step) no longer fits (memory binds), or still fits or there is none to lower (time).
* What-ifs: re-plan with ``cluster.gpu.hbm_bytes`` + 1 GiB (a ``--set`` override) and with one
  more node of GPUs, under the same global batch.

One wall-clock budget (``--time-limit``) is shared out in slices; every figure is ``estimate``
of a real plan and carries its question's certificate (status, lower bound, gap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import ValidationError

from hardware.cluster import ClusterSpec
from models.errors import SpecError, format_validation_error
from models.spec import ModelSpec
from planner.config import RECOMPUTE_OPTIONS, SCHEDULES, Parallel, PlanError, Training, check_plan
from planner.estimate import Estimate, estimate, time_components
from planner.explain_search import Answer, Cand, Pool
from planner.inputs import apply_training_sets, parse_sets
from planner.plan import plan_inputs
from planner.plan_cli import closest_plan, parse_knobs
from planner.render import SCHEMA_VERSION, parallel_dict
from planner.search import KNOBS, Knobs

GiB = 2**30
DECISIONS = ("tp", "pp", "dp", "cp", "ep", "zero", "micro_batch", "schedule", "vpp", "sequence_parallel")
WARM_SHARE = 0.3  # of the budget for the heuristic rounds that give every question a plan
WARM_ROUNDS = 4  # heuristic plans per question at most (its most promising candidates)
EXACT_GAP = 1e-4  # "+1 GiB, same mesh": a re-placement gain is small, so close it almost exactly


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
        return Pool(self.spec, cluster or self.cluster, self.train, knobs or self.knobs,
                    self.knobs.get("recompute", RECOMPUTE_OPTIONS), self.backend, self.gap)


@dataclass
class Task:
    """One question: which candidates answer it, and a starting incumbent if one is known."""

    pool: Pool
    cands: list[Cand]
    incumbent: Estimate | None = None
    gap: float | None = None  # None: the plan's gap target
    answer: Answer | None = None
    reason: str | None = None  # why there are no candidates


def override(obj, overrides: dict, cls, what: str):
    """A resolved spec with ``--set`` dotted-path overrides applied and re-validated."""
    data = obj.model_dump()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {what}.{dotted}: {key} is not a section")
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"{what} with --set overrides")) from None


def load_problem(doc: dict, sets: dict) -> Problem:
    spec, cluster, train, par = plan_inputs(doc)
    if sets.get("model"):
        spec = override(spec, sets["model"], ModelSpec, "model")
    if sets.get("cluster"):
        cluster = override(cluster, sets["cluster"], ClusterSpec, "cluster")
    train = apply_training_sets(train, sets.get("training"))
    raw = {k: v for k, v in (doc["inputs"].get("knobs") or {}).items() if k in KNOBS}
    cert = doc["solver"].get("certificate") or {}
    backend = "pulp" if str(doc["solver"]["backend"]).startswith("pulp") else "ortools"
    return Problem(spec, cluster, train, par, parse_knobs(raw), backend, float(cert.get("gap_target", 0.01)))


def describe(par) -> str:
    rc = par.recompute if isinstance(par.recompute, str) else \
        ", ".join(f"{par.recompute.count(o)} {o}" for o in RECOMPUTE_OPTIONS if par.recompute.count(o))
    return (f"dp{par.dp} tp{par.tp} pp{par.pp} cp{par.cp} ep{par.ep} zero{par.zero} mb{par.micro_batch} "
            f"{par.schedule}{f' v{par.vpp}' if par.vpp > 1 else ''}{' sp' if par.sequence_parallel else ''}"
            f" · recompute {rc}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def alternatives(prob: Problem, name: str) -> list:
    """Values a decision is forced to: the planner's auto range, widened where the auto range is a
    single value (cp, ep) so the question has an answer."""
    n, spec, chosen = prob.cluster.num_gpus, prob.spec, prob.par
    pow2 = [x for x in _divisors(n) if x & (x - 1) == 0]
    table = {
        "tp": [t for t in pow2 if t <= min(prob.cluster.gpus_per_node, 8)],
        "pp": [p for p in _divisors(n) if p <= spec.num_layers],
        "dp": [d for d in _divisors(n) if prob.train.global_batch % d == 0],
        "cp": [c for c in pow2 if c <= 8],
        "ep": [e for e in pow2 if spec.moe.num_experts % e == 0] if spec.moe else [1, 2],
        "zero": [0, 1, 2, 3],
        "micro_batch": sorted({1, 2, 4, 8} | set(prob.knobs.values.get("micro_batch") or ())),
        "schedule": list(SCHEDULES),
        "vpp": [1, 2, 4],
        "sequence_parallel": [False, True],
    }
    return [v for v in table[name] if v != getattr(chosen, name)]


def question(name: str, value) -> tuple[dict, dict]:
    """(knobs to fix, attributes a candidate must have) for 'decision = value'."""
    if name == "vpp":
        return ({} if value == 1 else {"vpp": (value,), "schedule": ("interleaved",)}), {"vpp": value}
    return {name: (value,)}, {name: value}


def invalid_reason(prob: Problem, name: str, value) -> str:
    """Why no candidate has 'name = value': check_plan's arithmetic on the chosen plan with that
    value (dp re-derived to keep the world size), else the search space excludes it."""
    par, n = prob.par.with_(recompute="none", stage_layers=None), prob.cluster.num_gpus
    trial = par.with_(**{name: value})
    if name == "vpp" and value > 1:
        trial = trial.with_(schedule="interleaved")
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
    fixed = " ".join(f"--{k.replace('_', '-')} {','.join(str(x) for x in v)}"
                     for k, v in prob.knobs.values.items() if v is not None and k != name)
    why = f"no candidate of the plan's search space has {name} = {value}"
    return why + (f" (the plan fixed {fixed})" if fixed else "")


def _delta(base: Estimate, e: Estimate) -> dict:
    p, b = e.predicted, base.predicted
    return {"step_time_s": p["step_time_s"], "delta_step_time_s": p["step_time_s"] - b["step_time_s"],
            "delta_step_time_pct": 100 * (p["step_time_s"] / b["step_time_s"] - 1),
            "tokens_per_s": p["tokens_per_s"], "peak_memory_bytes": p["peak_memory_bytes"],
            "delta_peak_memory_bytes": p["peak_memory_bytes"] - b["peak_memory_bytes"],
            "memory_capacity_bytes": p["memory_capacity_bytes"],
            "plan": describe(e.par), "parallelism": parallel_dict(e.par, p["num_micro_batches"])}


def over_text(e: Estimate) -> str:
    r, over = max(e.over, key=lambda x: x[1])
    cap = e.predicted["memory_capacity_bytes"]
    return f"stage {r} needs {(cap + over) / GiB:.2f} GiB, {over / GiB:.2f} GiB over the {cap / GiB:.2f} GiB usable"


def answer_row(prob: Problem, pool: Pool, base: Estimate, value, task: Task) -> dict:
    """One counterfactual: the best plan found for the question, or why there is none."""
    a = task.answer
    if not task.cands:
        return {"value": value, "status": "invalid", "reason": task.reason, "search": None}
    row = {"value": value, "search": {"status": a.status, "bound_s": a.bound_s if a.bound_s < float("inf") else None,
                                      "gap": a.gap, "candidates": a.candidates, "memory_pruned": a.memory_pruned}}
    if a.best is not None:
        return {**row, "status": "fits", "reason": None, **_delta(base, a.best)}
    if a.status == "time_limit":
        return {**row, "status": "not_found", "reason": "no plan found within the time limit "
                f"(lower bound {a.bound_s:.3f} s)"}
    live = [c for c in task.cands if c.mem_lb_bytes <= pool.cap_bytes]
    if not live:
        c = min(task.cands, key=lambda c: c.mem_lb_bytes)
        reason = (f"model states alone need {c.mem_lb_bytes / GiB:.2f} GiB per GPU even at {describe(c.par)}, "
                  f"over the {pool.cap_bytes / GiB:.2f} GiB usable")
    else:
        closest = closest_plan(prob.spec, pool.cluster, prob.train, [c.par for c in live[:16]])
        reason = (f"closest ({describe(closest[0].par)}): " + over_text(closest[0])) if closest and closest[0].over \
            else "no placement of any candidate fits (placement MILP infeasible)"
    return {**row, "status": "does_not_fit", "reason": reason}


def recompute_rows(prob: Problem, base: Estimate) -> list[dict]:
    """Every block of one stage forced to each recompute option, the rest of the plan unchanged."""
    blocks = [base.par.recompute_of(i) for i in range(prob.spec.num_layers)]
    out = []
    for ch in base.chunks:
        ids = range(ch.first_block, ch.first_block + ch.num_blocks)
        chosen = [blocks[i] for i in ids]
        row = {"stage": ch.index, "pp_rank": ch.pp_rank, "layers": [ch.first_block, ch.first_block + ch.num_blocks],
               "chosen": ", ".join(f"{chosen.count(o)} {o}" for o in RECOMPUTE_OPTIONS if chosen.count(o)) or "-",
               "alternatives": []}
        for opt in RECOMPUTE_OPTIONS:
            if not chosen or all(x == opt for x in chosen):
                continue
            rc = tuple(opt if i in ids else o for i, o in enumerate(blocks))
            e = estimate(prob.spec, prob.cluster, prob.train, base.par.with_(recompute=rc))
            row["alternatives"].append({"value": opt, "status": "fits" if e.fits else "does_not_fit",
                                        "reason": None if e.fits else over_text(e), **_delta(base, e)})
        out.append(row)
    return out


def binding(prob: Problem, base: Estimate) -> dict:
    """Tightest stage, its headroom, and whether memory or time binds (module docstring)."""
    p = base.predicted
    cap = p["memory_capacity_bytes"]
    stages = [{"pp_rank": s["pp_rank"], "used_bytes": s["memory"]["total_bytes"],
               "headroom_bytes": cap - s["memory"]["total_bytes"]} for s in p["stages"]]
    tight = min(stages, key=lambda s: s["headroom_bytes"])
    r = tight["pp_rank"]
    used = f"stage {r} uses {tight['used_bytes'] / GiB:.2f} of {cap / GiB:.2f} GiB " \
           f"({tight['headroom_bytes'] / GiB:.2f} GiB headroom)"
    comps = time_components(p)
    top = max(comps, key=comps.get)
    out = {"tightest_stage": r, "stages": stages, "capacity_bytes": cap, "time_components_s": comps,
           "largest_time_component": top, "relaxation": None}
    ids = [i for ch in base.chunks if ch.pp_rank == r for i in range(ch.first_block, ch.first_block + ch.num_blocks)]
    allowed = [o for o in RECOMPUTE_OPTIONS if o in prob.knobs.get("recompute", RECOMPUTE_OPTIONS)]  # least first
    lower = {o: ([x for x in allowed if RECOMPUTE_OPTIONS.index(x) < RECOMPUTE_OPTIONS.index(o)] or [None])[-1]
             for o in RECOMPUTE_OPTIONS}
    movable = [i for i in ids if lower[base.par.recompute_of(i)] is not None]
    block = max(movable, key=lambda i: (RECOMPUTE_OPTIONS.index(base.par.recompute_of(i)), i), default=None)
    if not base.fits:
        return {**out, "binds": "memory", "text": f"the plan does not fit under these inputs: {over_text(base)}"}
    if block is None:
        return {**out, "binds": "time", "text": f"{used}; no recompute to lower on it, so memory does not bind: "
                f"the step is set by time, largest component {top} ({comps[top]:.3f} s of {p['step_time_s']:.3f} s)"}
    old, new = base.par.recompute_of(block), lower[base.par.recompute_of(block)]
    rc = tuple(new if i == block else base.par.recompute_of(i) for i in range(prob.spec.num_layers))
    e = estimate(prob.spec, prob.cluster, prob.train, base.par.with_(recompute=rc))
    d = base.predicted["step_time_s"] - e.predicted["step_time_s"]
    out["relaxation"] = {"block": block, "from": old, "to": new, "saves_s": d, "fits": e.fits,
                         "peak_memory_bytes": e.predicted["peak_memory_bytes"]}
    move = f"one block less recompute (block {block} {old} → {new}) would save {d:.3f} s per step"
    if not e.fits:
        return {**out, "binds": "memory", "text": f"{used}; {move} but {over_text(e)}"}
    return {**out, "binds": "time", "text": f"{used}; {move} and still fit, so memory does not bind here "
            f"(within the search's gap); largest time component {top} ({comps[top]:.3f} s)"}


def _what_if_tasks(prob: Problem, base: Estimate) -> list[tuple[dict, Task]]:
    """+1 GiB per GPU (same mesh re-placed, and re-planned) and +1 node (re-planned)."""
    c = prob.cluster
    hbm = f"cluster.gpu.hbm_bytes={c.gpu.hbm_bytes + GiB}"
    big = override(c, parse_sets([hbm])["cluster"], ClusterSpec, "cluster")
    pool = prob.pool(big)
    inc = estimate(prob.spec, big, prob.train, prob.par)
    mine = pool.seed(inc)
    n2 = c.num_gpus + c.gpus_per_node
    sets = [f"cluster.num_nodes={c.num_nodes + 1}", f"cluster.name={c.gpu.name}:{n2}"]
    more = override(c, parse_sets(sets)["cluster"], ClusterSpec, "cluster")
    pool2 = prob.pool(more, Knobs({**prob.knobs.values, "dp": None}))
    grown = Task(pool2, pool2.candidates({}))
    if not grown.cands:
        grown.reason = _grown_reason(prob, more)
    return [({"change": "+1 GiB per GPU, same mesh re-placed", "override": hbm}, Task(pool, [mine], inc, EXACT_GAP)),
            ({"change": "+1 GiB per GPU, re-planned", "override": hbm}, Task(pool, pool.candidates({}), inc)),
            ({"change": f"+1 node ({n2} GPUs), re-planned", "override": " ".join(sets)}, grown)]


def _grown_reason(prob: Problem, cluster: ClusterSpec) -> str:
    """Why the plan's search space has no candidate on a bigger cluster (the plan's degrees, dp re-derived)."""
    par, n = prob.par.with_(recompute="none", stage_layers=None), cluster.num_gpus
    rest = par.tp * par.pp * par.cp
    try:
        check_plan(par.with_(dp=max(1, n // rest)), prob.train, prob.spec, n)
    except PlanError as exc:
        return f"no candidate of the plan's search space on {n} GPUs, e.g. {exc}"
    return f"no candidate of the plan's search space on {n} GPUs"


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
        t.answer = t.pool.best_of(t.cands, now + max(0.0, deadline - now) / (len(tasks) - k), t.incumbent, t.gap)
        if progress:
            progress(k + 1, len(tasks))
    for t in tasks:
        if t.answer.status == "time_limit" and time.perf_counter() < deadline:
            t.answer = t.pool.best_of(t.cands, deadline, t.incumbent, t.gap)


def explain_plan(doc: dict, sets: dict, time_limit_s: float, progress=None) -> dict:
    """The explain report (JSON-ready dict) for a loaded plan document; see the module docstring."""
    t0 = time.perf_counter()
    prob = load_problem(doc, sets)
    base = estimate(prob.spec, prob.cluster, prob.train, prob.par)
    pool = prob.pool()
    pool.candidates({})
    pool.seed(base)
    decisions, tasks, rows, same = [], [], [], {}
    for name in DECISIONS:
        entry = {"decision": name, "chosen": getattr(prob.par, name), "alternatives": []}
        for v in alternatives(prob, name):
            cands = pool.candidates(*question(name, v))
            key = frozenset(c.par for c in cands)  # e.g. vpp 2 and schedule interleaved: one question
            if cands and key not in same:
                same[key] = Task(pool, cands)
                tasks.append(same[key])
            entry["alternatives"].append((v, same.get(key)))
        decisions.append(entry)
    what_if = _what_if_tasks(prob, base)
    # What-ifs first: they are few, and the last slices shrink when earlier solves overrun theirs.
    run_tasks([t for _, t in what_if] + tasks, t0 + time_limit_s, progress)
    for entry in decisions:
        entry["alternatives"] = [answer_row(prob, pool, base, v, t) if t else
                                 {"value": v, "status": "invalid", "reason": invalid_reason(prob, entry["decision"], v)}
                                 for v, t in entry["alternatives"]]
    for info, t in what_if:
        rows.append({**info, **answer_row(prob, t.pool, base, None, t)})
    p = base.predicted
    return {"schema_version": SCHEMA_VERSION, "kind": "explain",
            "plan": {"plan": describe(base.par), "parallelism": parallel_dict(base.par, p["num_micro_batches"]),
                     "step_time_s": p["step_time_s"], "tokens_per_s": p["tokens_per_s"],
                     "peak_memory_bytes": p["peak_memory_bytes"], "memory_capacity_bytes": p["memory_capacity_bytes"],
                     "fits": base.fits, "model": prob.spec.name, "cluster": prob.cluster.name,
                     "certificate": {k: doc["solver"].get(k) for k in ("status", "gap")}},
            "binding": binding(prob, base), "decisions": decisions, "recompute_per_stage": recompute_rows(prob, base),
            "what_if": rows,
            "search": {"gap_target": prob.gap, "time_limit_s": time_limit_s, "wall_s": time.perf_counter() - t0,
                       "milps": sum({id(t.pool): t.pool.milps for t in tasks + [t for _, t in what_if]}.values()),
                       "candidates": len(pool.cands)}}
