"""A block as a recomputation graph, and the price of a kept-set recompute value
(``keep:attn.q+attn.v``, planner/kept_sets.py) without a solver.

Dataflow (the layer graph lists ops and saved tensors; the edges are the block's structure,
Vaswani et al. 2017 with pre-norm, as ``models/graph.py`` builds it): the block input feeds the
attention norm, whose output feeds the QKV projection; q, k, v feed the attention core, whose
context feeds the output projection; the residual add reads the block input and that projection
and gives the FFN norm's input; the FFN norm feeds gate/up (fc1), the activation, down (fc2);
the last residual add's output is the next block's input, which no backward of this block reads.

Graph prices: an op's recompute time is its forward kernel time (``layer._op_times``,
tensor-parallel collectives not included); a fused matmul with several saved outputs (QKV,
gate/up) is split into one op per output, its time shared by elements, the rule the cost model
uses for torchtitan's op policy (``layer._selective_recompute_s``); RoPE's time goes to q and k
by the same rule. Sizes are the saved tensors' bytes (``layer._saved_bytes``). Times are integer
nanoseconds, sizes integer bytes. Supported: dense pre-norm blocks (Llama, GPT); MoE, MLA and
parallel-residual blocks are refused.

Price of keeping ``K`` (``kept_set_prices``): the closure ``R`` of ``K``
(``recompute_graph.recompute_closure``) re-runs in backward; recompute seconds
``Σ_{o∈R} c_o`` (unrounded) plus, for each tensor-parallel region (attention: QKV and out;
FFN: its matmuls) with a matmul in ``R``, half the block's forward collective seconds
(``LayerCost.comm_fwd_s``: one of the forward's two all-reduces / gathers, Korthikanti et al.
2022 §4.2 — an approximation: which side of a region re-runs is not told apart); kept bytes
``Σ_{t∈K ∪ sources} m_t``; hardware FLOPs the model's plus those of ``R``.
"""

from __future__ import annotations

from dataclasses import replace

from hardware.cluster import ClusterSpec
from models.graph import Layer, LayerGraph
from planner.config import Parallel, PlanError, Training
from planner.cost.layer import LayerCost, _Ctx, graph_costs, recompute_inputs, saved_tensor_bytes
from planner.cost.recompute_graph import OpNode, RecomputeGraph, Tensor, recompute_closure
from planner.kept_sets import BLOCK_INPUT, is_kept_set, kept_names

NS = 1e-9
REGIONS = {"attn": ("attn.qkv", "attn.out"), "ffn": ("ffn.gate_up", "ffn.down", "ffn.fc1", "ffn.fc2")}
Group = tuple[str, list[tuple[str, float]], list[str], list[str]]


def _groups(layer: Layer) -> list[Group]:
    """(op, [(layer op, share of its time)], input tensors, produced tensors) in forward order."""
    ops = {o.name for o in layer.ops}
    elems = {x.name: x.elems for x in layer.saved}

    def split(op: str, outs: list[str], inputs: list[str], rope: tuple[str, ...] = ()) -> list[Group]:
        total = sum(elems[t] for t in outs)
        rope_total = sum(elems[t] for t in rope)
        out: list[Group] = []
        for t in outs:
            parts = [(op, elems[t] / total)]
            if t in rope and "attn.rope" in ops:
                parts.append(("attn.rope", elems[t] / rope_total))
            out.append((f"{op}:{t.split('.')[-1]}", parts, inputs, [t]))
        return out

    def residual(prefix: str, inputs: list[str], outs: list[str]) -> Group:
        members = [o for o in (f"{prefix}.dropout_residual", f"{prefix}.dropout", f"{prefix}.residual") if o in ops]
        return (f"{prefix}.residual", [(o, 1.0) for o in members], inputs, outs)

    g: list[Group] = [
        ("attn.norm", [("attn.norm", 1.0)], ["attn.norm_in"], ["attn.norm_stats", "attn.norm_hat", "attn.qkv_in"])
    ]
    g += split("attn.qkv", ["attn.q", "attn.k", "attn.v"], ["attn.qkv_in"], rope=("attn.q", "attn.k"))
    core = ["attn.softmax_out", "attn.softmax_dropout_mask", "attn.softmax_dropout_out", "attn.context", "attn.lse"]
    g.append(("attn.core", [("attn.core", 1.0)], ["attn.q", "attn.k", "attn.v"], core))
    g.append(("attn.out", [("attn.out", 1.0)], ["attn.context"], ["attn.out_proj_out"]))
    g.append(residual("attn", ["attn.norm_in", "attn.out_proj_out"], ["attn.dropout_mask", "ffn.norm_in"]))
    g.append(("ffn.norm", [("ffn.norm", 1.0)], ["ffn.norm_in"], ["ffn.norm_stats", "ffn.norm_hat", "ffn.in"]))
    if "ffn.gate_up" in ops:
        g += split("ffn.gate_up", ["ffn.gate", "ffn.up"], ["ffn.in"])
        g.append(("ffn.act", [("ffn.act", 1.0)], ["ffn.gate", "ffn.up"], ["ffn.act_out", "ffn.down_in"]))
        g.append(("ffn.down", [("ffn.down", 1.0)], ["ffn.down_in"], ["ffn.down_out"]))
    else:
        g.append(("ffn.fc1", [("ffn.fc1", 1.0)], ["ffn.in"], ["ffn.fc1_out"]))
        g.append(("ffn.act", [("ffn.act", 1.0)], ["ffn.fc1_out"], ["ffn.fc2_in"]))
        g.append(("ffn.fc2", [("ffn.fc2", 1.0)], ["ffn.fc2_in"], ["ffn.down_out"]))
    g.append(residual("ffn", ["ffn.norm_in", "ffn.down_out"], ["ffn.dropout_mask"]))
    return g


