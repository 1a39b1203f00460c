"""`autopar plan`: search, then the plan document (solver block, runner-ups) or the advice when
nothing fits."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from models.errors import SpecError
from planner.commands.common import TIME_LIMIT_S, Opt
from planner.config import Training
from planner.cost.estimate import Estimate, estimate
from planner.cost.records import Predicted, time_components
from planner.inputs import Inputs
from planner.knobs import BY_NAME, RECOMPUTE_OPTIONS, Knobs
from planner.planfile.build import build_plan
from planner.search.bnb import Progress
from planner.search.context import CandStatus
from planner.search.outer import SearchResult, search

SOLVERS = {"ortools": "ortools-highs", "pulp": "pulp"}  # --solver -> the backend recorded in plan files
SEARCH_OPTIONS = (  # plan and sweep
    Opt(
        "time_limit",
        float,
        TIME_LIMIT_S,
        ("--time-limit",),
        "Wall-clock seconds per search (per point in sweep); the best plan so far is returned.",
    ),
    Opt("gap", float, 0.01, ("--gap",), "Relative optimality gap at which to stop (0.01 = 1%)."),
    Opt("solver", str, "ortools", ("--solver",), "MILP backend: ortools (HiGHS) or pulp (CBC)."),
)
PLAN_OPTIONS = (
    Opt("top_k", int, 3, ("--top-k",), "How many runner-up plans to report, at most."),
    Opt("out_path", Path | None, None, ("--out", "-o"), "Write the plan JSON to this file."),
)


@dataclass(frozen=True)
class SearchSettings:
    """How long and how exactly to search: ``--solver``, ``--gap``, ``--time-limit``, ``--top-k``."""

    solver: str = "ortools"
    gap: float = 0.01
    time_limit_s: float = TIME_LIMIT_S
    top_k: int = 3

    def check(self) -> SearchSettings:
        """Bad settings are bad input (exit 2)."""
        if self.solver not in SOLVERS:
            raise SpecError(f"--solver must be ortools or pulp (got {self.solver!r})")
        if not (math.isfinite(self.gap) and self.gap >= 0) or not (
            math.isfinite(self.time_limit_s) and self.time_limit_s > 0
        ):
            raise SpecError("--gap must be >= 0 and --time-limit > 0")
        if self.top_k < 0:
            raise SpecError(f"--top-k must be >= 0 (got {self.top_k})")
        return self


TIMED_OUT = "no plan found within the time limit ({:g} s); raise --time-limit"


@dataclass
class PlanResult:
    """The search, and either the plan document or why nothing fits."""

    search: SearchResult
    doc: dict | None  # the plan file (None: nothing fits)
    advice: str | None  # quantified advice when nothing fits
    timed_out: bool = False  # the time limit ran out before any plan was found (advice says so)

    @property
    def best(self) -> Estimate | None:
        return self.search.best


def run_plan(
    inputs: Inputs, raw: dict[str, str | None], settings: SearchSettings, progress: Progress | None = None
) -> PlanResult:
    """Search the plan space of ``raw`` (the knobs as the command line gives them)."""
    knobs = Knobs.parse(raw)
    res = search(
        inputs.model,
        inputs.cluster,
        inputs.training,
        knobs,
        settings.solver,
        settings.gap,
        settings.time_limit_s,
        settings.top_k,
        progress,
    )
    if res.best is None and res.phases_s["total_s"] >= settings.time_limit_s:
        # The limit stopped the search before any plan: not a verdict on the problem.
        return PlanResult(res, None, TIMED_OUT.format(settings.time_limit_s), timed_out=True)
    if res.best is None:
        advice = infeasible_advice(inputs.model, inputs.cluster, inputs.training, res, knobs.options())
        return PlanResult(res, None, advice)
    cmd = reproduce_command(
        inputs.refs,
        inputs.training,
        raw,
        {"time_limit": settings.time_limit_s, "gap": settings.gap, "solver": settings.solver},
    )
    doc = build_plan(res.best, solver_block(res, settings.solver), cmd, raw, {"alternatives": alternatives_block(res)})
    return PlanResult(res, doc, None)


def reproduce_command(refs: dict, train: Training, raw: dict, extra: dict) -> str:
    """The `autopar plan` command line that reproduces a plan from the same inputs."""
    args = [
        "autopar",
        "plan",
        "--model",
        refs["model"],
        "--cluster",
        refs["cluster"],
        "--global-batch",
        str(train.global_batch),
        "--seq-len",
        str(train.seq_len),
        "--dtype",
        train.dtype,
        "--attention",
        train.attention_impl,
        "--stack",
        train.stack.name,
        "--memory-headroom",
        train.memory_headroom,
    ]
    for name, value in raw.items():
        if value is not None and str(value) != "auto":
            args += [BY_NAME[name].flag, str(value)]
    for target, kv in refs.get("sets", {}).items():
        args += [a for k, v in kv.items() for a in ("--set", f"{target}.{k}={v}")]
    for name, value in extra.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(a) for a in args)


def backend_used(res: SearchResult, requested: str) -> str:
    """The backend that answered the search's MILPs, as ``--solver`` names it in plan files: the
    requested one, or the other where it was missing or failed and the MILPs fell back
    (milp.model.Model.solve); both, joined by "+", when only some fell back. The requested one
    when no MILP was solved."""
    used = sorted({"pulp" if b.startswith("pulp") else "ortools" for b in res.solved_with})
    return "+".join(SOLVERS[b] for b in used) if used else SOLVERS.get(requested, requested)


def solver_block(res: SearchResult, backend: str) -> dict:
    """The plan file's ``solver`` block: status, objective, bound, gap, timings, certificate,
    sizes; ``backend`` the one that solved, ``backend_requested`` the one ``--solver`` asked for."""
    c = res.certificate
    solved = [r for r in res.candidates if r.iterations]
    return {
        "backend": backend_used(res, backend),
        "backend_requested": SOLVERS.get(backend, backend),
        "status": c.status,
        "objective": c.incumbent_s,
        "best_bound": c.best_bound_s,
        "gap": c.gap,
        "wall_time_s": res.phases_s["total_s"],
        "phases_s": res.phases_s,
        "certificate": c.to_json(),
        "model_sizes": {
            "milps_solved": sum(r.iterations for r in solved),
            "max_variables": max((r.model_size.get("variables", 0) for r in solved), default=0),
            "max_integer_variables": max((r.model_size.get("integer_variables", 0) for r in solved), default=0),
            "max_constraints": max((r.model_size.get("constraints", 0) for r in solved), default=0),
        },
    }


def alternatives_block(res: SearchResult) -> list[dict]:
    """The plan file's ``alternatives``: the runner-ups, by how much and where each loses."""
    assert res.best is not None
    best = res.best.predicted
    out = []
    for r in res.alternatives:
        assert r.best is not None
        p = r.best.predicted
        out.append(
            {
                "parallelism": r.best.par.describe(),
                "step_time_s": p.step_time_s,
                "slower_by": p.step_time_s / best.step_time_s - 1,
                "why": _why(best, p),
                # milp: this candidate's optimal placement; heuristic: its even split with the
                # least uniform recompute that fits (pruned by a bound, never placed).
                "placement": "heuristic" if r.status == CandStatus.HEURISTIC else "milp",
            }
        )
    return out


