"""Time per training step: a plain PyTorch loop against the same work through apply_plan.

    python bench/runtime_overhead.py [--model debug] [--seq-len 64] [--micro-batches 4] [--steps 20]

Rows (same model, seed, global batch, micro-batching and SGD; one thread per process):

* plain              one process, the model called directly in a micro-batch loop;
* apply_plan 1 rank  one process, apply_plan with dp = tp = pp = 1 (no mesh): ParallelModel's
                     step path, without and with the SavedTensorMeter that runs report memory;
* run dp=2           runtime.launch.run on 2 forked gloo ranks, each with half the batch (the
                     report's mean step time after the first step, meter on). On a 2-core host
                     this shows gloo's all-reduce cost, not a speed-up.

The median of the timed steps is printed (the first 2 steps are warm-up); the single-process
rows take their steps in turn, so load from other processes on a shared host hits each alike.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.load import load_model
from runtime.launch import run
from runtime.memory import SavedTensorMeter, state_tensors
from runtime.model import build_model, next_token_loss
from runtime.parallelize import apply_plan
from runtime.plan_io import make_plan
from runtime.recipe import SGD_PARITY
from runtime.train import TokenSource

WARMUP = 2


def _median_steps(step_fns: dict, steps: int) -> dict[str, float]:
    """Median step time of each function, their steps interleaved so that load from other
    processes on a shared host falls on every row alike."""
    times: dict[str, list[float]] = {name: [] for name in step_fns}
    for i in range(steps + WARMUP):
        for name, step in step_fns.items():
            start = time.perf_counter()
            step(i)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[WARMUP:]) for name, t in times.items()}


def plain_step(plan: dict, spec):
    model = build_model(spec, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    source, n = TokenSource(plan), plan["parallelism"]["num_micro_batches"]

    def step(i: int) -> None:
        batch = source.batch(i)
        for chunk in batch.chunk(n):
            (next_token_loss(model(chunk[:, :-1]), chunk[:, 1:]) / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def apply_plan_step(plan: dict, spec, meter: bool):
    pm = apply_plan(build_model(spec, seed=0), plan)
    opt = pm.build_optimizer(SGD_PARITY)  # SGD at 0.1, as the plain loop
    source = TokenSource(plan)

    def step(i: int) -> None:
        batch = source.batch(i)
        with SavedTensorMeter(state_tensors(*pm.parts)) if meter else contextlib.nullcontext():
            pm.forward_backward(batch[:, :-1], batch[:, 1:])
        pm.sync_gradients()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_run_dp2(spec, args) -> float:
    plan = make_plan(spec, dp=2, num_micro_batches=args.micro_batches // 2, seq_len=args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(plan, args.steps + WARMUP, out=Path(tmp, "report.json"), recipe=SGD_PARITY)
    times = [s["step_time_s"] for s in report["steps"][WARMUP:]]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="debug", help="model preset")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--micro-batches", type=int, default=4, help="global batch = this many sequences")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_model(args.model)
    plan = make_plan(spec, num_micro_batches=args.micro_batches, seq_len=args.seq_len)
    # Forked ranks inherit the parent's state: run them before the parent's own timing loops.
    dp2 = time_run_dp2(spec, args)
    rows = _median_steps(
        {
            "plain": plain_step(plan, spec),
            "apply_plan 1 rank": apply_plan_step(plan, spec, meter=False),
            "apply_plan 1 rank + meter": apply_plan_step(plan, spec, meter=True),
        },
        args.steps,
    )
    rows["run dp=2 (2 processes)"] = dp2
    plain = rows["plain"]
    print(f"model {spec.name}, global batch {args.micro_batches} x {args.seq_len} tokens, median of {args.steps} steps")
    for name, seconds in rows.items():
        print(f"{name:28s} {seconds * 1e3:8.2f} ms/step  ({seconds / plain:5.2f}x plain)")


if __name__ == "__main__":
    main()
