"""Parity errors of the training recipe (AdamW, mixed precision, clipping, schedule) per config:
the figures of docs/runtime.md ("Parity"). Each row is one run on gloo against the
single-process reference, with the recipe of tests/test_runtime_optim.py: fp32 compute against
the whole-batch reference, bf16 compute against the whole-batch reference ("bf16 whole") and
against the reference that walks the batch as the plan's ranks and micro-batches ("bf16
matched", runtime.reference, what check_parity uses for 16-bit runs).

    python bench/optim_parity.py            # the 2-rank configs of tests/test_runtime_optim.py
    python bench/optim_parity.py --layouts  # bf16 matched only: cp 2/4, ep 2/4, tp 2/4, 4- and 8-rank mixes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_runtime_optim import FP32, FP32_CONFIGS, GPT, LLAMA, MOE, RECIPE, SEQ, STEPS

from runtime.parity import check_parity
from runtime.plan_io import make_plan

# Layouts beyond the 2-rank configs: the cp 2 and 4, ep 2 and 4, alone and combined.
LAYOUTS = {
    "cp2": (LLAMA, dict(cp=2)),
    "cp4": (LLAMA, dict(cp=4)),
    "ep2 (dp2)": (MOE, dict(dp=2, ep=2)),
    "ep4 (dp4)": (MOE, dict(dp=4, ep=4)),
    "dp4 zero1": (LLAMA, dict(dp=4, zero_stage=1, num_micro_batches=2)),
    "dp2 hsdp zero3 (dp4)": (LLAMA, dict(dp=4, zero_stage=3, dp_replicate=2)),
    "pp2 x dp2 zero3": (GPT, dict(pp=2, dp=2, zero_stage=3, num_micro_batches=2)),
    "pp4 1f1b": (LLAMA, dict(pp=4, num_micro_batches=4, schedule="1f1b")),
    "dp2 x tp2": (LLAMA, dict(dp=2, tp=2, num_micro_batches=2)),
    # tp's partial sums (runtime.reference_tp): gloo's ring order beyond 2 ranks, MoE experts, and
    # SP norms' partials meeting in bf16 under FSDP2 (zero2 without pp).
    "tp2": (LLAMA, dict(tp=2, micro_batch_size=2)),
    "tp4": (GPT, dict(tp=4, micro_batch_size=2)),
    "tp4 sp": (GPT, dict(tp=4, sequence_parallel=True, micro_batch_size=2)),
    "tp2 sp (moe)": (MOE, dict(tp=2, sequence_parallel=True, micro_batch_size=2)),
    "dp2 x tp2 sp zero2": (GPT, dict(dp=2, tp=2, num_micro_batches=2, zero_stage=2, sequence_parallel=True)),
    "dp2 x cp2 zero1": (LLAMA, dict(dp=2, cp=2, zero_stage=1)),
    "pp2 x dp2(ep2) zero1": (MOE, dict(pp=2, dp=2, ep=2, zero_stage=1, num_micro_batches=2)),
    "pp2 x dp2 x tp2 sp zero3": (
        LLAMA,
        dict(pp=2, dp=2, tp=2, num_micro_batches=2, zero_stage=3, sequence_parallel=True),
    ),
    "pp2 x cp2 x tp2 sp zero1": (
        LLAMA,
        dict(pp=2, cp=2, tp=2, num_micro_batches=2, sequence_parallel=True, zero_stage=1),
    ),
    "gpt cp2 (learned positions, tied)": (GPT, dict(cp=2)),
    "pp2 x dp2 x cp2 zero1": (LLAMA, dict(pp=2, dp=2, cp=2, zero_stage=1, num_micro_batches=2)),
    "pp2 x dp2(ep2) x cp2 1f1b": (MOE, dict(pp=2, dp=2, ep=2, cp=2, num_micro_batches=2, schedule="1f1b")),
    "pp2 x dp2(ep2) x tp2 zero3": (
        MOE,
        dict(pp=2, dp=2, ep=2, tp=2, num_micro_batches=2, schedule="1f1b", zero_stage=3),
    ),
}


def _row(name: str, label: str, plan: dict, recipe, matched: bool | None = None) -> str:
    r = check_parity(plan, steps=STEPS, recipe=recipe, matched=matched)
    errors = f"{r.max_loss_rel_err:.1e} | {r.max_norm_rel_err:.1e} | {r.max_param_err:.1e}"
    return f"| {name} | {label} | {errors} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layouts", action="store_true", help="the cp/ep/tp and multi-dimensional layouts")
    parser.add_argument("--only", nargs="*", help="with --layouts: these layouts only (names as in LAYOUTS)")
    args = parser.parse_args()
    print("| config | compute, reference | loss | grad norm | parameters |\n| --- | --- | --- | --- | --- |")
    if args.layouts:
        for name, (spec, kwargs) in LAYOUTS.items():
            if args.only and name not in args.only:
                continue
            print(_row(name, "bf16 matched", make_plan(spec, seq_len=SEQ, dtype="bf16", **kwargs), RECIPE), flush=True)
        return
    for name, (spec, kwargs) in FP32_CONFIGS.items():
        print(_row(name, "fp32 whole", make_plan(spec, seq_len=SEQ, **kwargs), FP32), flush=True)
        bf16 = make_plan(spec, seq_len=SEQ, dtype="bf16", **kwargs)
        print(_row(name, "bf16 whole", bf16, RECIPE, matched=False), flush=True)
        print(_row(name, "bf16 matched", bf16, RECIPE), flush=True)
    fp16 = make_plan(LLAMA, dp=2, seq_len=SEQ, num_micro_batches=2, dtype="fp16")
    print(_row("dp", "fp16 whole", fp16, RECIPE, matched=False))
    print(_row("dp", "fp16 matched", fp16, RECIPE))


if __name__ == "__main__":
    main()
