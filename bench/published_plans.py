"""The planner against every published hand-tuned plan: is its plan ever predicted slower?

    python bench/published_plans.py [--time-limit 30]

For each case in bench/data/published_cases.json: the published plan's predicted step time
(`estimate`), the planner's plan under the same cost model (context parallel fixed to the
published degree, the published micro-batch added to the micro-batch list), and the
certificate. Issue 3 asks that the planner is never slower.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cases import case_inputs, load_cases

from planner.cost.estimate import estimate
from planner.search import Knobs, search


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=30.0)
    args = ap.parse_args()
    slower = 0
    print(f"{'case':36} {'published s':>11} {'planner s':>10} {'verdict':>8} {'wall s':>7}  status (gap)")
    for c in load_cases():
        ci = case_inputs(c)
        pub = estimate(ci.model, ci.cluster, ci.train, ci.par).predicted["step_time_s"]
        knobs = Knobs({"cp": (ci.par.cp,), "micro_batch": tuple(sorted({1, 2, 4, 8, ci.par.micro_batch}))})
        t0 = time.perf_counter()
        res = search(ci.model, ci.cluster, ci.train, knobs, time_limit_s=args.time_limit)
        got = res.best.predicted["step_time_s"] if res.best else float("inf")
        ok = got <= pub * (1 + 1e-9)
        slower += not ok
        print(
            f"{ci.id:36} {pub:11.3f} {got:10.3f} {'ok' if ok else 'SLOWER':>8} {time.perf_counter() - t0:7.1f}  "
            f"{res.certificate['status']} ({res.certificate['gap']:.1%})"
        )
    print(f"\nplanner slower than the published plan in {slower} of {len(load_cases())} cases")
    return 1 if slower else 0


if __name__ == "__main__":
    raise SystemExit(main())
