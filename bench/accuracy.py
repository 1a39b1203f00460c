"""Predicted vs published throughput (and memory) on every case in published_cases.json.

    python bench/accuracy.py [--cases PATH] [--json]

Throughput is compared in the source's FLOP convention: Narayanan et al. 2021 report TFLOP/s
per GPU by their eq. 3 (which counts the recompute forward), so the prediction is eq. 3's FLOPs
over the predicted step time; the other sources report tokens/s per GPU. One set of efficiency
constants per GPU type and dtype (hardware/presets/*.yaml) serves every case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cases import CASES, case_inputs, eq3_flops_per_step, load_cases

from planner.cost.estimate import estimate


def score(case: dict) -> dict:
    ci = case_inputs(case)
    est = estimate(ci.model, ci.cluster, ci.train, ci.par)
    p = est.predicted
    if ci.metric == "tokens_per_s_per_gpu":
        pred = p["tokens_per_s_per_gpu"]
    else:
        pred = eq3_flops_per_step(ci.model, ci.train, "full") / p["step_time_s"] / ci.cluster.num_gpus / 1e12
    row = {
        "id": ci.id,
        "metric": ci.metric,
        "published": ci.published,
        "predicted": pred,
        "error": pred / ci.published - 1,
        "mfu": p["mfu"],
        "step_time_s": p["step_time_s"],
        "plan": f"dp{ci.par.dp} tp{ci.par.tp} pp{ci.par.pp} cp{ci.par.cp} ep{ci.par.ep} z{ci.par.zero} "
        f"mb{ci.par.micro_batch} {ci.par.recompute} {ci.train.dtype} {ci.train.attention_impl}",
        "assumptions": ci.assumptions,
        "fits": est.fits,
        "predicted_mem_gib": p["peak_memory_bytes"] / 2**30,
        "published_mem_gib": ci.published_mem_gib,
    }
    if ci.published_mem_gib:
        row["mem_error"] = row["predicted_mem_gib"] / ci.published_mem_gib - 1
    return row


def summarize(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows]
    mem = [abs(r["mem_error"]) for r in rows if "mem_error" in r]
    return {
        "cases": len(rows),
        "median_abs_error": statistics.median(errs),
        "max_abs_error": max(errs),
        "worse_than_25pct": sum(e > 0.25 for e in errs),
        "worse_than_50pct": sum(e > 0.50 for e in errs),
        "memory_cases": len(mem),
        "memory_median_abs_error": statistics.median(mem) if mem else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=CASES)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    rows = [score(c) for c in load_cases(args.cases)]
    summary = summarize(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    print(f"{'case':40} {'metric':20} {'published':>10} {'predicted':>10} {'error':>7}  {'mem pub/pred GiB':>17}  plan")
    for r in rows:
        mem = f"{r['published_mem_gib']:.1f}/{r['predicted_mem_gib']:.1f}" if r["published_mem_gib"] else ""
        print(
            f"{r['id']:40} {r['metric']:20} {r['published']:10.1f} {r['predicted']:10.1f} {r['error']:+7.1%}  "
            f"{mem:>17}  {r['plan']}{' [' + '; '.join(r['assumptions']) + ']' if r['assumptions'] else ''}"
        )
    s = summary
    print(
        f"\nmedian |error| {s['median_abs_error']:.1%}, max {s['max_abs_error']:.1%}, "
        f">25%: {s['worse_than_25pct']}, >50%: {s['worse_than_50pct']} (of {s['cases']} cases); "
        f"memory median |error| {s['memory_median_abs_error'] or 0:.1%} over {s['memory_cases']} cases"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
