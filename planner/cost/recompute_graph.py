"""A layer as a recomputation graph: saved tensors, the ops that produce them, and the least
recompute a kept set allows (its closure) — the data the recomputation program
(``planner/search/milp/recompute.py``) solves over and the cost model prices a kept set with
(``planner/cost/kept_set.py``), without a solver.

Tensors ``t`` (integer size ``m_t`` in ``unit_bytes``, producer ``op(t)``, ``needed_t``: read by
backward), ops ``o`` (integer forward time ``c_o`` in ``unit_s``, inputs ``in(o)``), sources (the
layer input, ``op = ""``) always kept. Holding a kept set ``K``, the backward must re-run the
closure: the ops of the needed tensors not in ``K`` and, recursively, the ops of their inputs not
in ``K`` (Checkmate, Jain et al. 2020, constraints 1b-1c with one recompute stage).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    size: int  # in the graph's unit_bytes
    op: str  # the op that produces it; "" for a source (the layer input)
    needed: bool  # read by the backward pass


@dataclass(frozen=True)
class OpNode:
    name: str
    time: int  # forward time in the graph's unit_s
    inputs: tuple[str, ...]  # tensors it reads


@dataclass(frozen=True)
class RecomputeGraph:
    tensors: tuple[Tensor, ...]
    ops: tuple[OpNode, ...]
    unit_bytes: float = 1.0
    unit_s: float = 1.0

    def op(self, name: str) -> OpNode:
        return next(o for o in self.ops if o.name == name)

    def check(self) -> None:
        """One-line errors for a graph the formulation cannot read."""
        names = {t.name for t in self.tensors}
        ops = {o.name for o in self.ops}
        for t in self.tensors:
            if t.op and t.op not in ops:
                raise ValueError(f"tensor {t.name}: producer op {t.op!r} is not an op of the graph")
            if t.size < 0:
                raise ValueError(f"tensor {t.name}: size {t.size} must be >= 0")
        producer = {t.name: t.op for t in self.tensors}
        done: set[str] = {""}
        for o in self.ops:
            missing = [u for u in o.inputs if u not in names]
            if missing:
                raise ValueError(f"op {o.name}: inputs {missing} are not tensors of the graph")
            # Forward order: an op reads sources and earlier ops' outputs only. A cycle would let
            # two re-run ops feed each other with no kept tensor under them.
            later = [u for u in o.inputs if producer[u] not in done]
            if later:
                raise ValueError(
                    f"op {o.name}: inputs {later} come from itself or a later op; list ops in forward order"
                )
            done.add(o.name)


def recompute_closure(g: RecomputeGraph, kept: frozenset[str]) -> frozenset[str]:
    """The ops the backward must re-run when it holds ``kept``: those of the needed, unkept
    tensors, and recursively those of their unkept inputs."""
    by_name = {t.name: t for t in g.tensors}
    todo = [t.op for t in g.tensors if t.needed and t.name not in kept]
    rerun: set[str] = set()
    while todo:
        o = todo.pop()
        if o in rerun:
            continue
        if not o:
            raise ValueError("a source tensor must be kept")
        rerun.add(o)
        todo += [by_name[u].op for u in g.op(o).inputs if u not in kept]
    return frozenset(rerun)
