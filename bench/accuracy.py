"""The cost model against every published run, leave-one-source-out, beside the
constant-efficiency baseline.

    python bench/accuracy.py [--cases PATH] [--in-sample] [--json]

For every source (publication) the fitted constants (bench/fit.py) are refitted without its runs
and its runs are predicted with the real cost model: the error of a run is that of a model that
never saw its source. The baseline is the plan-blind calculator FLOPs ÷ (peak × c) — predicted
model-FLOP utilisation c whatever the plan — with c the geometric mean over the training runs of
the same fold. Throughput is compared in the source's convention (bench/cases.py). Each run's 80%
interval comes from the leave-one-source-out residuals of the other sources (per stack when it
has enough runs, else pooled), so its coverage is also out of sample. ``--in-sample`` scores the
constants in planner/stacks/fitted.yaml instead. Memory: predicted peak (allocator reserve
included) against the published peak, where published.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cases import CASES, CaseInputs, CaseSkipped, case_inputs, load_cases
from fit import MIN_BAND, Surrogate, leave_one_source_out, predict, prepare, residual_bands, surrogate

from planner.stacks import fitted

GiB = 2**30


def baseline_mfu(runs: list[Surrogate]) -> float:
    """c of FLOPs ÷ (peak × c): the geometric mean published MFU (model FLOPs) of ``runs``."""
    return math.exp(statistics.fmean(math.log(published_mfu(r)) for r in runs))


_MFU: dict[str, float] = {}


def published_mfu(r: Surrogate) -> float:
    """The run's published figure as model-FLOP utilisation, via the model's own FLOP count
    (the predicted figure and MFU both scale as 1 / step time, so their ratio is the conversion)."""
    if r.ci.id not in _MFU:
        fig, est = predict(r.ci, {})
        _MFU[r.ci.id] = est.predicted["mfu"] * r.ci.published / fig
    return _MFU[r.ci.id]


def score_run(r: Surrogate, fit: dict, band: dict, c_base: float) -> dict:
    ci: CaseInputs = r.ci
    pred, est = predict(ci, fit)
    p = est.predicted
    base = pred * c_base / p["mfu"]
    lo, hi = pred * math.exp(band["q10"]), pred * math.exp(band["q90"])
    row = {
        "id": ci.id,
        "source": ci.source,
        "stack": ci.stack.name,
        "metric": ci.metric,
        "published": ci.published,
        "predicted": pred,
        "error": pred / ci.published - 1,
        "baseline_error": base / ci.published - 1,
        "interval80": [lo, hi],
        "in_interval": lo <= ci.published <= hi,
        "step_time_s": p["step_time_s"],
        "mfu": p["mfu"],
        "fits": est.fits,
        "plan": ci.par.describe(),
        "assumptions": ci.assumptions,
        "group": ci.group,
    }
    if ci.published_mem_gib:
        row["published_mem_gib"] = ci.published_mem_gib
        row["predicted_mem_gib"] = p["peak_memory_bytes"] / GiB
        row["mem_error"] = row["predicted_mem_gib"] / ci.published_mem_gib - 1
    return row


def _band(bands: dict, stack: str) -> dict:
    b = bands.get(stack)
    return b if b and b["runs"] >= MIN_BAND else bands["all"]


def loso_rows(runs: list[Surrogate]) -> list[dict]:
    folds = leave_one_source_out(runs)
    by_id = {r.ci.id: r for r in runs}
    rows = []
    for src, fold in folds.items():
        train = [r for r in runs if r.ci.source != src]
        c_base = baseline_mfu(train)
        bands = residual_bands(runs, folds, exclude=src)
        for i in fold["ids"]:
            r = by_id[i]
            rows.append(score_run(r, fold["fit"], _band(bands, r.ci.stack.name), c_base))
    return rows


def in_sample_rows(runs: list[Surrogate]) -> list[dict]:
    fit = fitted()
    c_base = baseline_mfu(runs)
    bands = fit.get("residuals") or {"all": {"q10": 0.0, "q90": 0.0, "runs": 0}}
    return [score_run(r, fit, _band(bands, r.ci.stack.name), c_base) for r in runs]


def summarize(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows]
    base = [abs(r["baseline_error"]) for r in rows]
    mem = [r["mem_error"] for r in rows if "mem_error" in r]
    return {
        "runs": len(rows),
        "median_abs_error": statistics.median(errs),
        "p90_abs_error": float(np.quantile(errs, 0.9)),
        "max_abs_error": max(errs),
        "over_50pct": sum(e > 0.5 for e in errs),
        "baseline_median_abs_error": statistics.median(base),
        "baseline_p90_abs_error": float(np.quantile(base, 0.9)),
        "ratio_to_baseline": statistics.median(errs) / statistics.median(base),
        "interval_coverage": sum(r["in_interval"] for r in rows) / len(rows),
        "not_fitting": [r["id"] for r in rows if not r["fits"]],
        "memory_runs": len(mem),
        "memory_median_abs_error": statistics.median(abs(m) for m in mem) if mem else None,
        "memory_worst_under": min(mem) if mem else None,
    }


def by_source(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["source"], []).append(r)
    return {k: summarize(v) for k, v in sorted(out.items())}


def ranking(rows: list[dict]) -> list[dict]:
    """Comparison groups: is the published order of every pair reproduced?"""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["group"]:
            groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rs in sorted(groups.items()):
        pairs = [(a, b) for i, a in enumerate(rs) for b in rs[i + 1 :] if a["metric"] == b["metric"]]
        wrong = [
            (a["id"], b["id"])
            for a, b in pairs
            if (a["published"] - b["published"]) * (a["predicted"] - b["predicted"]) < 0
        ]
        out.append({"group": g, "pairs": len(pairs), "misordered": wrong})
    return out


def runs_from(path: Path | None) -> tuple[list[Surrogate], list]:
    if path is None:
        return prepare(progress=True)
    runs, skipped = [], []
    for c in load_cases(path):
        try:
            runs.append(surrogate(case_inputs(c)))
        except (CaseSkipped, ValueError) as exc:
            skipped.append((c["id"], str(exc).splitlines()[0]))
    return runs, skipped


def shared_ids() -> set[str]:
    """The runs of the shared reference (bench/data/published_cases.json, a copy of it)."""
    return {c["id"] for c in load_cases(CASES)}


def report(args_cases: Path | None = None, in_sample: bool = False) -> dict:
    """Rows and summaries: over every run, and over the shared reference's runs alone."""
    runs, skipped = runs_from(args_cases)
    rows = in_sample_rows(runs) if in_sample else loso_rows(runs)
    shared = shared_ids()
    mine = [r for r in rows if r["id"] in shared]
    return {
        "rows": rows,
        "summary": summarize(rows),
        "shared": summarize(mine) if mine else None,
        "sources": by_source(rows),
        "ranking": ranking(rows),
        "skipped": skipped,
    }


