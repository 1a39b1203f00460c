"""`autopar estimate`: score one hand-specified plan, or re-score a saved plan file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.commands.common import Opt
from planner.cost.estimate import Estimate, estimate
from planner.inputs import Inputs
from planner.planfile.load import load_plan, plan_inputs

PLAN_FILE_OPTION = Opt(
    "plan", Path | None, None, ("--plan",), "Re-score a saved plan JSON with the current cost model."
)


@dataclass(frozen=True)
class EstimateResult:
    inputs: Inputs
    estimate: Estimate


def inputs_of_plan(path: Path) -> Inputs:
    """The inputs and plan a saved plan file records."""
    spec, clus, train, par = plan_inputs(load_plan(path))
    return Inputs(spec, clus, train, par, {"plan": str(path)})


def run_estimate(inputs: Inputs) -> EstimateResult:
    """Score ``inputs.parallel`` (PlanError for an invalid plan: exit 2)."""
    assert inputs.parallel is not None
    return EstimateResult(inputs, estimate(inputs.model, inputs.cluster, inputs.training, inputs.parallel))
