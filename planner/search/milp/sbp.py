"""Sharding strategies of one op in OneFlow's SBP terms, and the price of moving a tensor between
layouts, on a 1-D tensor-parallel mesh of ``tp`` ranks.

Layouts (Yuan et al. 2021, "OneFlow: Redesign the Distributed Deep Learning Framework from
Scratch", §3.1): ``S0``/``S1`` — split on the row (token/sample) or feature dim; ``B`` — broadcast
(every rank holds the whole tensor); ``P`` — partial-sum (the tensor is the sum of the ranks'
copies). Alpa's intra-op pass (Zheng et al. 2022, "Alpa", §4.1) enumerates such strategies per op
and prices every edge's resharding; this module gives those prices in seconds.

Strategies (weight ``W[k, n]``, ``Y = X·W``; Megatron's names from Shoeybi et al. 2019 §3):

=========  =============  ======  ======  ==========================================
op         strategy       X       W       Y          backward extras
=========  =============  ======  ======  ==========================================
matmul     rep            B       B       B
matmul     col            B       S1      S1         dX is P
matmul     row            S1      S0      P
matmul     tok            S0      B       S0         dW is P: all-reduce of the weight grads
attention  rep / heads    B / S1          B / S1     heads split: dX is S1
attention  tok            S0              S0         whole sequences per rank (batch % tp == 0)
norm       rep / tok      B / S0          B / S0     tok: the norm weight's grads all-reduced
elementw.  rep/tok/feat   B/S0/S1         B/S0/S1
embedding  rep/vocab/hid  B       B/S0/S1 B/P/S1     (ids carry no gradient)
=========  =============  ======  ======  ==========================================

The norms' and element-wise ops' ``S0`` (sequence parallelism, Korthikanti et al. 2022 §4.2.2)
exist with ``token_split`` "sequence" or "all"; the matmuls', attention's and embeddings' ``tok``
only with "all". Gradient layouts: an input read as ``S`` gets an
``S`` gradient; one read as ``B`` by a strategy that splits the work gets a ``P`` gradient (each
rank holds its part of the sum), by a replicated one a ``B`` gradient; an output in ``P`` needs
its gradient in ``B``.

Compute: the roofline of ``planner/cost/layer._op_times`` — ``max(FLOPs / rate, bytes / HBM)``
forward, ``bwd_factor`` times that backward, plus the kernel overhead — with FLOPs and bytes
divided by ``tp`` when the strategy splits the work. Memory per rank: the weight's training state
(``state_bytes_per_param``: 16 for mixed-precision Adam, Rajbhandari et al. 2020 §3.1) divided by
``tp`` when the weight is split, plus the output activation (split or whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from hardware.cluster import ClusterSpec
from hardware.comm import Group, all_gather_s, all_reduce_s, all_to_all_s, group_span, reduce_scatter_s
from planner.search.milp.sharding_graph import OpGraph, OpSpec

Layout = Literal["B", "P", "S0", "S1"]
TokenSplit = Literal["none", "sequence", "all"]
INF = math.inf


@dataclass(frozen=True)
class ShardingMesh:
    """A 1-D tensor-parallel mesh of ``tp`` ranks of ``cluster`` (spanning nodes as ``group_span`` says)."""

    tp: int
    cluster: ClusterSpec
    # Row (S0) splits allowed: "none" (Megatron tensor parallelism), "sequence" (norms, element-wise
    # ops and the layer boundary: Megatron sequence parallelism), "all" (matmuls, attention and
    # embeddings too: data parallelism inside the group, Alpa's full space).
    token_split: TokenSplit = "none"
    act_bytes: int = 2  # bf16 activations and gradients
    state_bytes_per_param: float = 16.0  # fp16 param + grad, fp32 master + Adam moments (ZeRO §3.1)
    stride: int = 1  # ranks between members: an outer axis of a 2-D mesh (sbp_2d.py) has stride > 1

    def __post_init__(self) -> None:
        if self.token_split not in ("none", "sequence", "all"):
            raise ValueError(f"token_split must be none, sequence or all (got {self.token_split!r})")
        if self.tp < 1:
            raise ValueError(f"tensor-parallel degree must be >= 1 (got {self.tp})")

    @property
    def group(self) -> Group:
        return group_span(self.cluster, self.tp, self.stride)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.tp,)

    def key(self) -> tuple:
        """What a cached plan depends on (the cluster spec is not hashable: its JSON is)."""
        fields = (self.tp, self.token_split, self.act_bytes, self.state_bytes_per_param, self.stride)
        return ("1d", *fields, self.cluster.model_dump_json())

    def strategies(self, op: OpSpec, graph: OpGraph) -> list[Strategy]:
        return op_strategies(op, graph, self)

    def conversion_s(self, src: str, dst: str, nbytes: float) -> float:
        return conversion_s(src, dst, nbytes, self)  # type: ignore[arg-type]

    def collective(self, src: str, dst: str) -> str:
        return collective(src, dst)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Strategy:
    """One way to run an op: the layout of each input, the output and the weight, and its costs."""

    name: str
    inputs: tuple[Layout, ...]
    output: Layout
    weight: str  # "B", "S0", "S1" or "-" (no weight)
    compute_s: float  # forward + backward on one rank
    comm_s: float  # collectives inside the op: the weight-grad all-reduce of a row-split op
    memory_bytes: float  # weight state + output activation on one rank
    in_grads: tuple[Layout, ...]  # layout of the gradient it hands to each input

    @property
    def out_grad(self) -> Layout:
        """The layout it needs its output gradient in: a P output's gradient is B (per mesh axis)."""
        return ",".join("B" if axis == "P" else axis for axis in self.output.split(","))  # type: ignore[return-value]


