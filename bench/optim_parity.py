"""Parity errors of the training recipe (AdamW, mixed precision, clipping, schedule) per config:
the figures of docs/runtime.md ("Parity"). Each row is one 2-rank run on gloo against the
single-process reference, with the configs and recipe of tests/test_runtime_optim.py.

    python bench/optim_parity.py    # about a minute on 2 idle cores
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_runtime_optim import FP32, FP32_CONFIGS, RECIPE, SEQ, STEPS

from models.load import load_model
from runtime.parity import check_parity
from runtime.plan_io import make_plan


def _row(name: str, label: str, plan: dict, recipe) -> str:
    r = check_parity(plan, steps=STEPS, recipe=recipe)
    return f"| {name} | {label} | {r.max_loss_rel_err:.1e} | {r.max_norm_rel_err:.1e} | {r.max_param_err:.1e} |"


def main() -> None:
    print("| config | compute | loss | grad norm | parameters |\n| --- | --- | --- | --- | --- |")
    for name, (spec, kwargs) in FP32_CONFIGS.items():
        print(_row(name, "fp32", make_plan(spec, seq_len=SEQ, **kwargs), FP32), flush=True)
        print(_row(name, "bf16", make_plan(spec, seq_len=SEQ, dtype="bf16", **kwargs), RECIPE), flush=True)
    fp16 = make_plan(load_model("debug"), dp=2, seq_len=SEQ, num_micro_batches=2, dtype="fp16")
    print(_row("dp", "fp16", fp16, RECIPE))


if __name__ == "__main__":
    main()
