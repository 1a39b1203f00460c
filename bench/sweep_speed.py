"""Wall time of a 30-point `autopar sweep` on a cold cache (issue 5: under 30 s on 2 cores).

    python bench/sweep_speed.py [--jobs N] [--time-limit S]

Runs, end to end in a fresh interpreter (start-up included) with an empty cache directory,
    autopar sweep -m llama3-8b -c h100-sxm-80gb:64 -b 512 -s 4096 --vary cluster.num_gpus=16,32,64,128,256
        --vary seq_len=2048,4096,8192 --vary gpu=h100-sxm-80gb,a100-sxm-80gb --format jsonl
(5 x 3 x 2 = 30 points), then the same command again to show the cached rerun. Prints the wall
times, the solver status counts and the largest per-point gap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [
    "sweep",
    "-m",
    "llama3-8b",
    "-c",
    "h100-sxm-80gb:64",
    "-b",
    "512",
    "-s",
    "4096",
    "--vary",
    "cluster.num_gpus=16,32,64,128,256",
    "--vary",
    "seq_len=2048,4096,8192",
    "--vary",
    "gpu=h100-sxm-80gb,a100-sxm-80gb",
    "--format",
    "jsonl",
]
TARGET_S = 30.0


def run(cache: str, extra: list[str]) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from cli import app; app()", *SWEEP, "--cache", cache, *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, [json.loads(line) for line in proc.stdout.splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds per point (default: the CLI's)")
    args = ap.parse_args()
    extra = (["--jobs", str(args.jobs)] if args.jobs else []) + (
        ["--time-limit", str(args.time_limit)] if args.time_limit else []
    )
    with tempfile.TemporaryDirectory() as cache:
        cold, rows = run(cache, extra)
        warm, again = run(cache, extra)
    status = Counter(r["solver_status"] for r in rows)
    gaps = [r["gap"] for r in rows if r["gap"] is not None]
    print(
        f"30-point sweep (llama3-8b; 16..256 GPUs x seq 2048..8192 x H100/A100), {os.cpu_count()} CPUs, "
        f"jobs {args.jobs or os.cpu_count()}:"
    )
    print(
        f"  cold cache: {cold:.1f} s wall (target < {TARGET_S:.0f} s) for {len(rows)} points, "
        f"{sum(r['feasible'] for r in rows)} feasible; solver status {dict(status)}; "
        f"max gap {max(gaps):.2%}; sum of per-point search time {sum(r['solve_wall_s'] or 0 for r in rows):.1f} s"
    )
    print(f"  rerun (all cached: {all(r['cached'] for r in again)}): {warm:.1f} s wall")
    return 0 if cold < TARGET_S and len(rows) == 30 else 1


if __name__ == "__main__":
    sys.exit(main())
