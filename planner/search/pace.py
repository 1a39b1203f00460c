"""How long the next piece of search work will take, from the pieces already done: the search
skips a piece (a heuristic estimate, a candidate's placement solve) that would end past its
deadline, so a time limit is kept to within the time of a piece shorter than its prediction.

Both pieces cost time linear in the schedule they simulate or place: ``estimate`` walks the
2·m·p·v forward and backward operations of the pipeline (m micro-batches, p stages, v virtual
stages per rank; planner/cost/schedule.py, ``simulate``), and the placement model and its LP relaxation grow
with them (planner/search/milp/placement.py). Measured for the 1,000-layer gpt3-175b on 1,024
H100s: 0.01 s at 2 operations, 0.19 s at 131,072, 1.2-2.4 s at 524,288 on a loaded machine —
a fixed part and about 2-5 µs per operation. So the prediction is affine, ``fixed_s + s_per_op ·
ops``, each term the largest seen (a conservative fit: noise only makes it skip earlier):
``fixed_s`` from pieces of at most ``SMALL_OPS`` operations, ``s_per_op`` from the larger ones
after ``fixed_s``. Before any piece is measured nothing is skipped. With a deadline never
reached, nothing is skipped either: a search within its limit finds the same plan.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from hardware.cluster import ClusterSpec
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.estimate import Estimate, estimate

# Pieces up to this many operations calibrate the fixed part (the exact-LP threshold of
# planner/search/solve.py, EXACT_LP_MAX_OPS: below it an estimate takes about 0.01-0.05 s).
SMALL_OPS = 8192


def schedule_ops(par: Parallel, global_batch: int) -> int:
    """2·m·p·v: the forward and backward operations of the candidate's pipeline schedule."""
    return 2 * par.num_micro_batches(global_batch) * par.chunks


@dataclass
class Pace:
    """The slowest pace seen so far of one kind of piece (see the module docstring)."""

    fixed_s: float = 0.0
    s_per_op: float = 0.0

    def record(self, ops: int, seconds: float) -> None:
        if ops <= SMALL_OPS:
            self.fixed_s = max(self.fixed_s, seconds)
        else:
            self.s_per_op = max(self.s_per_op, max(0.0, seconds - self.fixed_s) / ops)

    def predict_s(self, ops: int) -> float:
        return self.fixed_s + self.s_per_op * ops

    def fits(self, ops: int, deadline: float) -> bool:
        """Whether a piece of ``ops`` operations started now is predicted to end by ``deadline``."""
        return time.perf_counter() + self.predict_s(ops) <= deadline


@dataclass
class Timed:
    """``estimate`` under a deadline (the polish steps, planner.search.polish): None, and not run,
    when ``pace`` predicts it would end past ``deadline``; each one run is recorded in ``pace``.
    The default, no deadline, runs every one."""

    pace: Pace = field(default_factory=Pace)
    deadline: float = math.inf

    def estimate(self, spec: ModelSpec, cluster: ClusterSpec, train: Training, par: Parallel) -> Estimate | None:
        ops = schedule_ops(par, train.global_batch)
        if not self.pace.fits(ops, self.deadline):
            return None
        t0 = time.perf_counter()
        e = estimate(spec, cluster, train, par)
        self.pace.record(ops, time.perf_counter() - t0)
        return e
