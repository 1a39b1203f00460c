"""Expand a ModelSpec into a layer graph: per layer, its ops with FLOPs, parameters and the
tensors it saves for backward.

All per-op figures are **per token** of one sequence of length ``seq_len`` (attention terms grow
with ``seq_len``, so the graph is built for one sequence length). Multiply by the tokens of a
micro-batch (``b * s``) and divide by the sharding degrees the planner picks.

FLOP conventions (cite: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
GPU Clusters", §5.1 eq. 3; Kaplan et al. 2020 / PaLM appendix B for 6N + attention):
- a matmul of [m, k] x [k, n] costs 2·m·k·n forward and 2x that backward (grads of input and weight);
- "model" attention FLOPs count the full s x s score matrix (QK^T and PV: 2·2·s·d per head per
  token), as eq. 3 and the 6N + 12·l·h·s form do; ``exec_fwd_flops`` halves it for causal
  flash kernels, which skip masked blocks (FlashAttention-2, Dao 2023, §3.1).

Saved-activation conventions follow Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", §4 (Table 2): each tensor is listed once (unique storage) with its
element count per token, its bytes per element (activation dtype, 1 for dropout masks, 4 for
fp32 norm statistics / softmax log-sum-exp) and which parallelism shards it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Literal

from models.spec import ModelSpec

OpKind = Literal["matmul", "attention", "elementwise", "embedding"]
ByteClass = Literal["act", "mask", "fp32"]
Shard = Literal["none", "tp", "sp"]  # tp: split by tensor parallel; sp: split only with sequence parallel
AttentionImpl = Literal["flash", "eager"]
NormImpl = Literal["fused", "unfused"]
TpRole = Literal["", "column", "row"]


@dataclass(frozen=True)
class Saved:
    """A tensor kept for backward: ``elems`` per token, byte class, sharding, recompute tags."""

    name: str
    elems: float
    byte_class: ByteClass = "act"
    shard: Shard = "tp"
    attn_core: bool = False  # dropped by Korthikanti's selective recompute (the s^2 tensors)
    mm_output: bool = False  # kept by op-level selective recompute (outputs of matmuls / attention)
    in_none: bool = True  # saved without recompute (False: only cached by op-level selective)
    op: str = ""  # the op whose output it is (matmul and attention outputs; op-level selective recompute)
    gathered: bool = False  # a column-parallel linear's input: all-gathered by sequence parallelism
    mm_input: bool = False  # kept only as a GEMM's input for its weight gradient (FP8 under Transformer Engine)
    unfused_only: bool = False  # kept by eager elementwise code; a fused activation kernel recomputes it


@dataclass(frozen=True)
class Op:
    """One operator of a layer, per token. ``shard`` says how tensor parallelism splits its work."""

    name: str
    kind: OpKind
    fwd_flops: float  # model FLOPs (full attention matrix)
    exec_fwd_flops: float  # FLOPs the kernel executes (causal flash skips half the scores)
    bwd_factor: float  # backward FLOPs / forward FLOPs (2 for matmuls; 2.5 for flash attention)
    io_elems: float  # elements read + written in forward (roofline memory traffic)
    shard: Shard = "tp"
    expert: bool = False  # routed-expert work: split by expert parallelism, not tensor parallelism
    shardable: tuple[str, ...] = ()
    tp_role: TpRole = ""  # Megatron linear kind: column-parallel (opens a TP region) or row-parallel


@dataclass(frozen=True)
class Layer:
    """A block (or the embedding / head) with its ops, parameter counts and saved tensors."""

    name: str
    kind: Literal["embedding", "block", "head"]
    ops: tuple[Op, ...]
    saved: tuple[Saved, ...]
    params_dense: float  # parameters split by tp (matrices) — replicated across experts
    params_replicated: float  # parameters tp does not split (norm weights, router, biases of rowwise)
    params_expert: float = 0.0  # routed-expert parameters, split by ep (and by tp inside an expert)
    moe: bool = False
    signature: tuple = field(default=(), compare=False)  # identical blocks share a signature

    @property
    def params(self) -> float:
        return self.params_dense + self.params_replicated + self.params_expert


@dataclass(frozen=True)
class LayerGraph:
    spec: ModelSpec
    seq_len: int
    attention_impl: AttentionImpl
    layers: tuple[Layer, ...]  # embedding, blocks..., head

    @property
    def blocks(self) -> tuple[Layer, ...]:
        return tuple(x for x in self.layers if x.kind == "block")

    @property
    def num_params(self) -> float:
        return sum(x.params for x in self.layers)

    def model_flops_per_token(self) -> float:
        """Forward + backward model FLOPs per token (no recompute): 3x the forward FLOPs."""
        return sum(3.0 * op.fwd_flops for x in self.layers for op in x.ops)


def _mm(name: str, k: float, n: float, shard: Shard = "tp", expert: bool = False, dims=(), role: TpRole = "") -> Op:
    """Per-token matmul [1,k]x[k,n]: 2kn FLOPs; traffic = input + output (weights counted per op).
    ``role``: column-parallel linears open a TP region (their backward reduces the input
    gradient), row-parallel ones close it (Shoeybi et al. 2019 §3)."""
    return Op(name, "matmul", 2 * k * n, 2 * k * n, 2.0, k + n, shard, expert, dims, role)


def _ew(
    name: str, io: float, shard: Shard = "tp", flops: float = 0.0, expert: bool = False, bwd_io: float | None = None
) -> Op:
    """Elementwise / normalisation op: memory-bound, a few FLOPs per element (not counted in MFU).
    ``bwd_io``: elements its backward kernel reads + writes (default 2x forward); the backward
    time scales with traffic, so ``bwd_factor = bwd_io / io``."""
    return Op(name, "elementwise", 0.0, flops, 2.0 if bwd_io is None else bwd_io / io, io, shard, expert)


def _attention_core(spec: ModelSpec, s: int, impl: AttentionImpl, qk_dim: int, v_dim: int) -> Op:
    """Scores QK^T (2·s·qk_dim per head) and context PV (2·s·v_dim per head), per token."""
    a = spec.num_heads
    model = 2.0 * s * a * (qk_dim + v_dim)
    causal_skip = 0.5 if (impl == "flash" and spec.attention_mask == "causal") else 1.0
    if spec.sliding_window is not None and spec.sliding_window < s:
        causal_skip = min(causal_skip, spec.sliding_window / s)
    # Flash backward recomputes the scores: 5 matmuls vs 2 forward (Dao 2023, §3.1) -> 2.5x.
    bwd = 2.5 if impl == "flash" else 2.0
    # Eager attention streams the a·s scores per token through HBM: the scores GEMM writes them,
    # the fused scale-mask-softmax reads and writes them, dropout reads them and writes output
    # and a 1-byte mask, PV reads them: ~6.5 passes with dropout, ~4 without (Megatron kernels).
    passes = 6.5 if spec.dropout > 0 else 4.0
    io = a * (qk_dim * 2 + v_dim * 2) + (0 if impl == "flash" else passes * a * s)
    return Op("attn.core", "attention", model, model * causal_skip, bwd, io, "tp", False, ("heads",))


def _norm(
    prefix: str, spec: ModelSpec, width: float, shard: Shard = "sp", impl: NormImpl = "fused"
) -> tuple[Op, list[Saved]]:
    """Pre-norm: saves its input and fp32 statistics (LayerNorm: mean + rstd; RMSNorm: rstd).

    ``unfused``: PyTorch's composite RMSNorm (CPU in torch 2.13) upcasts and keeps the fp32
    input and the fp32 normalised tensor x̂ as well (measured, docs/runtime.md)."""
    stats = 2.0 if spec.norm == "layernorm" else 1.0
    # Backward reads x and dy and writes dx (the weight-grad reduction is fused): 3 passes.
    op = _ew(f"{prefix}.norm", 2 * width, shard, flops=5 * width, bwd_io=3 * width)
    if impl == "unfused" and spec.norm == "rmsnorm":
        # Eager composite RMSNorm (torchtitan models/norms.py), one kernel per step, in 2-byte units:
        # x.float() 1+2, pow 2+2, mean 2, x·rstd 2+2, type_as 2+1, ·weight 1+1 = 18 passes (27 back).
        op = _ew(f"{prefix}.norm", 18 * width, shard, flops=5 * width, bwd_io=27 * width)
        return op, [
            Saved(f"{prefix}.norm_in", width, "fp32", shard),
            Saved(f"{prefix}.norm_stats", stats, "fp32", shard),
            Saved(f"{prefix}.norm_hat", width, "fp32", shard),
        ]
    return op, [Saved(f"{prefix}.norm_in", width, "act", shard), Saved(f"{prefix}.norm_stats", stats, "fp32", shard)]


@dataclass(frozen=True)
class _Projections:
    """The query/key/value projections of an attention sub-block."""

    ops: list[Op]
    saved: list[Saved]
    dense: float  # tp-split parameters, the output projection included
    replicated: float  # parameters tp does not split
    qkv_elems: tuple[float, float, float]  # q, k, v elements per token
    qk_dim: int
    v_dim: int


def _qkv_projection(spec: ModelSpec) -> _Projections:
    """Multi-head / grouped-query attention: one fused QKV matmul (column-parallel by heads)."""
    h, a, d, kv = spec.hidden_size, spec.num_heads, spec.dim_per_head, spec.kv_heads
    ops = [_mm("attn.qkv", h, (a + 2 * kv) * d, dims=("heads",), role="column")]
    dense = h * (a + 2 * kv) * d + a * d * h + (spec.bias and (a + 2 * kv) * d)
    return _Projections(ops, [], dense, h if spec.bias else 0, (a * d, kv * d, kv * d), d, d)


def _mla_projections(spec: ModelSpec) -> _Projections:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank query and key/value down-projections,
    replicated across tp (Megatron-Core MLA), and up-projections split by heads."""
    h, a, m = spec.hidden_size, spec.num_heads, spec.mla
    assert m is not None
    qk_dim, v_dim = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
    ops: list[Op] = []
    saved: list[Saved] = []
    q_in, repl = h, 0.0
    if m.q_lora_rank:
        ops += [
            _mm("attn.q_down", h, m.q_lora_rank, "none"),
            _ew("attn.q_norm", 2 * m.q_lora_rank, "none", bwd_io=3 * m.q_lora_rank),
        ]
        saved += [
            Saved("attn.q_down_out", m.q_lora_rank, "act", "none", mm_output=True, op="attn.q_down"),
            Saved("attn.q_norm_out", m.q_lora_rank, "act", "none"),
        ]
        repl += h * m.q_lora_rank + m.q_lora_rank
        q_in = m.q_lora_rank
    ops += [
        _mm("attn.q_up", q_in, a * qk_dim, dims=("heads",), role="column"),
        _mm("attn.kv_down", h, m.kv_lora_rank + m.qk_rope_head_dim, "none"),
        _ew("attn.kv_norm", 2 * m.kv_lora_rank, "none", bwd_io=3 * m.kv_lora_rank),
        _mm("attn.kv_up", m.kv_lora_rank, a * (m.qk_nope_head_dim + v_dim), dims=("heads",), role="column"),
    ]
    saved += [
        Saved(
            "attn.kv_down_out", m.kv_lora_rank + m.qk_rope_head_dim, "act", "none", mm_output=True, op="attn.kv_down"
        ),
        Saved("attn.kv_norm_out", m.kv_lora_rank, "act", "none"),
    ]
    dense = q_in * a * qk_dim + m.kv_lora_rank * a * (m.qk_nope_head_dim + v_dim) + a * v_dim * h
    repl += h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
    return _Projections(ops, saved, dense, repl, (a * qk_dim, a * qk_dim, a * v_dim), qk_dim, v_dim)


