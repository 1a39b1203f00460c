"""Fault injection for tests of failure handling: ``AUTOPAR_FAULT="rank=R,step=S"`` makes rank R
leave with ``os._exit(1)`` as it starts step S, like a machine lost mid-run (no Python traceback,
no cleanup), so that `autopar run` and ``--elastic`` can be tested without killing processes by
hand. The launcher reads the variable once per `autopar run` and hands the fault to the first
launch only: ranks relaunched by ``--elastic`` never see it (the fork server's environment is
fixed when it starts, so the ranks do not read the variable themselves). Torch-free.

Also here: the step file through which rank 0 tells the launcher which step it has reached and
the losses so far (a JSON line each), so that a lost rank is reported with the step it was lost at
and an elastic run's report keeps the losses of the steps before its resume point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.plan_io import PlanError

FAULT_ENV = "AUTOPAR_FAULT"


@dataclass(frozen=True)
class Fault:
    """Rank ``rank`` exits (code 1) as it starts step ``step`` (0-based)."""

    rank: int
    step: int


def fault_from_env(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The fault ``AUTOPAR_FAULT`` asks for, or None; a malformed value is one line (PlanError)."""
    text = environ.get(FAULT_ENV, "").strip()
    if not text:
        return None
    try:
        fields = dict(item.split("=", 1) for item in text.split(","))
        if set(fields) == {"rank", "step"}:
            return Fault(int(fields["rank"]), int(fields["step"]))
    except ValueError:
        pass
    return _bad(text)


def _bad(text: str) -> Fault:
    raise PlanError(f"{FAULT_ENV}={text!r}: expected rank=R,step=S (e.g. rank=1,step=3)")


def step_hook(fault: Fault | None, rank: int, step_file: str | None) -> Callable[[int, list], None]:
    """What a rank does as it starts each step (given the losses of the steps it ran): rank 0
    appends the previous step's loss and the step to ``step_file``; the faulty rank exits."""

    def on_step(step: int, losses: list) -> None:
        if rank == 0 and step_file is not None:
            with open(step_file, "a") as f:
                if losses:
                    f.write(json.dumps({"step": step - 1, "loss": losses[-1]}) + "\n")
                f.write(json.dumps({"started": step}) + "\n")
        if fault is not None and fault.rank == rank and fault.step == step:
            os._exit(1)  # a lost machine: no exception, no cleanup, no traceback file

    return on_step


def read_steps(step_file: str) -> tuple[int | None, dict[int, float]]:
    """(the step rank 0 last started or None, the loss of each step it finished)."""
    started, losses = None, {}
    try:
        lines = Path(step_file).read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short when the rank died
            continue
        if "started" in entry:
            started = entry["started"]
        else:
            losses[entry["step"]] = entry["loss"]
    return started, losses
