"""Check a parallel run against the single-process reference (the oracle of the parity tests).

Both train the same model on the same batches with the same recipe (default: SGD at
``DEFAULT_LR``, no clipping, constant rate, :data:`runtime.recipe.SGD_PARITY`, as Adam would hide
a wrongly scaled gradient); every step's loss, gradient norm and every final parameter must agree. fp32 reductions in another order leave about 1e-7 relative differences
(measured: losses within 1.4e-6, gradients within 2e-8), so 1e-5 separates rounding from a wrong
gradient scale, a missed all-reduce or a stale tied copy by orders of magnitude.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.launch import run
from runtime.plan_io import model_spec
from runtime.precision import precision_for
from runtime.recipe import SGD_PARITY, Recipe
from runtime.reference import WHOLE, Split
from runtime.train import run_reference


@dataclass(frozen=True)
class ParityResult:
    losses: list[float]
    reference_losses: list[float]
    max_loss_rel_err: float
    max_param_err: float  # max |a - b| / (1 + |b|) over every element of every parameter
    worst_param: str
    missing_params: tuple[str, ...]  # in the reference but not gathered from the run
    report: dict
    max_norm_rel_err: float = 0.0  # gradient norm before clipping, per step, relative

    def ok(self, tol: float = 1e-5) -> bool:
        return self.max_loss_rel_err <= tol and self.max_param_err <= tol and not self.missing_params


def check_parity(
    plan: dict,
    steps: int = 3,
    recipe: Recipe = SGD_PARITY,
    data: str | None = None,
    start_method: str | None = None,
    memory_plan: str = "none",
    matched: bool | None = None,
) -> ParityResult:
    """Run ``plan`` on this machine (with ``memory_plan``, runtime.arena), then the reference, both
    with ``recipe``, and compare them.

    matched: the reference walks the batch as the plan's dp ranks and micro-batches
    (runtime.reference.Split.of) instead of all at once; default: when ``recipe`` computes in 16
    bits, where it removes the rounding differences of another split of the batch."""
    with tempfile.TemporaryDirectory(prefix="autopar-parity-") as tmp:
        params_path = Path(tmp, "params.pt")
        report = run(
            plan,
            steps,
            data,
            Path(tmp, "report.json"),
            recipe=recipe,
            save_params=params_path,
            start_method=start_method,
            memory_plan=memory_plan,
        )
        gathered = torch.load(params_path, weights_only=True)
    precision = precision_for(plan, recipe)
    matched = precision.mixed if matched is None else matched
    ref = run_reference(plan, steps, recipe, data, split=Split.of(plan, precision.reduce) if matched else WHOLE)
    losses = [s["loss"] for s in report["steps"]]
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(losses, ref["losses"]))
    norms = [s["grad_norm"] for s in report["steps"]]
    norm_err = max(abs(a - b) / abs(b) for a, b in zip(norms, ref["grad_norms"]))
    if model_spec(plan).tie_embeddings and "output.weight" in gathered:
        # Split over pipeline stages, the head holds its own copy of the tied embedding.
        ref["params"]["output.weight"] = ref["params"]["tok_embeddings.weight"]
    worst, worst_name = 0.0, ""
    for name, expected in ref["params"].items():
        if name in gathered:
            err = ((gathered[name] - expected).abs() / (1 + expected.abs())).max().item()
            if err >= worst:
                worst, worst_name = err, name
    missing = tuple(sorted(set(ref["params"]) - set(gathered)))
    return ParityResult(losses, ref["losses"], loss_err, worst, worst_name, missing, report, norm_err)
