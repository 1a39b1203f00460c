"""Render the README's pictures from real planner output into docs/img/*.png.

    python bench/plots.py [--out docs/img] [--time-limit 30]

1. ``autopar plan --model llama3-70b --cluster h100-sxm-80gb:64 --global-batch 32 --seq-len 8192 --pp 4
   --schedule interleaved``: the chosen plan's pipeline Gantt chart, memory timeline and memory
   breakdown per stage (``plan-gantt.png``, ``plan-memory.png``, ``plan-breakdown.png``);
2. a sweep of the same model over 8, 32, 64 and 128 GPUs at 4k and 16k tokens per sequence
   (global batch 128), planned point by point (``planner.commands.sweep.run_sweep``): throughput and cost of
   100B training tokens at $2.50 per GPU-hour against the GPU count (``sweep.png``).

Prints what it planned and the size of every file written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.commands.sweep import SweepSpec, run_sweep  # noqa: E402
from planner.inputs import build_inputs, parse_sets  # noqa: E402
from planner.knobs import Knobs  # noqa: E402
from planner.render import plots  # noqa: E402
from planner.search import search  # noqa: E402

PLAN = dict(model="llama3-70b", cluster="h100-sxm-80gb:64", global_batch=32, seq_len=8192)
PLAN_KNOBS = {"pp": "4", "schedule": "interleaved"}
SWEEP = SweepSpec(
    model="llama3-70b",
    cluster="h100-sxm-80gb:8",
    global_batch=128,
    seq_len=8192,
    vary=("cluster.num_gpus=8,32,64,128", "seq_len=4096,16384"),
    tokens=100e9,
    price_per_gpu_hour=2.5,
)


def plan_pictures(out: Path, time_limit_s: float) -> list[Path]:
    """Plan the example exactly as `autopar plan` does, then draw its three plots."""
    inputs = build_inputs(
        PLAN["model"], PLAN["cluster"], PLAN["global_batch"], PLAN["seq_len"], "bf16", "flash", parse_sets([]), None
    )
    t0 = time.perf_counter()
    res = search(
        inputs.model, inputs.cluster, inputs.training, Knobs.parse(PLAN_KNOBS), "ortools", 0.01, time_limit_s, 3, None
    )
    if res.best is None:
        raise SystemExit("the example plan does not fit: the cost model changed; pick another example")
    p, par = res.best.predicted, res.best.par
    print(
        f"plan ({time.perf_counter() - t0:.1f} s): dp {par.dp} tp {par.tp} pp {par.pp} vpp {par.vpp} zero {par.zero} "
        f"micro-batch {par.micro_batch} x {p['num_micro_batches']}; step {p['step_time_s']:.3f} s, "
        f"peak {p['peak_memory_bytes'] / 2**30:.1f} GiB"
    )
    return plots.write_plots(res.best, out / "plan.png", "all")


def sweep_picture(out: Path, time_limit_s: float) -> Path:
    """Plan every sweep point (two worker processes) and draw throughput and cost against GPUs."""
    t0 = time.perf_counter()
    spec = SweepSpec(**{**SWEEP.__dict__, "time_limit_s": time_limit_s})
    rows = run_sweep(spec, jobs=2, cache_dir=None)
    print(f"sweep ({time.perf_counter() - t0:.1f} s):")
    for r in rows:
        what = f"{r['tokens_per_s']:,.0f} tokens/s, ${r['cost_usd']:,.0f}" if r["feasible"] else "infeasible"
        print(f"  {r['num_gpus']:>4} GPUs, seq {r['seq_len']:>5}: {what}")
    path = out / "sweep.png"
    plots.plot_sweep(
        rows,
        path,
        "num_gpus",
        ["seq_len"],
        cost_label="cost of 100B tokens (USD at $2.50/GPU-h)",
        title="llama3-70b on H100-SXM-80GB, global batch 128: the best plan per point",
    )
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--time-limit", type=float, default=30.0, help="seconds per plan search")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in plan_pictures(args.out, args.time_limit) + [sweep_picture(args.out, args.time_limit)]:
        print(
            f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
            f"({path.stat().st_size / 1024:.0f} KiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