def _why(best: Predicted, other: Predicted) -> str:
    """The component of the step where the alternative loses most time."""
    a, b = time_components(best), time_components(other)
    name, delta = max(((k, b[k] - a[k]) for k in a if k != "optimizer"), key=lambda kv: kv[1])
    return f"{name} +{delta:.3f} s"


def strongest_recompute(options: tuple[str, ...]) -> str:
    """The allowed recompute option that keeps the least activation memory."""
    return next(o for o in reversed(RECOMPUTE_OPTIONS) if o in options)


def closest_plan(
    spec, cluster, train, pars, options: tuple[str, ...] = RECOMPUTE_OPTIONS
) -> tuple[Estimate, float] | None:
    """(Estimate, bytes over capacity) of the candidate that comes closest to fitting with the
    strongest recompute the user allows on the even split (the least activation memory a
    candidate can have within ``options``), or None."""
    closest = None
    rc = strongest_recompute(options)
    for par in pars:
        try:
            e = estimate(spec, cluster, train, par.with_(recompute=rc, stage_layers=None))
        except SpecError:
            continue
        over = max((o for _, o in e.over), default=0.0)
        if closest is None or over < closest[1]:
            closest = (e, over)
    return closest


def infeasible_advice(spec, cluster, train, res: SearchResult, options: tuple[str, ...] = RECOMPUTE_OPTIONS) -> str:
    """Quantified advice from the plan that comes closest to fitting within the allowed recompute."""
    closest = closest_plan(spec, cluster, train, [r.par for r in res.candidates], options)
    if closest is None:
        return "no candidate could be scored"
    e, over = closest
    gib = 2**30
    stage = max(e.over, key=lambda x: x[1])[0] if e.over else 0
    m = e.predicted.stages[stage].memory
    states = m.weights_bytes + m.gradients_bytes + m.optimizer_bytes
    cap = e.predicted.memory_capacity_bytes
    return (
        f"binding constraint: memory of pipeline stage {stage} in the closest plan ({e.par.describe()}, "
        f"{strongest_recompute(options)} recompute) is {over / gib:.2f} GiB over the {cap / gib:.2f} GiB usable. It would fit with GPUs of at "
        f"least {(cap + over) / gib + 1:.0f} GiB, or with more GPUs: its model states take {states / gib:.2f} GiB "
        f"per GPU and shrink in proportion to the data-parallel (ZeRO-3) or pipeline degree; activations take "
        f"{m.activations_bytes / gib:.2f} GiB (smaller micro-batch or shorter sequences reduce them)."
    )