def _attention(
    spec: ModelSpec, s: int, impl: AttentionImpl, norm_impl: NormImpl = "fused"
) -> tuple[list[Op], list[Saved], float, float]:
    """Self-attention sub-block: ops, saved tensors, tp-split params, replicated params."""
    h, a = spec.hidden_size, spec.num_heads
    ops: list[Op] = []
    saved: list[Saved] = []
    norm_op, norm_saved = _norm("attn", spec, h, impl=norm_impl)
    ops.append(norm_op)
    saved += norm_saved
    saved.append(Saved("attn.qkv_in", h, "act", "sp", gathered=True, mm_input=True))
    repl: float = h * (2 if spec.norm == "layernorm" else 1)
    proj = _mla_projections(spec) if spec.mla is not None else _qkv_projection(spec)
    ops += proj.ops
    saved += proj.saved
    dense, repl = proj.dense, repl + proj.replicated
    q_e, k_e, v_e = proj.qkv_elems
    qk_dim, v_dim = proj.qk_dim, proj.v_dim
    if spec.position == "rope":
        ops.append(
            _ew("attn.rope", 2 * (q_e + k_e), flops=3 * (q_e + k_e), bwd_io=2 * (q_e + k_e))
        )  # rotate dq, dk back
    # q, k, v are saved by the attention kernel (after RoPE); they are (views of) matmul outputs.
    q_op, kv_op = ("attn.q_up", "attn.kv_up") if spec.mla is not None else ("attn.qkv", "attn.qkv")
    saved += [
        Saved("attn.q", q_e, mm_output=True, op=q_op),
        Saved("attn.k", k_e, mm_output=True, op=kv_op),
        Saved("attn.v", v_e, mm_output=True, op=kv_op),
    ]
    ops.append(_attention_core(spec, s, impl, qk_dim, v_dim))
    saved += _attention_core_saved(spec, s, impl, a * v_dim)
    ops.append(_mm("attn.out", a * v_dim, h, dims=("heads",), role="row"))
    saved.append(Saved("attn.out_proj_out", h, "act", "sp", mm_output=True, in_none=False, op="attn.out"))
    ops += _dropout_residual("attn", spec, h, norm_impl)
    saved += _dropout_saved("attn", spec, h)
    return ops, saved, dense, repl


