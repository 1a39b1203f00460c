"""Fit the cost model's constants to the published runs, and judge them leave-one-source-out.

    python bench/fit.py [--write] [--json]

Fitted constants (the only ones fitted; every other number has its own source):
- a compute scale per GPU generation, on the GPU presets' matmul and attention efficiencies;
- a compute scale per software stack with at least MIN_RUNS runs (the kernels a framework runs),
  pulled towards 1 by a prior worth PRIOR_RUNS runs.

Objective: ``scipy.optimize.least_squares`` on log(predicted / published) of every run, with
bounds. To keep a fit to seconds, each run's step time is first measured on the real cost model
at two compute scales: ``T(s) = C/s + N``, C the part that scales with kernel speed and N the rest
(``Surrogate``); ``bench/accuracy.py`` then scores the fitted constants on the real model.

Leave-one-source-out: for every source, the constants are refitted without its runs and its runs
are predicted; the residuals log(published / predicted) of those predictions, per stack, give the
80% intervals every prediction carries (``--write`` stores them in planner/stacks/fitted.yaml with
the constants fitted on all runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cases import CaseInputs, CaseSkipped, all_cases, case_inputs, eq3_flops_per_step

from planner.cost.estimate import Estimate, estimate
from planner.stacks import FITTED, StackProfile, with_fitted

MIN_RUNS = 5  # runs a stack needs before it gets a constant of its own
PRIOR_RUNS = 2.0  # weight of the prior (scale 1) in runs
SCALE_PROBE = 2.0
BOUNDS_SCALE = (0.3, 3.0)


def base_profile(ci: CaseInputs) -> StackProfile:
    """The case's stack without fitted constants (what the fit starts from)."""
    return ci.stack.model_copy(update={"compute_scale": {}})


def with_constants(ci: CaseInputs, fit: dict) -> CaseInputs:
    """``ci`` priced with the constants of ``fit`` (fitted.yaml's layout)."""
    prof = with_fitted(base_profile(ci), fit)
    return replace(ci, stack=prof, train=replace(ci.train, stack=prof))


def figure(ci: CaseInputs, est: Estimate) -> float:
    """The predicted value of the case's published figure."""
    p = est.predicted
    if ci.metric == "tokens_per_s_per_gpu":
        return p["tokens_per_s_per_gpu"]
    if ci.metric == "tflops_per_gpu_hw":
        return eq3_flops_per_step(ci.model, ci.train, "full") / p["step_time_s"] / ci.cluster.num_gpus / 1e12
    return p["mfu"] * ci.cluster.gpu.peak_flops("bf16") / 1e12


def predict(ci: CaseInputs, fit: dict) -> tuple[float, Estimate]:
    c = with_constants(ci, fit)
    est = estimate(c.model, c.cluster, c.train, c.par)
    return figure(c, est), est


@dataclass
class Surrogate:
    """``T(s) = C/s + N`` for one run; the figure is ``K / T``."""

    ci: CaseInputs
    c_s: float  # seconds that scale with 1/compute scale
    n_s: float  # the rest
    k: float  # figure × step time

    def figure(self, scale: float) -> float:
        return self.k / (self.c_s / scale + self.n_s)


def surrogate(ci: CaseInputs) -> Surrogate:
    def step(scale: float) -> tuple[float, float]:
        prof = base_profile(ci).model_copy(update={"compute_scale": {ci.cluster.gpu.generation: scale}})
        c = replace(ci, stack=prof, train=replace(ci.train, stack=prof))
        est = estimate(c.model, c.cluster, c.train, c.par)
        return est.predicted["step_time_s"], figure(c, est)

    t1, fig1 = step(1.0)
    t2, _ = step(SCALE_PROBE)
    c_s = (t1 - t2) / (1 - 1 / SCALE_PROBE)
    return Surrogate(ci, c_s, t1 - c_s, fig1 * t1)


@dataclass
class Params:
    generations: list[str]
    stacks: list[str]

    def to_fit(self, x: np.ndarray) -> dict:
        g = len(self.generations)
        return {
            "generation_scale": {k: float(math.exp(v)) for k, v in zip(self.generations, x[:g])},
            "stack_scale": {k: float(math.exp(v)) for k, v in zip(self.stacks, x[g:])},
        }


def choose_params(runs: list[Surrogate]) -> Params:
    """Which constants the runs can determine: every generation they ran on, and every stack with
    at least MIN_RUNS runs."""
    gens = sorted({r.ci.cluster.gpu.generation for r in runs})
    n_stack = Counter(r.ci.stack.name for r in runs)
    return Params(gens, sorted(s for s, n in n_stack.items() if n >= MIN_RUNS))


def _scale(r: Surrogate, fit: dict) -> float:
    return fit["generation_scale"].get(r.ci.cluster.gpu.generation, 1.0) * fit["stack_scale"].get(r.ci.stack.name, 1.0)