def collective(src: Layout, dst: Layout) -> str:
    """The collective that turns layout ``src`` into ``dst`` ('' when none, 'slice' when local)."""
    if src == dst:
        return ""
    if dst == "P":
        return "invalid"  # no consumer reads a partial sum: P must be reduced first
    if src == "B":
        return "slice"
    if src == "P":
        return "all-reduce" if dst == "B" else "reduce-scatter"
    return "all-gather" if dst == "B" else "all-to-all"


def conversion_s(src: Layout, dst: Layout, nbytes: float, mesh: ShardingMesh) -> float:
    """Seconds to turn a tensor of ``nbytes`` (whole size) from ``src`` to ``dst``: P→B all-reduce,
    P→S reduce-scatter, S→B all-gather, S(i)→S(j) all-to-all (each rank sends (tp−1)/tp of its
    nbytes/tp), B→S a local slice (free); hardware/comm.py prices the collectives."""
    kind, g, c = collective(src, dst), mesh.group, mesh.cluster
    if kind == "invalid":
        return INF
    if kind == "all-reduce":
        return all_reduce_s(c, nbytes, g)
    if kind == "reduce-scatter":
        return reduce_scatter_s(c, nbytes, g)
    if kind == "all-gather":
        return all_gather_s(c, nbytes, g)
    if kind == "all-to-all":
        return all_to_all_s(c, nbytes / mesh.tp * (mesh.tp - 1) / mesh.tp, g)
    return 0.0


def compute_s(op: OpSpec, ways: int, mesh: ShardingMesh) -> float:
    """Roofline forward + backward seconds (module docstring), work divided ``ways`` ways."""
    gpu, d = mesh.cluster.gpu, ways
    if op.kind in ("input", "output"):
        return 0.0
    rate = {"matmul": gpu.matmul_flops("bf16"), "attention": gpu.attention_flops("bf16")}.get(op.kind, INF)
    fwd = max(op.fwd_flops / d / rate, op.io_elems * mesh.act_bytes / d / gpu.hbm_effective_Bps)
    overhead = gpu.efficiency.kernel_overhead_us * 1e-6
    return fwd * (1.0 + op.bwd_factor) + 3.0 * overhead


def _make(op: OpSpec, name: str, ins: tuple[Layout, ...], out: Layout, weight: str, mesh: ShardingMesh) -> Strategy:
    """Price a strategy: compute, the weight-grad all-reduce of a row-split op, memory, input grads."""
    split = name != "rep"
    grad_ar = 0.0
    if op.params and weight == "B" and out == "S0":
        grad_ar = all_reduce_s(mesh.cluster, op.params * mesh.act_bytes, mesh.group)
    w_split = weight in ("S0", "S1")
    state = op.params * mesh.state_bytes_per_param / (mesh.tp if w_split else 1)
    # The output sink holds nothing: its tensor is the last op's output, counted there.
    act = 0.0 if op.kind == "output" else op.rows * op.width * mesh.act_bytes / (mesh.tp if out in ("S0", "S1") else 1)
    partial: Layout = "P" if split else "B"
    grads = tuple(partial if x == "B" else x for x in ins)
    return Strategy(name, ins, out, weight, compute_s(op, mesh.tp if split else 1, mesh), grad_ar, state + act, grads)


def _divides(p: int, *sizes: int) -> bool:
    return all(s % p == 0 for s in sizes)


def op_strategies(op: OpSpec, graph: OpGraph, mesh: ShardingMesh) -> list[Strategy]:
    """Every legal strategy of ``op`` on ``mesh`` (module docstring's table); 'rep' always exists."""
    p, n_in = mesh.tp, len(op.inputs)
    in_widths = [graph.op(i).width for i in op.inputs]
    rows_ok = mesh.token_split != "none" and _divides(p, op.row_groups or op.rows) and p > 1
    tok_ok = rows_ok and (mesh.token_split == "all" or op.kind in ("input", "output", "norm", "elementwise"))
    feat_ok = p > 1 and _divides(p, op.units or op.width, *in_widths)
    same = {"rep": "B", "tok": "S0", "feat": "S1"}
    if op.kind in ("input", "output"):
        names = ["rep"] + (["tok"] if tok_ok else [])
        return [_make(op, n, (same[n],) * n_in, same[n], "-", mesh) for n in names]  # type: ignore[arg-type]
    if op.kind == "matmul":
        out = [_make(op, "rep", ("B",), "B", "B", mesh)]
        out += [_make(op, "col", ("B",), "S1", "S1", mesh)] if _divides(p, op.width) and p > 1 else []
        out += [_make(op, "row", ("S1",), "P", "S0", mesh)] if _divides(p, op.in_width, *in_widths) and p > 1 else []
        return out + ([_make(op, "tok", ("S0",), "S0", "B", mesh)] if tok_ok else [])
    if op.kind == "embedding":
        out = [_make(op, "rep", ("B",), "B", "B", mesh)]
        out += [_make(op, "vocab", ("B",), "P", "S0", mesh)] if _divides(p, op.in_width) and p > 1 else []
        out += [_make(op, "hidden", ("B",), "S1", "S1", mesh)] if feat_ok else []
        return out + ([_make(op, "tok", ("S0",), "S0", "B", mesh)] if tok_ok else [])
    names = ["rep"] + (["tok"] if tok_ok else []) + (["feat"] if feat_ok and op.kind != "norm" else [])
    weight = "B" if op.params else "-"
    label = {"attention": {"feat": "heads"}}.get(op.kind, {})
    return [
        _make(op, label.get(n, n), (same[n],) * n_in, same[n], weight, mesh)  # type: ignore[arg-type]
        for n in names
    ]