def _attention_core_saved(spec: ModelSpec, s: int, impl: AttentionImpl, ctx: float) -> list[Saved]:
    """Flash: output + fp32 log-sum-exp. Eager (Korthikanti §4.1): softmax out 2as^2b, dropout mask
    as^2b and dropout out 2as^2b (the s^2 'attn_core' tensors), and the context (out-proj input)."""
    a = spec.num_heads
    if impl == "flash":
        return [
            Saved("attn.context", ctx, mm_output=True, op="attn.core"),
            Saved("attn.lse", a, "fp32", mm_output=True, op="attn.core"),
        ]
    out = [Saved("attn.softmax_out", a * s, attn_core=True)]
    if spec.dropout > 0:
        out += [
            Saved("attn.softmax_dropout_mask", a * s, "mask", attn_core=True),
            Saved("attn.softmax_dropout_out", a * s, attn_core=True),
        ]
    return out + [Saved("attn.context", ctx)]


def _dropout_residual(prefix: str, spec: ModelSpec, h: float, impl: NormImpl = "fused") -> list[Op]:
    """Dropout of the sub-block's output, then the residual add.

    ``fused`` (Megatron-LM's default ``--bias-dropout-fusion``, one kernel for bias + dropout +
    add): reads the branch and the residual, writes the sum and a 1-byte mask, 3.5h element-passes
    (2-byte units). Unfused: dropout (read, write, mask: 2.5h) then the add (3h). Backward: dropout
    reads dy and the mask and writes dx (2.5h); the fork the add closes sums two gradients (3h)."""
    if spec.dropout > 0 and impl == "fused":
        return [_ew(f"{prefix}.dropout_residual", 3.5 * h, "sp", flops=2 * h, bwd_io=5.5 * h)]
    ops = [_ew(f"{prefix}.residual", 3 * h, "sp", flops=h, bwd_io=3 * h)]
    if spec.dropout > 0:
        ops.insert(0, _ew(f"{prefix}.dropout", 2.5 * h, "sp", flops=h, bwd_io=2.5 * h))  # dy, 1-byte mask -> dx
    return ops