def _check_block(layer: Layer, graph: LayerGraph) -> None:
    spec = graph.spec
    if layer.kind != "block" or layer.moe or spec.mla is not None or spec.parallel_residual:
        raise ValueError(
            f"{layer.name}: the block dataflow covers dense pre-norm blocks; MoE, MLA and parallel residual are not modelled"
        )


def block_graph(
    layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel
) -> RecomputeGraph:
    """The recomputation graph of one block on one GPU for one micro-batch (module docstring)."""
    _check_block(layer, graph)
    seconds, nbytes = recompute_inputs(layer, graph, cluster, train, par)
    # What backward reads: the cost model's 'none' set (a fused activation drops its output)
    needed = {name for name, _ in saved_tensor_bytes(layer, graph, cluster, train, par)["none"]}
    tensors = [Tensor(BLOCK_INPUT, round(nbytes[BLOCK_INPUT]), "", True)]
    ops = []
    for name, parts, inputs, outs in _groups(layer):
        produced = [t for t in outs if t in nbytes]
        if not produced:
            continue  # e.g. the last residual add without dropout: nothing of it is saved
        time_s = sum(seconds[o] * share for o, share in parts)
        ops.append(OpNode(name, round(time_s / NS), tuple(inputs)))
        tensors += [Tensor(t, round(nbytes[t]), name, t in needed) for t in produced]
    unknown = sorted(set(nbytes) - {t.name for t in tensors})
    if unknown:
        raise ValueError(f"{layer.name}: saved tensors {unknown} have no producer in the block dataflow")
    return RecomputeGraph(tuple(tensors), tuple(ops), unit_bytes=1.0, unit_s=NS)


def kept_set_prices(
    layer: Layer,
    graph: LayerGraph,
    cluster: ClusterSpec,
    train: Training,
    par: Parallel,
    cost: LayerCost,
    values: tuple[str, ...],
) -> dict[str, tuple[float, float, float]]:
    """(recompute seconds, kept bytes, hardware FLOPs) of one micro-batch of ``layer`` under each
    kept set of ``values`` (module docstring); PlanError for a name the block does not save."""
    try:
        g = block_graph(layer, graph, cluster, train, par)
    except ValueError as exc:
        raise PlanError(f"recompute {values[0]!r}: {exc}", "recompute") from None
    seconds, nbytes = recompute_inputs(layer, graph, cluster, train, par)
    ctx = _Ctx(cluster, train, par, graph.spec)
    ops = {o.name: o for o in layer.ops}
    groups = {name: parts for name, parts, _, outs in _groups(layer) if any(t in nbytes for t in outs)}
    group_s = {n: sum(seconds[o] * share for o, share in parts) for n, parts in groups.items()}
    group_flops = {
        n: sum(ops[o].fwd_flops * ctx.tokens / ctx.div(ops[o].shard) * share for o, share in parts)
        for n, parts in groups.items()
    }
    out = {}
    for value in values:
        names = set(kept_names(value))
        if names - set(nbytes):
            raise PlanError(
                f"recompute {value!r}: {sorted(names - set(nbytes))} are not saved tensors of {layer.name} "
                f"(it saves {', '.join(t for t in nbytes if t != BLOCK_INPUT)})",
                "recompute",
            )
        rerun = recompute_closure(g, frozenset(names | {BLOCK_INPUT}))
        regions = sum(any(o.split(":")[0] in members for o in rerun) for members in REGIONS.values())
        out[value] = (
            sum(group_s[o] for o in rerun) + regions * cost.comm_fwd_s / 2,
            sum(b for t, b in nbytes.items() if t in names or t == BLOCK_INPUT),
            cost.model_flops + sum(group_flops[o] for o in rerun),
        )
    return out


def with_kept_sets(
    costs: list[LayerCost],
    values: tuple[str, ...],
    graph: LayerGraph,
    cluster: ClusterSpec,
    train: Training,
    par: Parallel,
) -> list[LayerCost]:
    """``costs`` with each block's price of every kept set in ``values`` added to its
    ``recompute_s`` / ``act_bytes`` / ``hw_flops`` (identical blocks priced once)."""
    values = tuple(dict.fromkeys(v for v in values if is_kept_set(v)))
    if not values:
        return costs
    out, cache = [], {}
    for layer, cost in zip(graph.layers, costs):
        if layer.kind != "block":
            out.append(cost)
            continue
        key = layer.signature or (layer.name,)
        if key not in cache:
            rec, act, hw = dict(cost.recompute_s), dict(cost.act_bytes), dict(cost.hw_flops)
            for v, (r, a, h) in kept_set_prices(layer, graph, cluster, train, par, cost, values).items():
                rec[v], act[v], hw[v] = r, a, h
            cache[key] = replace(cost, recompute_s=rec, act_bytes=act, hw_flops=hw)
        out.append(cache[key])
    return out


def priced_costs(graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> list[LayerCost]:
    """``layer.graph_costs`` with the kept sets ``par.recompute`` names priced on every block."""
    values = (par.recompute,) if isinstance(par.recompute, str) else par.recompute
    return with_kept_sets(graph_costs(graph, cluster, train, par), tuple(values), graph, cluster, train, par)


def kept_tensor_bytes(
    layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel, value: str
) -> list[tuple[str, float]]:
    """(name, bytes) of every tensor one micro-batch keeps under the kept set ``value``."""
    names = set(kept_names(value)) | {BLOCK_INPUT}
    return [(t, b) for t, b in recompute_inputs(layer, graph, cluster, train, par)[1].items() if t in names]
