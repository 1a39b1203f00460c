"""The outer candidates: every combination of the knobs (planner.knobs) that passes ``check_plan``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from hardware.cluster import ClusterSpec
from models.spec import ModelSpec
from planner.config import Parallel, PlanError, Training, check_plan
from planner.knobs import KNOBS, Knobs, Space
from planner.schedules import ONE_F_ONE_B

# Knobs whose ranges do not depend on one another, in the order of the product. The order is
# the tie-break between candidates of equal bound (a stable sort in the search), so it is fixed.
# Every other searched knob (``vpp``, ``dp_replicate``) is expanded per candidate, in registry
# order, from the knobs chosen before it.
PRODUCT = ("tp", "pp", "cp", "ep", "micro_batch", "zero", "schedule", "sequence_parallel")
DEPENDENT = tuple(k for k in KNOBS if k.searched and k.name not in PRODUCT and k.name != "dp")


def space_of(spec: ModelSpec, cluster: ClusterSpec, train: Training) -> Space:
    return Space(
        cluster.num_gpus,
        cluster.gpus_per_node,
        spec.num_layers,
        spec.moe.num_experts if spec.moe else None,
        train.seq_len,
        train.global_batch,
    )


def _dependent(space: Space, chosen: dict[str, Any], knobs: Knobs, rest: tuple = DEPENDENT) -> Iterator[dict]:
    if not rest:
        yield chosen
        return
    k = rest[0]
    for value in k.values(space, chosen, knobs.given(k.name)):
        yield from _dependent(space, chosen | {k.name: value}, knobs, rest[1:])


def enumerate_candidates(
    spec: ModelSpec, cluster: ClusterSpec, train: Training, knobs: Knobs
) -> tuple[list[Parallel], int]:
    """All outer candidates that pass ``check_plan``; returns them and the count rejected. ZeRO
    over a data-parallel group of one rank (dp·cp = 1) shards nothing: when stage 0 is allowed,
    stages 1-3 there are the same plan (or, for 3, a worse one) and are not listed. With pp = 1
    the schedule is moot: the first one listed stands for all, as 1f1b."""
    n, space = cluster.num_gpus, space_of(spec, cluster, train)
    lists = {name: next(k for k in KNOBS if k.name == name).values(space, {}, knobs.given(name)) for name in PRODUCT}
    dps, zeros = knobs.given("dp"), lists["zero"]
    out, rejected = [], 0
    for combo in itertools.product(*(lists[name] for name in PRODUCT)):
        c = dict(zip(PRODUCT, combo))
        if c["tp"] == 1:
            c["sequence_parallel"] = False
        rest = c["tp"] * c["pp"] * c["cp"]
        if n % rest or (c["pp"] == 1 and c["schedule"] != lists["schedule"][0]):
            continue
        c["dp"] = n // rest
        if dps is not None and c["dp"] not in dps or c["dp"] * c["cp"] == 1 and c["zero"] > 0 and 0 in zeros:
            continue
        if c["pp"] == 1:
            c["schedule"] = ONE_F_ONE_B.name
        for chosen in _dependent(space, c, knobs):
            par = Parallel(**chosen)
            try:
                check_plan(par, train, spec, n)
            except PlanError:
                rejected += 1
                continue
            out.append(par)
    return out, rejected