def _dropout_saved(prefix: str, spec: ModelSpec, h: float) -> list[Saved]:
    return [Saved(f"{prefix}.dropout_mask", h, "mask", "sp")] if spec.dropout > 0 else []


def _ffn_dense(
    prefix: str, spec: ModelSpec, h: float, f: float, expert: bool = False, copies: float = 1.0
) -> tuple[list[Op], list[Saved], float]:
    """A (gated) FFN of inner size f run ``copies`` times per token: ops, saved tensors, params.

    Non-gated (GPT): fc1 out (the GeLU input, 8sbh in Korthikanti's count for f = 4h) and the
    activation output (fc2 input) are saved; ReLU saves only its output. Gated (SwiGLU): gate, up,
    act(gate) and the product (down-proj input) are saved; act(gate) only by eager code (Megatron-Core's
    fused SwiGLUFunction saves only its input; Inductor's partitioner recomputes the silu).
    """
    c = copies
    if spec.gated:
        ops = [
            _mm(f"{prefix}.gate_up", h, 2 * f, expert=expert, dims=("ffn",), role="column"),
            _ew(f"{prefix}.act", 4 * f, flops=5 * f, expert=expert, bwd_io=5 * f),  # gate, up, dy -> dgate, dup
            _mm(f"{prefix}.down", f, h, expert=expert, dims=("ffn",), role="row"),
        ]
        saved = [
            Saved(f"{prefix}.gate", f * c, mm_output=True, op=f"{prefix}.gate_up"),
            Saved(f"{prefix}.up", f * c, mm_output=True, op=f"{prefix}.gate_up"),
            Saved(f"{prefix}.act_out", f * c, unfused_only=True),
            Saved(f"{prefix}.down_in", f * c, mm_input=True),
        ]
        params = 3 * h * f
    else:
        ops = [
            _mm(f"{prefix}.fc1", h, f, expert=expert, dims=("ffn",), role="column"),
            _ew(f"{prefix}.act", 2 * f, flops=8 * f, expert=expert, bwd_io=3 * f),
            _mm(f"{prefix}.fc2", f, h, expert=expert, dims=("ffn",), role="row"),
        ]
        relu = spec.activation == "relu"
        saved = [
            Saved(f"{prefix}.fc1_out", f * c, mm_output=True, in_none=not relu, op=f"{prefix}.fc1"),
            Saved(f"{prefix}.fc2_in", f * c, mm_input=True),
        ]
        params = 2 * h * f + (f if spec.bias else 0)
    down = f"{prefix}.down" if spec.gated else f"{prefix}.fc2"
    saved.append(Saved(f"{prefix}.down_out", h * c, "act", "sp", mm_output=True, in_none=False, op=down))
    if c != 1.0:
        scale = ("fwd_flops", "exec_fwd_flops", "io_elems")
        ops = [replace(o, **{k: getattr(o, k) * c for k in scale}) for o in ops]
    return ops, saved, params * (copies if not expert else 1.0)


