"""The result of the sharding ILP (planner/search/milp/sharding.py) and of its baselines: per op
its strategy and layouts, per edge the collectives it runs, and the layer's time and memory on
one rank at that tp degree. Saved as versioned JSON (``to_json``), never pickled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VERSION = 1


@dataclass(frozen=True)
class OpSharding:
    """One op's chosen strategy: input/output/weight layouts (B, P, S0, S1), its own costs."""

    op: str
    strategy: str
    inputs: tuple[str, ...]
    output: str
    weight: str
    compute_s: float
    comm_s: float
    memory_bytes: float


@dataclass(frozen=True)
class Reshard:
    """The conversions on edge ``src → dst`` (input ``slot``): forward of the tensor, backward of its gradient."""

    src: str
    dst: str
    slot: int
    fwd: str  # '', 'slice', 'all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all'
    bwd: str
    seconds: float


@dataclass(frozen=True)
class ShardingPlan:
    """A layer's sharding at one tp degree; ``time_s`` is the objective (compute + comm, fwd + bwd)."""

    graph: str
    tp: int
    status: str
    backend: str
    time_s: float
    ops: tuple[OpSharding, ...]
    edges: tuple[Reshard, ...]
    solve_time_s: float = 0.0
    mesh_shape: tuple[int, ...] = ()  # (tp,) or (outer, inner) of a 2-D mesh

    @property
    def compute_s(self) -> float:
        return sum(o.compute_s for o in self.ops)

    @property
    def comm_s(self) -> float:
        return sum(o.comm_s for o in self.ops) + sum(e.seconds for e in self.edges)

    @property
    def memory_bytes(self) -> float:
        return sum(o.memory_bytes for o in self.ops)

    def strategy(self, op: str) -> str:
        return self.op(op).strategy

    def op(self, name: str) -> OpSharding:
        for o in self.ops:
            if o.op == name:
                return o
        raise KeyError(f"plan {self.graph} has no op {name!r}")

    def collectives(self, direction: str = "fwd") -> list[tuple[str, str, str]]:
        """(src, dst, collective) of every edge that communicates in ``direction`` ('fwd' or 'bwd')."""
        out = []
        for e in self.edges:
            kind = e.fwd if direction == "fwd" else e.bwd
            if kind not in ("", "slice"):
                out.append((e.src, e.dst, kind))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "graph": self.graph,
            "tp": self.tp,
            "mesh_shape": list(self.mesh_shape),
            "status": self.status,
            "backend": self.backend,
            "time_s": self.time_s,
            "compute_s": self.compute_s,
            "comm_s": self.comm_s,
            "memory_bytes": self.memory_bytes,
            "solve_time_s": self.solve_time_s,
            "ops": [
                {
                    "op": o.op,
                    "strategy": o.strategy,
                    "inputs": list(o.inputs),
                    "output": o.output,
                    "weight": o.weight,
                    "compute_s": o.compute_s,
                    "comm_s": o.comm_s,
                    "memory_bytes": o.memory_bytes,
                }
                for o in self.ops
            ],
            "edges": [
                {"src": e.src, "dst": e.dst, "slot": e.slot, "fwd": e.fwd, "bwd": e.bwd, "seconds": e.seconds}
                for e in self.edges
            ],
        }