def fit_constants(runs: list[Surrogate]) -> dict:
    """Least squares on log error over ``runs`` (module docstring); returns fitted.yaml's layout."""
    prm = choose_params(runs)
    g, n = len(prm.generations), len(prm.generations) + len(prm.stacks)
    if not runs or n == 0:
        return prm.to_fit(np.zeros(0))
    prior = math.sqrt(PRIOR_RUNS)

    def residuals(x: np.ndarray) -> np.ndarray:
        fit = prm.to_fit(x)
        out = [math.log(r.figure(_scale(r, fit)) / r.ci.published) for r in runs]
        return np.array(out + [prior * v for v in x[g:]])

    bounds = ([math.log(BOUNDS_SCALE[0])] * n, [math.log(BOUNDS_SCALE[1])] * n)
    res = least_squares(residuals, np.zeros(n), bounds=bounds)
    return prm.to_fit(res.x)


def surrogate_figure(r: Surrogate, fit: dict) -> float:
    return r.figure(_scale(r, fit))


def prepare(progress: bool = False) -> tuple[list[Surrogate], list[tuple[str, str]]]:
    runs, skipped = [], []
    cases = all_cases()
    for i, c in enumerate(cases):
        try:
            runs.append(surrogate(case_inputs(c)))
        except CaseSkipped as exc:
            skipped.append((c["id"], str(exc)))
        except ValueError as exc:  # a plan autopar rejects (e.g. ep beyond dp·cp)
            skipped.append((c["id"], str(exc).splitlines()[0]))
        if progress:
            print(f"\r  measured {i + 1}/{len(cases)} runs", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return runs, skipped


def leave_one_source_out(runs: list[Surrogate]) -> dict[str, dict]:
    """Per source: the constants fitted without it (``fit``) and its runs' ids."""
    out = {}
    for src in sorted({r.ci.source for r in runs}):
        train = [r for r in runs if r.ci.source != src]
        out[src] = {"fit": fit_constants(train), "ids": [r.ci.id for r in runs if r.ci.source == src]}
    return out


def residual_bands(runs: list[Surrogate], folds: dict[str, dict], exclude: str | None = None) -> dict:
    """q10/q90 of the leave-one-source-out log(published / predicted), per stack with at least
    MIN_BAND runs and over all runs (``all``), leaving out the runs of ``exclude``."""
    by_id = {r.ci.id: r for r in runs}
    res: dict[str, list[float]] = {"all": []}
    for src, fold in folds.items():
        if src == exclude:
            continue
        for i in fold["ids"]:
            r = by_id[i]
            v = math.log(r.ci.published / surrogate_figure(r, fold["fit"]))
            res["all"].append(v)
            res.setdefault(r.ci.stack.name, []).append(v)
    out = {}
    for k, v in res.items():
        if k == "all" or len(v) >= MIN_BAND:
            lo, hi = conformal_band(v)
            out[k] = {"q10": lo, "q90": hi, "runs": len(v)}
    return out


def conformal_band(residuals: list[float], coverage: float = 0.8) -> tuple[float, float]:
    """The split-conformal band of ``coverage`` (Lei et al. 2018, "Distribution-free predictive
    inference for regression", §2.2): of n residuals sorted, the k_lo-th and k_hi-th with
    k_lo = ⌊(n + 1)·α/2⌋ and k_hi = ⌈(n + 1)·(1 − α/2)⌉, α = 1 − coverage (clamped to the
    extremes). Plain sample quantiles of a few runs under-cover a new one (their 80% band held 67%
    of the runs out of sample); this order statistic covers a new exchangeable residual with
    probability ≥ ``coverage`` whatever n."""
    v, n, a = sorted(residuals), len(residuals), 1.0 - coverage
    eps = 1e-9  # (n + 1)·α/2 is an integer for some n: 0.2 is not exact in binary
    k_lo = min(max(math.floor((n + 1) * a / 2 + eps), 1), n)
    k_hi = min(max(math.ceil((n + 1) * (1 - a / 2) - eps), 1), n)
    return float(v[k_lo - 1]), float(v[k_hi - 1])


MIN_BAND = 8


def write_fitted(fit: dict, bands: dict, n_runs: int, n_sources: int) -> None:
    date = datetime.date.today().isoformat()
    header = (
        f"# Written by `python bench/fit.py --write` on {date} from {n_runs} published runs of\n"
        f"# {n_sources} sources (bench/data); do not edit by hand. residuals: leave-one-source-out\n"
        "# quantiles of log(published / predicted) throughput, per stack (>= 8 runs) and over all.\n"
    )
    body = {**fit, "residuals": bands}
    FITTED.write_text(header + yaml.safe_dump(body, sort_keys=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write planner/stacks/fitted.yaml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs, skipped = prepare(progress=True)
    fit = fit_constants(runs)
    folds = leave_one_source_out(runs)
    bands = residual_bands(runs, folds)
    sources = {r.ci.source for r in runs}
    if args.write:
        write_fitted(fit, bands, len(runs), len(sources))
    if args.json:
        print(json.dumps({"fit": fit, "bands": bands, "folds": folds, "skipped": skipped}, indent=2))
        return 0
    print(f"{len(runs)} runs from {len(sources)} sources ({len(skipped)} skipped)")
    print(yaml.safe_dump({"fit": fit, "residuals": bands}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