def _ffn(
    spec: ModelSpec, index: int, norm_impl: NormImpl = "fused"
) -> tuple[list[Op], list[Saved], float, float, float]:
    """FFN sub-block of block ``index``: ops, saved, tp-split params, replicated params, expert params."""
    h = spec.hidden_size
    ops: list[Op] = []
    saved: list[Saved] = []
    repl = 0.0
    if not spec.parallel_residual:
        norm_op, norm_saved = _norm("ffn", spec, h, impl=norm_impl)
        ops.append(norm_op)
        saved += norm_saved
        repl += h * (2 if spec.norm == "layernorm" else 1)
    saved.append(Saved("ffn.in", h, "act", "sp", gathered=True, mm_input=True))
    dense = expert_params = 0.0
    m = spec.moe
    if m is None or not spec.is_moe_layer(index):
        f = m.dense_ffn_hidden_size if m and m.dense_ffn_hidden_size else spec.ffn_hidden_size
        o, sv, p = _ffn_dense("ffn", spec, h, f)
        ops += o
        saved += sv
        dense += p
        repl += h if spec.bias else 0
    else:
        # Router: a small replicated matmul to the experts' logits, softmax/top-k kept in fp32.
        ops.append(_mm("moe.router", h, m.num_experts, "none"))
        saved += [
            Saved("moe.router_probs", m.num_experts, "fp32", "none"),
            Saved("moe.dispatched_in", h * m.top_k, "act", "none", mm_input=True),
        ]
        repl += h * m.num_experts
        o, sv, p = _ffn_dense("moe.expert", spec, h, m.expert_ffn_hidden_size, expert=True, copies=m.top_k)
        ops += o
        saved += sv
        expert_params = p * m.num_experts
        if m.num_shared_experts:
            fs = m.shared_expert_ffn_hidden_size or m.expert_ffn_hidden_size
            o, sv, p = _ffn_dense("moe.shared", spec, h, fs * m.num_shared_experts)
            ops += o
            saved += sv
            dense += p
    ops += _dropout_residual("ffn", spec, h, norm_impl)
    saved += _dropout_saved("ffn", spec, h)
    return ops, saved, dense, repl, expert_params


