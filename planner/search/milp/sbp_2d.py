"""Sharding strategies on a 2-D mesh ``(outer, inner)``: one 1-D strategy per mesh axis
(OneFlow's 2-D SBP, Yuan et al. 2021 §3.3; Alpa's 2-D strategies, Zheng et al. 2022 §4.1).

A layout is ``"L0,L1"``: the tensor's layout along the outer axis, then the inner one (``S1,S0``
— features split over the outer axis, rows over the inner). The inner axis is ranks next to each
other (stride 1), the outer axis ranks ``inner`` apart (``hardware.comm.group_span``).

A 2-D strategy pairs a strategy ``s0`` of the op on the outer axis with ``s1`` on the inner axis;
each 1-D rule holds along its axis, so the pair is legal when every dim split on both axes
divides by ``outer · inner``. Its costs:

* compute: the work divided by ``outer`` if s0 splits it, by ``inner`` if s1 does;
* weight-gradient all-reduce along an axis whose strategy keeps the weight replicated and splits
  rows, of the weight bytes left on a rank by the other axis's split;
* memory: weight state ÷ the axes that split the weight, output ÷ the axes that split it;
* gradient layouts: per axis, as on a 1-D mesh.

A conversion ``"L0,L1" → "M0,M1"`` is one 1-D conversion per axis that changes, each on the
bytes a rank group along that axis holds (the whole tensor ÷ the other axis's split at that
moment); the cheaper of the two orders (outer first, or inner first) is taken. Splitting one dim
on both axes is priced the same way, which treats the nested split as two independent ones (an
approximation: the order of the blocks is not modelled).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hardware.cluster import ClusterSpec
from hardware.comm import all_reduce_s
from planner.search.milp.sbp import ShardingMesh, Strategy, TokenSplit, compute_s
from planner.search.milp.sharding_graph import OpGraph, OpSpec


@dataclass(frozen=True)
class ShardingMesh2D:
    """``outer × inner`` ranks of ``cluster``; the inner axis is contiguous ranks."""

    outer: int
    inner: int
    cluster: ClusterSpec
    token_split: TokenSplit = "none"
    act_bytes: int = 2
    state_bytes_per_param: float = 16.0

    def __post_init__(self) -> None:
        if self.outer < 1 or self.inner < 1:
            raise ValueError(f"mesh axes must be >= 1 (got {self.outer} x {self.inner})")

    @property
    def tp(self) -> int:
        return self.outer * self.inner

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.outer, self.inner)

    def axes(self) -> tuple[ShardingMesh, ShardingMesh]:
        """The 1-D meshes of the outer axis (members ``inner`` ranks apart) and the inner axis."""
        kw = {
            "token_split": self.token_split,
            "act_bytes": self.act_bytes,
            "state_bytes_per_param": self.state_bytes_per_param,
        }
        return (
            ShardingMesh(self.outer, self.cluster, stride=self.inner, **kw),  # type: ignore[arg-type]
            ShardingMesh(self.inner, self.cluster, **kw),  # type: ignore[arg-type]
        )

    def key(self) -> tuple:
        fields = (self.outer, self.inner, self.token_split, self.act_bytes, self.state_bytes_per_param)
        return ("2d", *fields, self.cluster.model_dump_json())

    def strategies(self, op: OpSpec, graph: OpGraph) -> list[Strategy]:
        return strategies_2d(op, graph, self)

    def conversion_s(self, src: str, dst: str, nbytes: float) -> float:
        return conversion_2d_s(src, dst, nbytes, self)

    def collective(self, src: str, dst: str) -> str:
        """Per axis that communicates, ``kind@axis`` joined by '+'; 'slice' when only local slicing."""
        steps = [(a, b, axis) for axis, (a, b) in enumerate(zip(src.split(","), dst.split(","))) if a != b]
        kinds = [(self.axes()[axis].collective(a, b), axis) for a, b, axis in steps]
        talk = "+".join(f"{k}@{axis}" for k, axis in kinds if k != "slice")
        return talk or ("slice" if kinds else "")


def _ways(layout: str, mesh: ShardingMesh2D) -> tuple[int, int]:
    """How many ways the outer and inner axes split a tensor in ``layout`` ('S*' splits it)."""
    l0, l1 = layout.split(",")
    return (mesh.outer if l0.startswith("S") else 1, mesh.inner if l1.startswith("S") else 1)


def _legal(op: OpSpec, graph: OpGraph, s0: Strategy, s1: Strategy, mesh: ShardingMesh2D) -> bool:
    """Every dim split on both axes divides by outer · inner (rows: row groups; features: units)."""
    p = mesh.tp
    widths = [graph.op(i).width for i in op.inputs]
    for a, b in zip(s0.inputs + (s0.output,), s1.inputs + (s1.output,)):
        if a == b == "S0" and (op.row_groups or op.rows) % p:
            return False
        if a == b == "S1" and ((op.units or op.width) % p or any(w % p for w in widths)):
            return False
    if s0.weight == s1.weight and s0.weight in ("S0", "S1"):
        return (op.in_width if s0.weight == "S0" else op.width) % p == 0
    return True


def _pair(op: OpSpec, s0: Strategy, s1: Strategy, mesh: ShardingMesh2D) -> Strategy:
    """The 2-D strategy of ``s0`` on the outer axis and ``s1`` on the inner one (module docstring)."""
    outer, inner = mesh.axes()
    ways = (mesh.outer if s0.name != "rep" else 1) * (mesh.inner if s1.name != "rep" else 1)
    w_ways = (mesh.outer if s0.weight in ("S0", "S1") else 1, mesh.inner if s1.weight in ("S0", "S1") else 1)
    comm = 0.0
    for s, axis, other in ((s0, outer, w_ways[1]), (s1, inner, w_ways[0])):
        if op.params and s.weight == "B" and s.output == "S0":
            comm += all_reduce_s(mesh.cluster, op.params * mesh.act_bytes / other, axis.group)
    out = f"{s0.output},{s1.output}"
    o0, o1 = _ways(out, mesh)
    act = 0.0 if op.kind == "output" else op.rows * op.width * mesh.act_bytes / (o0 * o1)
    state = op.params * mesh.state_bytes_per_param / (w_ways[0] * w_ways[1])
    return Strategy(
        f"{s0.name}x{s1.name}",
        tuple(f"{a},{b}" for a, b in zip(s0.inputs, s1.inputs)),  # type: ignore[misc]
        out,  # type: ignore[arg-type]
        f"{s0.weight},{s1.weight}",
        compute_s(op, ways, outer),
        comm,
        state + act,
        tuple(f"{a},{b}" for a, b in zip(s0.in_grads, s1.in_grads)),  # type: ignore[misc]
    )


def strategies_2d(op: OpSpec, graph: OpGraph, mesh: ShardingMesh2D) -> list[Strategy]:
    """Every legal pair of the op's 1-D strategies on the two axes; 'repxrep' always exists."""
    outer, inner = mesh.axes()
    pairs = itertools.product(outer.strategies(op, graph), inner.strategies(op, graph))
    return [_pair(op, s0, s1, mesh) for s0, s1 in pairs if _legal(op, graph, s0, s1, mesh)]


def _axis_s(src: str, dst: str, other: str, axis: int, nbytes: float, mesh: ShardingMesh2D) -> float:
    """One axis's conversion, on the bytes left by the other axis's layout ``other``."""
    div = (mesh.inner, mesh.outer)[axis] if other.startswith("S") else 1
    return mesh.axes()[axis].conversion_s(src, dst, nbytes / div)


def conversion_2d_s(src: str, dst: str, nbytes: float, mesh: ShardingMesh2D) -> float:
    """min over the two orders of converting the outer then the inner axis, or the reverse."""
    (a0, a1), (b0, b1) = src.split(","), dst.split(",")
    outer_first = _axis_s(a0, b0, a1, 0, nbytes, mesh) + _axis_s(a1, b1, b0, 1, nbytes, mesh)
    inner_first = _axis_s(a1, b1, a0, 1, nbytes, mesh) + _axis_s(a0, b0, b1, 0, nbytes, mesh)
    return min(outer_first, inner_first)
