"""`autopar estimate`: score one hand-specified plan, or re-score a saved plan file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.errors import SpecError
from planner.commands.common import Opt
from planner.config import Parallel, check_plan
from planner.cost.estimate import Estimate, estimate
from planner.inputs import PROBLEM_OPTIONS, Inputs
from planner.knobs import BY_NAME
from planner.planfile.load import load_plan, plan_inputs

PLAN_FILE_OPTION = Opt(
    "plan", Path | None, None, ("--plan",), "Re-score a saved plan JSON with the current cost model."
)


@dataclass(frozen=True)
class EstimateResult:
    inputs: Inputs
    estimate: Estimate
    fix: Change | None = None  # when the plan does not fit: the smallest change that does


def inputs_of_plan(path: Path) -> Inputs:
    """The inputs and plan a saved plan file records."""
    spec, clus, train, par = plan_inputs(load_plan(path))
    return Inputs(spec, clus, train, par, {"plan": str(path)})


def check_plan_alone(problem: dict, knobs: dict, sets: list[str] | None) -> None:
    """``estimate --plan`` re-scores the saved plan as it is: any other input is an error (exit 2),
    not something silently ignored."""
    defaults = {o.name: o.default for o in PROBLEM_OPTIONS}
    given = [f"--{k.replace('_', '-')}" for k, v in problem.items() if v is not None and v != defaults.get(k)]
    given += [BY_NAME[k].flag for k, v in knobs.items() if v is not None]
    given += ["--set"] if sets else []
    if given:
        raise SpecError(
            f"--plan re-scores the saved plan as it is; drop {', '.join(given)} "
            "(or re-plan with `autopar plan`, or edit the plan file)"
        )


@dataclass(frozen=True)
class Change:
    """One knob changed from the scored plan, and its estimate."""

    flags: str  # the command-line flags that make the change, e.g. "--recompute full"
    estimate: Estimate


def _changes(par: Parallel) -> list[tuple[str, str, Parallel]]:
    """Single-knob changes that save memory: (knob, flags, plan), degrees kept a split of the GPUs."""
    out: list[tuple[str, str, Parallel]] = []
    for r in ("selective", "full"):
        if par.recompute != r:
            out.append(("recompute", f"--recompute {r}", par.with_(recompute=r, stage_layers=None)))
    for z in range(par.zero + 1, 4):
        out.append(("zero", f"--zero {z}", par.with_(zero=z)))
    mb = par.micro_batch // 2
    while mb >= 1:
        out.append(("micro_batch", f"--micro-batch {mb}", par.with_(micro_batch=mb)))
        mb //= 2
    for knob in ("tp", "pp"):
        grown = getattr(par, knob) * 2
        if par.dp % 2 == 0:
            out.append((knob, f"--{knob} {grown}", par.with_(**{knob: grown}, dp=par.dp // 2, stage_layers=None)))
    return out


def _apply(par: Parallel, change: Parallel, knob: str) -> Parallel:
    """``change``'s value of ``knob`` (and dp, which tp/pp changes move) on top of ``par``."""
    extra = {"dp": change.dp, "stage_layers": None} if knob in ("tp", "pp") else {}
    return par.with_(**{knob: getattr(change, knob)}, **extra)


def smallest_fitting_change(inputs: Inputs, base: Estimate) -> Change | None:
    """The fastest plan one knob away from ``base`` that fits; when none does, two knobs away
    (None when no such plan fits)."""
    assert inputs.parallel is not None
    singles = _changes(inputs.parallel)
    tries = [(flags, par) for _, flags, par in singles]
    best = _fastest_fitting(inputs, tries)
    if best is None:
        pairs = []
        for i, (k1, f1, p1) in enumerate(singles):
            for k2, f2, p2 in singles[i + 1 :]:
                if k1 != k2 and {k1, k2} != {"tp", "pp"}:
                    pairs.append((f"{f1} {f2}", _apply(p1, p2, k2)))
        best = _fastest_fitting(inputs, pairs)
    return best


def _fastest_fitting(inputs: Inputs, tries: list[tuple[str, Parallel]]) -> Change | None:
    best: Change | None = None
    for flags, par in tries:
        try:
            check_plan(par, inputs.training, inputs.model, inputs.cluster.num_gpus)
        except SpecError:
            continue
        est = estimate(inputs.model, inputs.cluster, inputs.training, par)
        if est.fits and (best is None or est.predicted.step_time_s < best.estimate.predicted.step_time_s):
            best = Change(flags, est)
    return best


def run_estimate(inputs: Inputs) -> EstimateResult:
    """Score ``inputs.parallel`` (PlanError for an invalid plan: exit 2); when it does not fit,
    also the smallest change that does (``EstimateResult.fix``)."""
    assert inputs.parallel is not None
    est = estimate(inputs.model, inputs.cluster, inputs.training, inputs.parallel)
    return EstimateResult(inputs, est, None if est.fits else smallest_fitting_change(inputs, est))
