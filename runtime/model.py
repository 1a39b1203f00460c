"""A PyTorch transformer built from a :class:`models.spec.ModelSpec`.

Module names follow torchtitan so that one tensor-parallel plan fits every model
(``tok_embeddings``, ``layers["i"].attention.wq/wk/wv/wo``, ``feed_forward.w1/w2/w3``, ``norm``,
``output``). ``layers`` is a ModuleDict keyed "0".."N-1": a pipeline stage deletes the blocks it
does not own and keeps the others' names, and sets the missing top-level parts to ``None``.

Initialisation is per component, each from its own generator seeded by ``(seed, component)``, so
a stage that owns blocks 4..7 gets exactly the weights the full model has there: parity with a
single-process reference does not depend on which ranks or stages exist.

Not implemented (refused when the model is built): multi-head latent attention (``spec.mla``),
rope_scaling other than linear and llama3 (:mod:`runtime.rope`).
MoE routing is dropless unless ``moe.capacity_factor`` is set (runtime.capacity: copies beyond an
expert's capacity are dropped) and has no auxiliary balancing loss.
Context and expert parallelism plug in through ``Attention.cp``/``Transformer.cp``
(runtime.context) and ``MoE.ep`` (runtime.experts); unset, the model is the single-process one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.spec import ModelSpec
from runtime.capacity import capacity_keep
from runtime.rope import inv_frequencies

if TYPE_CHECKING:
    from runtime.context import ContextShard
    from runtime.experts import ExpertShard

NORM_EPS = 1e-5  # when the spec leaves norm_eps null: torch's LayerNorm default, Llama 2's rms_norm_eps
INIT_STD = 0.02  # GPT-2 / Llama initialisation
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name in ("gelu", "geglu"):
        return F.gelu(x, approximate="tanh")  # GPT-2's tanh approximation
    if name == "swiglu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    return torch.square(F.relu(x))  # relu2: So et al. 2021 (Primer)


class Norm(nn.Module):
    """LayerNorm or RMSNorm through the functional kernels (what the memory table documents)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.kind, self.eps = spec.norm, spec.norm_eps or NORM_EPS
        self.weight = nn.Parameter(torch.ones(spec.hidden_size))
        self.bias = nn.Parameter(torch.zeros(spec.hidden_size)) if spec.norm == "layernorm" and spec.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[-1],)
        if self.kind == "layernorm":
            return F.layer_norm(x, shape, self.weight, self.bias, self.eps)
        return F.rms_norm(x, shape, self.weight, self.eps)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [b, s, heads, d]`` by ``rope [2, s, d]`` (cos, sin), half-split convention.

    ``x * cos`` saves only ``cos`` for backward (a buffer), so RoPE adds no saved activation.
    """
    cos, sin = rope[0][None, :, None, :], rope[1][None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_table(spec: ModelSpec, dtype: torch.dtype, device=None) -> torch.Tensor:
    inv_freq = inv_frequencies(spec, device)  # rope_theta and rope_scaling (runtime.rope)
    angles = torch.outer(torch.arange(spec.max_seq_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # [max_seq_len, d]: each frequency on both halves
    return torch.stack((angles.cos(), angles.sin())).to(dtype)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads; under TP each rank sees heads / tp of each."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, d, bias = spec.hidden_size, spec.dim_per_head, spec.bias
        self.head_dim, self.causal = d, spec.attention_mask == "causal"
        self.gqa = spec.kv_heads != spec.num_heads
        self.window = spec.sliding_window
        self.wq = nn.Linear(h, spec.num_heads * d, bias=bias)
        self.wk = nn.Linear(h, spec.kv_heads * d, bias=bias)
        self.wv = nn.Linear(h, spec.kv_heads * d, bias=bias)
        self.wo = nn.Linear(spec.num_heads * d, h, bias=bias)

    # Context parallel (runtime.context): this rank's tokens are two chunks of each sequence;
    # the shard knows their positions and attends over the K/V of every cp rank.
    cp: ContextShard | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, -1, self.head_dim)  # -1: local heads under tensor parallel
        k = self.wk(x).view(b, s, -1, self.head_dim)
        v = self.wv(x).view(b, s, -1, self.head_dim)
        if rope is not None:
            table = rope[:, :s] if self.cp is None else rope[:, self.cp.positions(s, x.device)]
            q, k = apply_rope(q, table), apply_rope(k, table)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.cp is not None:
            out = self.cp.attend(q, k, v, self.causal, self.window, self.gqa)
            return self.wo(out.transpose(1, 2).reshape(b, s, -1))
        mask, causal = None, self.causal
        if self.window is not None:
            # A boolean band mask: SDPA then leaves the flash kernel (more is saved; see docs).
            i = torch.arange(s, device=x.device)
            dist = i[:, None] - i[None, :]
            mask = (dist < self.window) & ((dist >= 0) if causal else (dist > -self.window))
            causal = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.gqa)
        # transpose+reshape copies: wo saves this [b, s, a*d] copy besides SDPA's own output.
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """Two-matrix (gelu/relu/relu2) or gated three-matrix (swiglu/geglu) FFN."""

    def __init__(self, spec: ModelSpec, hidden: int):
        super().__init__()
        h, bias = spec.hidden_size, spec.bias
        self.activation = spec.activation
        self.w1 = nn.Linear(h, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, h, bias=bias)
        self.w3 = nn.Linear(h, hidden, bias=bias) if spec.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _activation(self.activation, self.w1(x))
        return self.w2(a * self.w3(x) if self.w3 is not None else a)


class MoE(nn.Module):
    """Top-k routed experts plus always-on shared experts (one FFN of n_shared x size).

    Routing: softmax over the top-k router logits (Mixtral). Experts run one after another on
    the tokens routed to them; an expert with no tokens still runs on an empty batch so every
    rank produces a gradient for every parameter (manual data-parallel all-reduce needs that).
    ``experts`` is keyed by the global expert index: under expert parallelism
    (runtime.experts) a rank keeps only its own experts, under their original names, and
    ``ep`` dispatches the routed tokens to the ranks that hold them.
    """

    ep: ExpertShard | None = None
    cp: ContextShard | None = None  # capacity needs the routing of whole sequences

    def __init__(self, spec: ModelSpec):
        super().__init__()
        m = spec.moe
        assert m is not None, "MoE needs a spec with a moe block"
        self.top_k, self.num_experts, self.capacity_factor = m.top_k, m.num_experts, m.capacity_factor
        self.router = nn.Linear(spec.hidden_size, m.num_experts, bias=False)
        self.experts = nn.ModuleDict(
            {str(j): FeedForward(spec, m.expert_ffn_hidden_size) for j in range(m.num_experts)}
        )
        shared = m.shared_expert_ffn_hidden_size or m.expert_ffn_hidden_size
        self.shared_experts = FeedForward(spec, shared * m.num_shared_experts) if m.num_shared_experts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        t = x.reshape(-1, shape[-1])
        top_logits, top_idx = self.router(t).topk(self.top_k, dim=-1)
        weights = top_logits.softmax(dim=-1)
        keep = self._keep(top_idx.view(shape[0], shape[1], -1)).reshape(top_idx.shape)
        if self.ep is not None:
            out = self.ep.dispatch_combine(t, top_idx, weights, self.experts, keep)
        else:
            out = torch.zeros_like(t)
            for key, expert in self.experts.items():
                tok, slot = ((top_idx == int(key)) & keep).nonzero(as_tuple=True)
                out = out.index_add(0, tok, expert(t[tok]) * weights[tok, slot, None])
        if self.shared_experts is not None:
            out = out + self.shared_experts(t)
        return out.view(shape)

    def _keep(self, top_idx: torch.Tensor) -> torch.Tensor:
        """Routed copies ``[b, s, k]`` within expert capacity (runtime.capacity); all when dropless."""
        if self.capacity_factor is None:
            return torch.ones_like(top_idx, dtype=torch.bool)
        if self.cp is None:
            return capacity_keep(top_idx, self.num_experts, self.capacity_factor)
        full = capacity_keep(self.cp.whole_sequences(top_idx), self.num_experts, self.capacity_factor)
        return full[:, self.cp.positions(top_idx.shape[1], top_idx.device)]


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + ffn(norm(.)); or both from x (parallel residual)."""

    def __init__(self, spec: ModelSpec, index: int):
        super().__init__()
        self.parallel_residual, self.dropout = spec.parallel_residual, spec.dropout
        self.attention_norm, self.ffn_norm = Norm(spec), Norm(spec)
        self.attention = Attention(spec)
        if spec.is_moe_layer(index):
            self.feed_forward: nn.Module = MoE(spec)
        else:
            dense = spec.moe.dense_ffn_hidden_size if spec.moe is not None else None
            self.feed_forward = FeedForward(spec, dense or spec.ffn_hidden_size)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        attn = self._drop(self.attention(self.attention_norm(x), rope))
        if self.parallel_residual:
            return x + attn + self._drop(self.feed_forward(self.ffn_norm(x)))
        h = x + attn
        return h + self._drop(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    """Embedding (+ learned positions), blocks, final norm, output head; any part may be None."""

    # A pipeline stage sets the parts it lacks to None (runtime.pipeline.split_model).
    tok_embeddings: nn.Embedding | None
    pos_embeddings: nn.Embedding | None
    norm: Norm | None
    output: nn.Linear | None
    rope: torch.Tensor | None  # a non-persistent buffer (register_buffer)
    cp: ContextShard | None = None  # context parallel: the positions of this rank's tokens

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.mla is not None:
            raise ValueError(f"model {spec.name!r}: the runtime does not implement MLA attention (spec.mla)")
        if spec.position == "alibi":
            raise ValueError(f"model {spec.name!r}: the runtime does not implement ALiBi positions")
        self.spec = spec
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        learned = spec.position == "learned"
        self.pos_embeddings = nn.Embedding(spec.max_seq_len, spec.hidden_size) if learned else None
        self.layers = nn.ModuleDict({str(i): Block(spec, i) for i in range(spec.num_layers)})
        self.norm = Norm(spec)
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.tie_weights()
        rope = rope_table(spec, torch.float32) if spec.position == "rope" else None
        self.register_buffer("rope", rope, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``[b, s]`` on the first stage, hidden states ``[b, s, h]`` elsewhere."""
        if self.tok_embeddings is not None:
            tokens = x
            x = self.tok_embeddings(tokens)
            if self.pos_embeddings is not None:
                s = tokens.shape[1]
                pos = torch.arange(s, device=tokens.device) if self.cp is None else self.cp.positions(s, tokens.device)
                x = x + self.pos_embeddings(pos[None, :])
        for layer in self.layers.values():
            x = layer(x, self.rope)
        if self.norm is not None:
            x = self.norm(x)
        return self.output(x) if self.output is not None else x

    def tie_weights(self) -> None:
        """Share the embedding with the head (again: ``to_empty`` and ``deepcopy`` of parts untie)."""
        if self.spec.tie_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Initialise every part this module still has, each from its own seeded generator."""
        n = self.spec.num_layers

        def gen(component: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed * 1_000_003 + component)

        if self.tok_embeddings is not None:
            _init_normal(self.tok_embeddings.weight, INIT_STD, gen(0))
        if self.pos_embeddings is not None:
            _init_normal(self.pos_embeddings.weight, INIT_STD, gen(1))
        for key, layer in self.layers.items():
            _init_block(layer, n, gen(2 + int(key)))
        if self.norm is not None:
            _init_norm(self.norm)
        if self.output is not None:
            # Tied but split across stages: the head's copy gets the embedding's values.
            tied = self.spec.tie_embeddings
            _init_normal(self.output.weight, INIT_STD, gen(0 if tied else n + 2))
        if self.rope is not None:
            self.rope.copy_(rope_table(self.spec, torch.float32).to(self.rope.dtype))


def _init_normal(p: torch.Tensor, std: float, g: torch.Generator) -> None:
    # Draw on CPU in fp32 from the generator, then copy: identical values on any device/dtype.
    p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=g))


def _init_norm(norm: Norm) -> None:
    norm.weight.fill_(1.0)
    if norm.bias is not None:
        norm.bias.zero_()


def _init_block(block: nn.Module, num_layers: int, g: torch.Generator) -> None:
    # Residual-branch outputs scaled by 1/sqrt(2N): GPT-2 paper, section 2.3.
    out_std = INIT_STD / math.sqrt(2 * num_layers)
    for name, module in block.named_modules():
        if isinstance(module, Norm):
            _init_norm(module)
        elif isinstance(module, nn.Linear):
            residual_out = name.endswith(("wo", "w2"))
            _init_normal(module.weight, out_std if residual_out else INIT_STD, g)
            if module.bias is not None:
                module.bias.zero_()


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> Transformer:
    """The full model, initialised from ``seed``; on ``device="meta"`` left uninitialised."""
    with torch.device("meta"):
        model = Transformer(spec)
    if str(device) == "meta":
        return model.to(dtype)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()
    model.init_weights(seed)
    return model


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits [b, s, V]`` against ``targets [b, s]`` (fp32 softmax)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))