def _block(spec: ModelSpec, s: int, impl: AttentionImpl, index: int, norm_impl: NormImpl = "fused") -> Layer:
    a_ops, a_saved, a_dense, a_repl = _attention(spec, s, impl, norm_impl)
    f_ops, f_saved, f_dense, f_repl, f_exp = _ffn(spec, index, norm_impl)
    moe = spec.is_moe_layer(index)
    dense_f = spec.moe.dense_ffn_hidden_size if (spec.moe and not moe) else None
    sig = ("block", moe, dense_f)
    return Layer(
        f"block.{index}",
        "block",
        tuple(a_ops + f_ops),
        tuple(_unique(a_saved + f_saved, spec.parallel_residual)),
        a_dense + f_dense,
        a_repl + f_repl,
        f_exp,
        moe,
        sig,
    )


def _unique(saved: list[Saved], parallel_residual: bool) -> list[Saved]:
    """Parallel residual: attention and FFN read the same normed input — keep one copy."""
    seen: dict[str, Saved] = {}
    for x in saved:
        if parallel_residual and x.name == "ffn.in":
            continue
        seen.setdefault(x.name, x)
    return list(seen.values())


def _embedding(spec: ModelSpec) -> Layer:
    h, v = spec.hidden_size, spec.vocab_size
    ops = [Op("embed.lookup", "embedding", 0.0, 0.0, 1.0, 2 * h, "sp")]
    ops += [_ew("embed.dropout", 2.5 * h, "sp", flops=h, bwd_io=2.5 * h)] if spec.dropout > 0 else []
    pos = spec.max_seq_len * h if spec.position == "learned" else 0.0
    saved = _dropout_saved("embed", spec, h)
    return Layer("embedding", "embedding", tuple(ops), tuple(saved), v * h, pos, signature=("embedding",))


def _head(spec: ModelSpec, norm_impl: NormImpl = "fused") -> Layer:
    """Final norm, vocab-parallel output projection and fp32 cross-entropy.

    Korthikanti §4.3 counts 4sbv/t bytes for the fp32 logits kept by the loss. With tied
    embeddings the head reuses the embedding matrix (params counted once when one stage holds
    both; the planner adds the copy a separate last pipeline stage keeps).
    """
    h, v = spec.hidden_size, spec.vocab_size
    norm_op, norm_saved = _norm("head", spec, h, impl=norm_impl)
    ops = [norm_op, _mm("head.logits", h, v, dims=("vocab",), role="column"), _ew("head.loss", 3 * v, flops=5 * v)]
    saved = norm_saved + [Saved("head.in", h, "act", "sp", gathered=True), Saved("head.logits_fp32", v, "fp32")]
    params = 0.0 if spec.tie_embeddings else v * h
    repl = h * (2 if spec.norm == "layernorm" else 1)
    return Layer("head", "head", tuple(ops), tuple(saved), params, repl, signature=("head",))


@functools.lru_cache(maxsize=64)
def build_graph(
    spec: ModelSpec, seq_len: int, attention_impl: AttentionImpl = "flash", norm_impl: NormImpl = "fused"
) -> LayerGraph:
    """Embedding, ``num_layers`` blocks, head — each with per-token FLOPs, params and saved tensors.

    Cached: specs and graphs are frozen, and the planner scores hundreds of plans of one model
    (rebuilding a 126-block graph took a fifth of each estimate)."""
    blocks = tuple(_block(spec, seq_len, attention_impl, i, norm_impl) for i in range(spec.num_layers))
    return LayerGraph(spec, seq_len, attention_impl, (_embedding(spec),) + blocks + (_head(spec, norm_impl),))
