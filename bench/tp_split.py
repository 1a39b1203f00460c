"""Measured vs predicted step time across tensor/pipeline splits of one model on one cluster.

    python bench/tp_split.py [--json]

Each case in bench/data/tp_split_cases.json holds runs of the same model, batch and cluster that
differ in (tp, pp, dp, micro-batch). The bench prints each run's measured and predicted step
time and whether `autopar estimate` ranks the runs as they were measured — the question a planner
answers when it chooses between tp 8 and tp 4. The cluster is the GPU preset with the case's
inter-node bandwidth; nothing is tuned per case.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.stacks import DEFAULT_STACK, load_stack

CASES = Path(__file__).resolve().parent / "data" / "tp_split_cases.json"


def load_tp_cases(path: Path = CASES) -> list[dict]:
    return json.loads(path.read_text())["cases"]


def case_setup(case: dict) -> tuple[ModelSpec, object, Training]:
    c, t = case["cluster"], case["training"]
    cluster = load_cluster(f"{c['gpu']}:{c['num_gpus']}", {"inter_node_bw_GBps": c["inter_node_bw_GBps"]})
    stack = load_stack(t.get("stack", DEFAULT_STACK))
    train = Training(
        t["global_batch"], t["seq_len"], t["dtype"], t["attention"], tp_overlap=t["tp_overlap"], stack=stack
    )
    return ModelSpec(**case["model"]), cluster, train


def run_par(case: dict, run: dict) -> Parallel:
    p = case["plan"]
    return Parallel(
        dp=run["dp"],
        tp=run["tp"],
        pp=run["pp"],
        micro_batch=run["micro_batch"],
        zero=p["zero"],
        recompute=p["recompute"],
        schedule=p["schedule"],
    )


def score(case: dict) -> dict:
    spec, cluster, train = case_setup(case)
    rows = []
    for run in case["runs"]:
        est = estimate(spec, cluster, train, run_par(case, run))
        pred = est.predicted["step_time_s"]
        rows.append({**run, "predicted_s": pred, "error": pred / run["step_s"] - 1, "fits": est.fits})
    pairs = [(a, b) for a in rows for b in rows if a["step_s"] < b["step_s"]]
    agree = sum(a["predicted_s"] < b["predicted_s"] for a, b in pairs)
    return {"id": case["id"], "runs": rows, "ordered_pairs": len(pairs), "pairs_ranked_as_measured": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    out = [score(c) for c in load_tp_cases()]
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for c in out:
        print(f"{c['id']}: {c['pairs_ranked_as_measured']} of {c['ordered_pairs']} pairs ranked as measured")
        print(f"  {'tp':>3} {'pp':>3} {'dp':>3} {'mb':>3} {'measured s':>11} {'predicted s':>12} {'error':>7}")
        for r in c["runs"]:
            print(
                f"  {r['tp']:>3} {r['pp']:>3} {r['dp']:>3} {r['micro_batch']:>3} {r['step_s']:>11.2f} "
                f"{r['predicted_s']:>12.2f} {r['error']:>+7.1%}{'' if r['fits'] else '  DOES NOT FIT'}"
            )


if __name__ == "__main__":
    main()
