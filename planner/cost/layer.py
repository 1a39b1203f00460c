"""Per-layer, per-micro-batch time and memory on one GPU, for each recompute option.

Compute time is a roofline per op (Williams et al. 2009): ``max(FLOPs / (peak · eff), bytes /
(HBM · eff))`` plus a kernel-launch overhead, with separate efficiencies for matmuls and for
attention kernels (GPU preset ``efficiency`` block). Tensor/expert/context-parallel
communication inside a layer is on the critical path, except what runs under a kernel: the
column-parallel linears' backward TP collectives under their GEMMs (``training.tp_overlap``,
Megatron-LM's async communication) and the context-parallel K/V exchange under the attention
kernel (Liu et al. 2023, Ring Attention) — the excess is exposed, and what hides still slows the
kernel beside it (``hardware.comm.exposed_s``, the overlap tax).
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware import comm
from hardware.cluster import ClusterSpec
from models.graph import Layer, LayerGraph, Op, Saved
from models.spec import ModelSpec
from planner.config import Parallel, Training, grad_reduce_bytes
from planner.knobs import RECOMPUTE_OPTIONS

BYTES = {"mask": 1, "fp32": 4}


@dataclass(frozen=True)
class LayerCost:
    """One layer on one GPU for one micro-batch. Times in seconds, memory in bytes."""

    fwd_s: float  # forward compute + exposed tp/ep/cp communication
    bwd_s: float  # backward (no recompute)
    recompute_s: dict[str, float]  # extra forward work in backward, per recompute option
    act_bytes: dict[str, float]  # bytes held for backward per micro-batch, per recompute option
    remat_bytes: float  # bytes re-materialised while this layer's backward runs (its 'none' set)
    params_local: float  # parameters stored on this GPU (before ZeRO sharding)
    params_dp_replicas: float  # of which replicated over the full dp*cp group (dense)
    comm_s: float  # of fwd_s + bwd_s, the exposed communication part
    model_flops: float  # fwd + bwd model FLOPs (full attention matrix), this GPU
    hw_flops: dict[str, float]  # model FLOPs plus recompute FLOPs, per option
    dp_ag_s: float = 0.0  # all-gather of this layer's 16-bit weights over its ZeRO shard group
    dp_rs_s: float = 0.0  # reduce-scatter of its gradients over the shard group
    dp_ar_s: float = 0.0  # all-reduce of its gradients over the whole data-parallel group
    dp_rep_ar_s: float = 0.0  # HSDP: all-reduce of its gradient shard across the replicas
    comm_fwd_s: float = 0.0  # of comm_s, the forward's exposed tp/ep/cp communication


@dataclass(frozen=True)
class _Ctx:
    cluster: ClusterSpec
    train: Training
    par: Parallel
    spec: ModelSpec

    @property
    def tokens(self) -> float:
        """Tokens one GPU processes per micro-batch: b · s / cp."""
        return self.par.micro_batch * self.train.seq_len / self.par.cp

    def div(self, shard: str) -> int:
        if shard == "tp" or (shard == "sp" and self.par.sequence_parallel):
            return self.par.tp
        return 1


def _op_times(op: Op, ctx: _Ctx) -> tuple[float, float]:
    """Roofline forward and backward seconds of one op for one micro-batch on one GPU."""
    gpu, dtype = ctx.cluster.gpu, ctx.train.dtype
    d = ctx.div(op.shard)
    flops = op.exec_fwd_flops * ctx.tokens / d
    mem_s = op.io_elems * ctx.tokens / d * ctx.train.act_bytes / gpu.hbm_effective_Bps
    # The stack's fitted compute scale (planner/stacks/fitted.yaml) multiplies the GPU preset's
    # kernel efficiencies: the same GPU runs another framework's kernels at another rate.
    scale = ctx.train.stack.scale(gpu.generation)
    if op.kind == "matmul":
        rate = gpu.matmul_flops(dtype) * scale
    elif op.kind == "attention":
        rate = gpu.attention_flops("bf16" if dtype == "fp8" else dtype) * scale
    else:
        rate = float("inf")  # elementwise: memory-bound by construction
    fwd = max(flops / rate, mem_s)
    overhead = gpu.efficiency.kernel_overhead_us * 1e-6
    return fwd + overhead, op.bwd_factor * fwd + 2 * overhead


def _saved_bytes(saved: Saved, ctx: _Ctx) -> float:
    """Bytes of one saved tensor for one micro-batch. A column-parallel linear's input under
    sequence parallelism is saved sequence-sharded and re-gathered in backward by Megatron
    (Korthikanti et al. 2022 §4.2.2); a stack whose linears keep the gathered, full-sequence
    tensor (``sp_keeps_gathered_input``: DTensor TP, async TP's fused all-gather-matmul) holds tp
    times more."""
    spec = ctx.spec
    d = ctx.div(saved.shard)
    if saved.gathered and ctx.train.stack.sp_keeps_gathered_input:
        d = 1
    if saved.name in ("attn.k", "attn.v") and spec.mla is None:
        d = min(d, spec.kv_heads)  # kv heads are replicated once tp exceeds them
    per = BYTES.get(saved.byte_class, ctx.train.act_bytes)
    if saved.mm_input and ctx.train.dtype == "fp8" and ctx.train.stack.fp8_saves_inputs:
        per = 1  # Transformer Engine keeps an FP8 GEMM's input in FP8 for the weight gradient
    return saved.elems * ctx.tokens / d * per


def _op_policy_dropped(layer: Layer) -> list[Saved]:
    """Matmul outputs an op-level selective policy recomputes: every second one in forward order
    (torchtitan ``_get_custom_policy``: an ``mm`` whose running count is even is not saved; for a
    Llama block wk, wo and w3 are recomputed, wq, wv, w1 and w2 kept)."""
    mm_ops = {op.name for op in layer.ops if op.kind == "matmul"}
    outputs = [x for x in layer.saved if x.mm_output and x.op in mm_ops]
    return outputs[1::2]


def kept_tensors(layer: Layer, ctx: _Ctx) -> dict[str, list[Saved]]:
    """The tensors one micro-batch of this layer keeps for backward, per recompute option.

    none: every tensor the ops save (Korthikanti et al. 2022, §4.1, eq. 1-2 for GPT);
    full: only the layer input (§4.2: 2sbh, /t with sequence parallelism);
    selective, as the stack defines it (``StackProfile.selective_recompute``):
    ``attention_core`` (Megatron, Korthikanti §4.2): drop the s^2 attention-core tensors (34sbh
    remain with eager attention; with flash attention nothing large goes); ``op_policy``
    (torchtitan's op-level SAC): keep the block input, the attention outputs and every matmul
    output but every second one (``_op_policy_dropped``), recompute everything else;
    ``matmul_outputs`` (autopar's runtime): the same without the thinning.
    With fused elementwise kernels (``training.norm_impl = fused``) a gated activation's output
    is recomputed inside its kernel's backward, not kept (``Saved.unfused_only``).
    """
    fused = ctx.train.norm_impl == "fused"
    none = [x for x in layer.saved if x.in_none and not (fused and x.unfused_only)]
    if layer.kind != "block":
        return {o: none for o in RECOMPUTE_OPTIONS}
    inp = [x for x in layer.saved if x.name == "attn.norm_in"]
    policy = ctx.train.stack.selective_recompute
    if policy == "attention_core":
        sel = [x for x in none if not x.attn_core]
    else:
        dropped = {x.name for x in _op_policy_dropped(layer)} if policy == "op_policy" else set()
        sel = inp + [x for x in layer.saved if x.mm_output and x.name not in dropped]
    return {"none": none, "selective": sel, "full": inp}


def activation_bytes(layer: Layer, ctx: _Ctx) -> dict[str, float]:
    """Bytes one micro-batch of this layer keeps for backward, per recompute option
    (``kept_tensors``); selective never keeps more than none."""
    kept = {o: sum(_saved_bytes(x, ctx) for x in xs) for o, xs in kept_tensors(layer, ctx).items()}
    return {"none": kept["none"], "selective": min(kept["selective"], kept["none"]), "full": kept["full"]}


def saved_tensor_bytes(
    layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel
) -> dict[str, list[tuple[str, float]]]:
    """(name, bytes) of every tensor one micro-batch keeps for backward, per recompute option
    (``kept_tensors``; selective falls back to none's list where it would keep more)."""
    ctx = _Ctx(cluster, train, par, graph.spec)
    out = {o: [(x.name, _saved_bytes(x, ctx)) for x in xs] for o, xs in kept_tensors(layer, ctx).items()}
    if sum(b for _, b in out["selective"]) > sum(b for _, b in out["none"]):
        out["selective"] = out["none"]
    return out


def _selective_recompute_s(layer: Layer, ctx: _Ctx, times: list[tuple[float, float]]) -> float:
    """Forward seconds 'selective' re-runs in backward: the attention core (``attention_core``),
    or the elementwise ops plus the dropped matmul outputs' share of their matmuls (``op_policy``)."""
    fwd = {op.name: f for op, (f, _) in zip(layer.ops, times)}
    kinds = {op.name: op.kind for op in layer.ops}
    if ctx.train.stack.selective_recompute == "attention_core":
        return sum(f for name, f in fwd.items() if kinds[name] == "attention")
    out = sum(f for name, f in fwd.items() if kinds[name] == "elementwise")
    if ctx.train.stack.selective_recompute == "matmul_outputs":
        return out
    produced: dict[str, float] = {}
    for x in layer.saved:
        if x.op in kinds:
            produced[x.op] = produced.get(x.op, 0.0) + x.elems
    for x in _op_policy_dropped(layer):
        out += fwd[x.op] * x.elems / produced[x.op]
    return out


def _tp_comm_s(layer: Layer, ctx: _Ctx, times: list[tuple[float, float]]) -> tuple[float, float]:
    """Megatron TP collectives of one layer (Narayanan et al. 2021 §3.2; Korthikanti et al. 2022
    §4.2.2 for sequence parallelism, SP), forward and backward seconds, per TP region (block: the
    attention and the FFN; head: the vocab projection):

    - without SP: forward all-reduce of the row-parallel output; backward all-reduce of the
      column-parallel input gradient. Embedding: one forward all-reduce; head: one backward.
    - with SP: forward all-gather of the input + reduce-scatter of the output (head: the gather
      only; embedding: the pair); backward all-gather of the output gradient, then the column
      linear's reduce-scatter of the input gradient.

    Forward collectives are exposed. With ``training.tp_overlap = backward`` (Megatron-LM's
    ``LinearWithGradAccumulationAndAsyncCommunication``) the column linear's backward collectives
    run asynchronously under its GEMMs: without SP the all-reduce under the weight-gradient GEMM;
    with SP the all-gather that re-gathers its saved (sequence-sharded) input under the
    input-gradient GEMM and the reduce-scatter under the weight-gradient GEMM. The gradient
    all-gather of SP stays exposed: the row linear's backward needs it first. ``windows`` holds,
    per region, the (dgrad, wgrad) seconds of its column linears; the excess is exposed and the
    hidden part slows the GEMM (``comm.exposed_s``).
    With ``full`` and SP (Transformer Engine's ``--tp-comm-overlap``, torchtitan's async TP: the
    all-gather + GEMM and GEMM + reduce-scatter pairs split into chunks that pipeline, Wang et al.
    2023) every collective hides under the GEMMs beside it (``_tp_comm_full_s``). Without SP,
    ``full`` is ``backward`` (TE overlaps only sequence-parallel collectives).
    With ``none`` (torchtitan's eager DTensor TP, 2021 Megatron-LM) every collective is exposed
    and SP keeps the gathered input instead of re-gathering it."""
    if ctx.par.tp == 1:
        return 0.0, 0.0
    if ctx.train.tp_overlap == "full" and ctx.par.sequence_parallel and layer.kind == "block":
        return _tp_comm_full_s(layer, ctx, times)
    nbytes = ctx.tokens * ctx.train.act_bytes * ctx.spec.hidden_size
    group = comm.group_span(ctx.cluster, ctx.par.tp, 1)
    sp = ctx.par.sequence_parallel
    ag = comm.all_gather_s(ctx.cluster, nbytes, group) if sp else 0.0
    rs = comm.reduce_scatter_s(ctx.cluster, nbytes, group) if sp else 0.0
    ar = 0.0 if sp else comm.all_reduce_s(ctx.cluster, nbytes, group)
    if layer.kind == "embedding":
        return (ag + rs if sp else ar), 0.0
    n = 2 if layer.kind == "block" else 1
    fwd = (ag if layer.kind == "head" else n * (ag + rs)) if sp else (0.0 if layer.kind == "head" else n * ar)
    grad_gather = ag if layer.kind == "block" else 0.0  # head: the loss is vocab-parallel, no gather
    if ctx.train.tp_overlap == "none":
        return fwd, n * (grad_gather + (rs if sp else ar))
    regions = (_column_windows(layer, times) + [(0.0, 0.0)] * n)[:n]
    tax = ctx.cluster.gpu.efficiency.overlap_tax
    if sp:
        bwd = sum(
            grad_gather + comm.exposed_s(ag, dgrad, tax) + comm.exposed_s(rs, wgrad, tax) for dgrad, wgrad in regions
        )
    else:
        bwd = sum(comm.exposed_s(ar, wgrad, tax) for _, wgrad in regions)
    return fwd, bwd


def _tp_comm_full_s(layer: Layer, ctx: _Ctx, times: list[tuple[float, float]]) -> tuple[float, float]:
    """Exposed TP seconds of a block under ``tp_overlap = full`` with SP, forward and backward:
    per TP region (attention, FFN) the all-gather of the input beside the column GEMMs' forward,
    the reduce-scatter of the output beside the row GEMM's forward; backward, the gradient
    all-gather beside the row GEMM's input-gradient half, then the column linear's re-gather and
    reduce-scatter beside its dgrad and wgrad halves as under ``backward`` (no re-gather where the
    stack keeps the gathered input, ``sp_keeps_gathered_input``). Each collective's
    excess over its window is exposed, and its hidden part slows the GEMMs (``comm.exposed_s``)."""
    nbytes = ctx.tokens * ctx.train.act_bytes * ctx.spec.hidden_size
    group = comm.group_span(ctx.cluster, ctx.par.tp, 1)
    ag = comm.all_gather_s(ctx.cluster, nbytes, group)
    rs = comm.reduce_scatter_s(ctx.cluster, nbytes, group)
    tax = ctx.cluster.gpu.efficiency.overlap_tax
    regather = not ctx.train.stack.sp_keeps_gathered_input
    fwd = bwd = 0.0
    for col, row in _region_gemm_s(layer, times):
        fwd += comm.exposed_s(ag, col, tax) + comm.exposed_s(rs, row, tax)
        bwd += comm.exposed_s(ag, row, tax) + comm.exposed_s(rs, col, tax)
        bwd += comm.exposed_s(ag, col, tax) if regather else 0.0
    return fwd, bwd


def _region_gemm_s(layer: Layer, times: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per TP region of a layer (attention, FFN; the head counts as one), the forward seconds of its
    column- and of its row-parallel GEMMs (each backward half costs the same); routed experts left out."""
    regions: dict[str, list[float]] = {"attn": [0.0, 0.0], "ffn": [0.0, 0.0]}
    for op, (f, _) in zip(layer.ops, times):
        if op.tp_role in ("column", "row") and not op.expert:
            w = regions["attn" if op.name.startswith("attn.") else "ffn"]
            w[0 if op.tp_role == "column" else 1] += f
    return [(c, r) for c, r in regions.values()]


def _column_windows(layer: Layer, times: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per TP region of the layer (attention, then FFN/MoE; the head is one), the input-gradient
    and weight-gradient GEMM seconds of its column-parallel linears: each half of a matmul's
    backward (bwd_factor 2) costs its forward roofline time (``times``: ``_op_times`` per op).
    Routed experts are not windows: Megatron-Core's token dispatcher does their TP communication
    (``explicit_expert_comm``)."""
    return [(col, col) for col, _ in _region_gemm_s(layer, times) if col > 0]


def _ep_comm_s(layer: Layer, ctx: _Ctx) -> float:
    """Expert parallel: all-to-all dispatch and combine of the b·s·top_k routed token copies,
    twice forward and twice backward (GShard, Lepikhin et al. 2020 §2.2). One direction."""
    m = ctx.spec.moe
    if not layer.moe or ctx.par.ep == 1:
        return 0.0
    assert m is not None  # an MoE layer comes from a spec with a moe block
    ep = ctx.par.ep
    per_rank = ctx.tokens * m.top_k * ctx.spec.hidden_size * ctx.train.act_bytes / ctx.div("sp")
    group = comm.group_span(ctx.cluster, ep, ctx.par.tp)
    return 2 * comm.all_to_all_s(ctx.cluster, per_rank * (ep - 1) / ep, group)


def _cp_comm_s(layer: Layer, ctx: _Ctx, attn_fwd_s: float) -> tuple[float, float]:
    """Context parallel: all-gather K and V of the cp ranks forward, all-gather + reduce-scatter
    of K, V and their grads backward (the grads in fp32 where the stack's ``cp_grad_fp32``);
    overlapped with the attention kernel (``comm.exposed_s``)."""
    cp = ctx.par.cp
    if cp == 1 or layer.kind != "block":
        return 0.0, 0.0
    kv = sum(x.elems for x in layer.saved if x.name in ("attn.k", "attn.v"))
    full = (
        kv
        * ctx.tokens
        * cp
        * ctx.train.act_bytes
        / min(ctx.par.tp, ctx.spec.kv_heads if ctx.spec.mla is None else ctx.par.tp)
    )
    group = comm.group_span(ctx.cluster, cp, ctx.par.tp)
    ag = comm.all_gather_s(ctx.cluster, full, group)
    widen = 4.0 / ctx.train.act_bytes if ctx.train.stack.cp_grad_fp32 else 1.0  # fp32 over 16-bit
    rs = comm.reduce_scatter_s(ctx.cluster, full * widen, group)
    tax = ctx.cluster.gpu.efficiency.overlap_tax
    return comm.exposed_s(ag, attn_fwd_s, tax), comm.exposed_s(ag + rs, 2.5 * attn_fwd_s, tax)


def _local_params(layer: Layer, ctx: _Ctx) -> tuple[float, float]:
    """Parameters on one GPU: tp splits dense matrices, ep·tp splits routed experts."""
    dense = layer.params_dense / ctx.par.tp + layer.params_replicated
    expert = layer.params_expert / (ctx.par.ep * ctx.par.tp)
    return dense + expert, dense


def layer_cost(layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> LayerCost:
    """Time, memory and FLOPs of one layer for one micro-batch on one GPU (see module docstring)."""
    ctx = _Ctx(cluster, train, par, graph.spec)
    fwd = bwd = attn_fwd = 0.0
    model_flops = hw_extra_sel = 0.0
    times = [_op_times(op, ctx) for op in layer.ops]
    for op, (f, b) in zip(layer.ops, times):
        fwd, bwd = fwd + f, bwd + b
        model_flops += 3 * op.fwd_flops * ctx.tokens / ctx.div(op.shard)
        if op.kind == "attention":
            attn_fwd += f
            if train.stack.selective_recompute == "attention_core":
                hw_extra_sel += op.fwd_flops * ctx.tokens / ctx.div(op.shard)
    tp_f, tp_b = _tp_comm_s(layer, ctx, times)
    ep_s = _ep_comm_s(layer, ctx)
    cp_f, cp_b = _cp_comm_s(layer, ctx, attn_fwd)
    comm_f = tp_f + ep_s + cp_f
    comm_b = tp_b + ep_s + cp_b
    fwd_model = model_flops / 3
    sel = _selective_recompute_s(layer, ctx, times) if layer.kind == "block" else 0.0
    recompute = (
        {"none": 0.0, "selective": sel, "full": fwd + comm_f}
        if layer.kind == "block"
        else {o: 0.0 for o in RECOMPUTE_OPTIONS}
    )
    hw = {
        "none": model_flops,
        "selective": model_flops + hw_extra_sel,
        "full": model_flops + (fwd_model if layer.kind == "block" else 0.0),
    }
    act = activation_bytes(layer, ctx)
    local, dense = _local_params(layer, ctx)
    ag, rs, ar, rep = dp_comm_s(local - dense, dense, ctx)
    return LayerCost(
        fwd + comm_f,
        bwd + comm_b,
        recompute,
        act,
        act["none"],
        local,
        dense,
        comm_f + comm_b,
        model_flops,
        hw,
        ag,
        rs,
        ar,
        rep,
        comm_f,
    )


@dataclass(frozen=True)
class DpGroups:
    """The data-parallel process groups of one plan (mesh order tp → cp → dp, HSDP replicas
    outermost in dp): dense weights replicate over dp·cp ranks ``tp`` apart, experts over
    dp·cp/ep ranks ``tp·ep`` apart; ZeRO shards over one replica's share of them, and the
    replicas of a shard are ``tp·dp·cp/dp_replicate`` ranks apart."""

    dense: comm.Group
    expert: comm.Group
    dense_shard: comm.Group
    expert_shard: comm.Group
    replicas: comm.Group


def dp_groups(cluster: ClusterSpec, par: Parallel) -> DpGroups:
    span = comm.group_span
    return DpGroups(
        span(cluster, par.dense_dp, par.tp),
        span(cluster, par.expert_dp, par.tp * par.ep),
        span(cluster, par.dense_shard, par.tp),
        span(cluster, par.expert_shard, par.tp * par.ep),
        span(cluster, par.dp_replicate, par.tp * par.dense_shard),
    )


def dp_comm_s(expert: float, dense: float, ctx: _Ctx) -> tuple[float, float, float, float]:
    """Data-parallel collectives of one layer's parameters: (all-gather of the 16-bit weights and
    reduce-scatter of the gradients over the ZeRO shard group, all-reduce of the gradients over the
    whole data-parallel group, HSDP all-reduce of the gradient shard across the replicas). FSDP
    gathers and reduces per layer (FSDP2 wraps each block); DDP and the distributed optimizer use
    buckets of about a layer, so a chunk's sync is the sum over its layers — linear in the number
    of layers it holds. HSDP (Zhao et al. 2023, "PyTorch FSDP", §3.2.2 hybrid sharding): the
    reduce-scatter stays in the shard group and each rank's 1/S shard is all-reduced with its
    replicas, ``AR(bytes / S)`` over ``dp_replicate`` ranks."""
    g = dp_groups(ctx.cluster, ctx.par)
    wb = 4 if ctx.train.dtype == "fp32" else 2
    gb = grad_reduce_bytes(ctx.train, ctx.par.zero)

    def both(fn, per_param: float, g_dense: comm.Group, g_exp: comm.Group, algo: comm.Algo = "auto") -> float:
        t = fn(ctx.cluster, dense * per_param, g_dense, algo) if dense else 0.0
        return t + (fn(ctx.cluster, expert * per_param, g_exp, algo) if expert else 0.0)

    # ZeRO-3 gathers and scatters as the stack issues them: over the node's NICs, or each rank's own.
    shard_algo: comm.Algo = "nic" if ctx.par.zero == 3 and ctx.train.stack.zero3.span == "gpu" else "auto"

    rep = 0.0
    if ctx.par.dp_replicate > 1:
        rep = (comm.all_reduce_s(ctx.cluster, dense * gb / ctx.par.dense_shard, g.replicas) if dense else 0.0) + (
            comm.all_reduce_s(ctx.cluster, expert * gb / ctx.par.expert_shard, g.replicas) if expert else 0.0
        )
    return (
        both(comm.all_gather_s, wb, g.dense_shard, g.expert_shard, shard_algo),
        both(comm.reduce_scatter_s, gb, g.dense_shard, g.expert_shard, shard_algo),
        both(comm.all_reduce_s, gb, g.dense, g.expert),
        rep,
    )


def graph_costs(graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> list[LayerCost]:
    """LayerCost for every layer (embedding, blocks, head), computed once per distinct layer type."""
    cache: dict[tuple, LayerCost] = {}
    out = []
    for layer in graph.layers:
        key = layer.signature or (layer.name,)
        if key not in cache:
            cache[key] = layer_cost(layer, graph, cluster, train, par)
        out.append(cache[key])
    return out


def recompute_inputs(
    layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel
) -> tuple[dict[str, float], dict[str, float]]:
    """What the recomputation formulation (planner/search/milp/recompute.py) prices a layer with:
    each op's forward seconds for one micro-batch (``_op_times``; kernels only, no tp collective)
    and each saved tensor's bytes (``_saved_bytes``), ``in_none`` or not."""
    ctx = _Ctx(cluster, train, par, graph.spec)
    return ({op.name: _op_times(op, ctx)[0] for op in layer.ops}, {x.name: _saved_bytes(x, ctx) for x in layer.saved})