def _line(name: str, s: dict, skipped: int) -> str:
    return (
        f"{name}: {s['runs']} runs ({skipped} skipped): median |error| {s['median_abs_error']:.1%}, "
        f"p90 {s['p90_abs_error']:.1%}, max {s['max_abs_error']:.1%}, >50%: {s['over_50pct']}; baseline median "
        f"{s['baseline_median_abs_error']:.1%} (ratio {s['ratio_to_baseline']:.2f}), p90 {s['baseline_p90_abs_error']:.1%}; "
        f"80% interval coverage {s['interval_coverage']:.0%}; not fitting: {len(s['not_fitting'])}"
        + (
            f"\n  memory: {s['memory_runs']} runs, median |error| {s['memory_median_abs_error']:.1%}, "
            f"worst under-prediction {s['memory_worst_under']:+.1%}"
            if s["memory_runs"]
            else ""
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=None, help="a cases file (default: bench/data, all of it)")
    ap.add_argument("--in-sample", action="store_true", help="score the constants of fitted.yaml")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rep = report(args.cases, args.in_sample)
    rows, sources, ranks, skipped = rep["rows"], rep["sources"], rep["ranking"], rep["skipped"]
    if args.json:
        print(json.dumps(rep))
        return 0
    mode = "in-sample (fitted.yaml)" if args.in_sample else "leave-one-source-out"
    print(f"{'run':44} {'stack':18} {'published':>10} {'predicted':>10} {'error':>7} {'base':>7}  {'mem pub/pred':>13}")
    for r in rows:
        mem = f"{r['published_mem_gib']:.1f}/{r['predicted_mem_gib']:.1f}" if "mem_error" in r else ""
        print(
            f"{r['id'][:44]:44} {r['stack']:18} {r['published']:10.1f} {r['predicted']:10.1f} "
            f"{r['error']:+7.1%} {r['baseline_error']:+7.1%}  {mem:>13}{'' if r['fits'] else '  DOES NOT FIT'}"
        )
    print(f"\nper source ({mode}): median |error| model vs baseline")
    for k, s in sources.items():
        print(f"  {k[:60]:60} {s['runs']:3d}  {s['median_abs_error']:6.1%}  {s['baseline_median_abs_error']:6.1%}")
    print(f"\n{mode}")
    print(_line("all runs", rep["summary"], len(skipped)))
    if rep["shared"]:
        print(_line("shared reference runs", rep["shared"], 0))
    bad = [g for g in ranks if g["misordered"]]
    print(f"ranking: {sum(g['pairs'] for g in ranks)} pairs in {len(ranks)} groups, misordered: {bad or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
