"""One line per training step: a JSON line in the metrics file (``--metrics FILE``, JSONL) and a
progress line on the terminal.

Every rank contributes its step time and peak memory (one small all-gather per step, outside
the timed region, and only when a file or progress is asked for); rank 0 writes and prints. A metrics line (``METRICS_SCHEMA_VERSION``):

``{"schema_version", "step", "loss", "lr", "grad_norm", "step_time_s", "tokens", "tokens_per_s",
"peak_memory_bytes_per_rank", "memory_kind", "profiled", "time_unix_s"}``

``loss`` is the global-batch mean; ``step_time_s`` the slowest rank's; ``tokens_per_s`` the
global batch's tokens over it; ``lr`` the optimizer's first parameter group's rate;
``grad_norm`` the global gradient norm when the optimizer step computes one (clipping), else
null; ``peak_memory_bytes_per_rank`` in rank order, of the kind ``memory_kind`` names (see
:mod:`runtime.report`); ``profiled`` marks the step run under the torch profiler (slower:
:mod:`runtime.profile`). The file is flushed after every line, so a dashboard can tail it.

The progress line rewrites itself in place when stderr is a terminal, and is one plain line per
step otherwise (a log file, CI).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist

METRICS_SCHEMA_VERSION = "1.0"


def current_lr(optimizer: Any, default: float) -> float:
    """The first parameter group's learning rate (ZeRO-1's wrapper keeps its optimizer in
    ``inner``), else ``default``."""
    groups = getattr(optimizer, "param_groups", None) or getattr(getattr(optimizer, "inner", None), "param_groups", [])
    return float(groups[0]["lr"]) if groups else default


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


class StepLog:
    """Gathers each step's figures from every rank; rank 0 appends the JSON line and prints."""

    def __init__(self, plan: dict, steps: int, path: str | None, progress: bool, memory_kind: str, device):
        t = plan["inputs"]["training"]
        self.tokens, self.steps, self.memory_kind, self.device = (
            t["global_batch_size"] * t["seq_len"],
            steps,
            memory_kind,
            device,
        )
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.file: TextIO | None = None
        if path is not None and self.rank == 0:
            self.file = Path(path).open("w")
        # The same on every rank (same arguments): without a file or progress, no gather at all.
        self.wanted = path is not None or progress
        self.progress, self.tty = progress and self.rank == 0, sys.stderr.isatty()

    def step(
        self,
        step: int,
        loss: float,
        step_time_s: float,
        peak_bytes: int,
        lr: float,
        grad_norm: float | None,
        profiled: bool = False,
    ) -> None:
        if not self.wanted:
            return
        mine = torch.tensor([step_time_s, float(peak_bytes)], dtype=torch.float64, device=self.device)
        if dist.is_initialized():
            every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
            dist.all_gather(every, mine)
        else:
            every = [mine]
        if self.rank != 0:
            return
        slowest = max(float(t[0]) for t in every)
        line = {
            "schema_version": METRICS_SCHEMA_VERSION,
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_time_s": slowest,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / slowest if slowest > 0 else None,
            "peak_memory_bytes_per_rank": [int(t[1]) for t in every],
            "memory_kind": self.memory_kind,
            "profiled": profiled,
            "time_unix_s": time.time(),
        }
        if self.file is not None:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
        if self.progress:
            self._print(line)

    def _print(self, m: dict) -> None:
        norm = f" | grad norm {m['grad_norm']:.3g}" if m["grad_norm"] is not None else ""
        text = (
            f"step {m['step'] + 1}/{self.steps} | loss {m['loss']:.4f} | lr {m['lr']:.3g}{norm} | "
            f"{m['tokens_per_s']:,.0f} tokens/s | {m['step_time_s']:.3f} s | "
            f"peak {_bytes(max(m['peak_memory_bytes_per_rank']))} ({m['memory_kind']}, max over ranks)"
        )
        last = m["step"] + 1 == self.steps
        if self.tty:  # rewrite in place; the last step leaves its line
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if last else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
