"""Single-GPU check of the runtime against the planner (issue 4): plan llama3.2-1b on one GPU in
bf16, run it, and compare measured MFU and peak memory with the prediction.

    python bench/gpu_check.py [--steps 20] [--seq-len 2048] [--global-batch 8]

Pass criteria printed at the end: measured MFU >= 35% (H100) and measured peak memory within 10%
of the predicted peak. Needs CUDA; exits 2 with a message otherwise. Record the output in
docs/validation.md with the date and the device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--gpu", default="h100-sxm-80gb")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        plan, report = Path(tmp) / "plan.json", Path(tmp) / "report.json"
        subprocess.run(
            [
                "autopar",
                "plan",
                "--model",
                "llama3.2-1b",
                "--cluster",
                f"{args.gpu}:1",
                "--global-batch",
                str(args.global_batch),
                "--seq-len",
                str(args.seq_len),
                "--dtype",
                "bf16",
                "--out",
                str(plan),
                "--format",
                "json",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                "autopar",
                "run",
                str(plan),
                "--steps",
                str(args.steps),
                "--report",
                str(report),
                "--device",
                "cuda",
                "--format",
                "json",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        p, r = json.loads(plan.read_text()), json.loads(report.read_text())
    pred = p["predicted"]
    measured_step = r["measured"]["step_time_s"]
    mfu = pred["mfu"] * pred["step_time_s"] / measured_step  # MFU scales as 1 / step time
    mem_err = r["measured"]["peak_memory_bytes"] / pred["peak_memory_bytes"] - 1
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0),
                "parallelism": p["parallelism"],
                "predicted_step_time_s": pred["step_time_s"],
                "measured_step_time_s": measured_step,
                "predicted_mfu": pred["mfu"],
                "measured_mfu": mfu,
                "predicted_peak_memory_bytes": pred["peak_memory_bytes"],
                "measured_peak_memory_bytes": r["measured"]["peak_memory_bytes"],
                "memory_relative_error": mem_err,
            },
            indent=2,
        )
    )
    ok = mfu >= 0.35 and abs(mem_err) <= 0.10
    print(
        f"MFU {mfu:.1%} (>= 35%: {mfu >= 0.35}); peak memory error {mem_err:+.1%} (within 10%: {abs(mem_err) <= 0.10})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
