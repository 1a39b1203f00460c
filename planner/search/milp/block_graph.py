"""A transformer block of ``models/graph.py`` as a recomputation graph (planner/search/milp/
recompute.py), priced by the cost model, and the named selective-recompute policies as kept sets.

Dataflow (the layer graph lists ops and saved tensors; the edges are the block's structure,
Vaswani et al. 2017 with pre-norm, as ``models/graph.py`` builds it): the block input feeds the
attention norm, whose output feeds the QKV projection; q, k, v feed the attention core, whose
context feeds the output projection; the residual add reads the block input and that projection
and gives the FFN norm's input; the FFN norm feeds gate/up (fc1), the activation, down (fc2);
the last residual add's output is the next block's input, which no backward of this block reads.

Prices: an op's recompute time is its forward kernel time (``cost.layer.recompute_inputs``,
tensor-parallel collectives not included); a fused matmul with several saved outputs (QKV,
gate/up) is split into one op per output, its time shared by elements, the rule the cost model
uses for torchtitan's op policy (``cost.layer._selective_recompute_s``); RoPE's time goes to q
and k by the same rule. Sizes are the saved tensors' bytes (``cost.layer._saved_bytes``).
Times are integer nanoseconds, sizes integer bytes.
Supported: dense pre-norm blocks (Llama, GPT); MoE, MLA and parallel-residual blocks are refused.
"""

from __future__ import annotations

from hardware.cluster import ClusterSpec
from models.graph import Layer, LayerGraph
from planner.config import Parallel, Training
from planner.cost.layer import recompute_inputs, saved_tensor_bytes
from planner.search.milp.recompute import OpNode, RecomputeGraph, Tensor

NS = 1e-9


def _groups(layer: Layer) -> list[tuple[str, list[tuple[str, float]], list[str], list[str]]]:
    """(op, [(layer op, share of its time)], input tensors, produced tensors) in forward order."""
    ops = {o.name for o in layer.ops}
    elems = {x.name: x.elems for x in layer.saved}

    def split(op: str, outs: list[str], inputs: list[str], rope: tuple[str, ...] = ()) -> list:
        total = sum(elems[t] for t in outs)
        rope_total = sum(elems[t] for t in rope)
        out = []
        for t in outs:
            parts = [(op, elems[t] / total)]
            if t in rope and "attn.rope" in ops:
                parts.append(("attn.rope", elems[t] / rope_total))
            out.append((f"{op}:{t.split('.')[-1]}", parts, inputs, [t]))
        return out

    def residual(prefix: str, inputs: list[str], outs: list[str]) -> tuple:
        members = [o for o in (f"{prefix}.dropout_residual", f"{prefix}.dropout", f"{prefix}.residual") if o in ops]
        return (f"{prefix}.residual", [(o, 1.0) for o in members], inputs, outs)

    g = [("attn.norm", [("attn.norm", 1.0)], ["attn.norm_in"], ["attn.norm_stats", "attn.norm_hat", "attn.qkv_in"])]
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


def block_graph(
    layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel
) -> RecomputeGraph:
    """The recomputation graph of one block on one GPU for one micro-batch (module docstring)."""
    spec = graph.spec
    if layer.kind != "block" or layer.moe or spec.mla is not None or spec.parallel_residual:
        raise ValueError(
            f"{layer.name}: the block dataflow covers dense pre-norm blocks; MoE, MLA and parallel residual are not modelled"
        )
    seconds, nbytes = recompute_inputs(layer, graph, cluster, train, par)
    # What backward reads: the cost model's 'none' set (a fused activation drops its output)
    needed = {name for name, _ in saved_tensor_bytes(layer, graph, cluster, train, par)["none"]}
    tensors = [Tensor("attn.norm_in", round(nbytes["attn.norm_in"]), "", True)]
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


def policy_kept(layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> frozenset:
    """The tensors the stack's 'selective' option keeps (``cost.layer.kept_tensors``)."""
    return frozenset(name for name, _ in saved_tensor_bytes(layer, graph, cluster, train, par)["selective"])
