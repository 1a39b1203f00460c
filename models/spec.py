"""The model spec: a typed, strict description of a transformer (dense or MoE).

Unknown keys and wrong types are errors (pydantic v2, ``extra="forbid"``, strict mode).
Cross-field invariants (heads divisible by kv-heads, MoE layer selection, ...) are checked in
one place, :meth:`ModelSpec._check_invariants`, and the message shows the arithmetic.

Sizes are element counts (no unit suffix needed); every byte or second figure elsewhere carries
its unit in its name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

Norm = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "relu", "relu2", "swiglu", "geglu"]
Position = Literal["learned", "rope", "alibi", "none"]
AttentionMask = Literal["causal", "bidirectional"]
RouterScore = Literal["softmax", "sigmoid"]
RopeScalingType = Literal["linear", "dynamic", "yarn", "longrope", "llama3"]

GATED_ACTIVATIONS = ("swiglu", "geglu")
# Upper bounds of the sizes (issue 21): far above any model built, low enough that the planner's
# per-block work (O(num_layers) lists) and float arithmetic (h**2 * L) stay bounded and finite.
MAX_LAYERS = 10_000  # the largest published models have ~200 blocks
MAX_WIDTH = 2**24  # hidden, FFN, vocabulary, heads, head dims, sequence length: 16,777,216
MAX_EXPERTS = 2**16


class _Strict(BaseModel):
    # allow_inf_nan=False: an `.inf` latency or a NaN size is an error, never a step time of inf s.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class MoESpec(_Strict):
    """Mixture-of-experts feed-forward layers (Switch/GShard style top-k routing)."""

    num_experts: PositiveInt = Field(le=MAX_EXPERTS, description="Routed experts per MoE layer.")
    top_k: PositiveInt = Field(le=MAX_EXPERTS, description="Experts each token is routed to.")
    expert_ffn_hidden_size: PositiveInt = Field(le=MAX_WIDTH, description="Hidden size of one routed expert's FFN.")
    num_shared_experts: int = Field(
        0, ge=0, le=MAX_WIDTH, description="Always-active shared experts (DeepSeek/Qwen2-MoE)."
    )
    shared_expert_ffn_hidden_size: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="Hidden size of one shared expert; defaults to expert_ffn_hidden_size."
    )
    first_k_dense: int = Field(
        0, ge=0, le=MAX_WIDTH, description="The first k layers keep a dense FFN (DeepSeek-V3: 3)."
    )
    layer_freq: PositiveInt = Field(
        1, le=MAX_LAYERS, description="After first_k_dense, every layer_freq-th layer is MoE (1 = all)."
    )
    dense_ffn_hidden_size: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="FFN size of the dense layers; defaults to the model's ffn_hidden_size."
    )
    capacity_factor: float | None = Field(
        None, gt=0, description="Expert capacity factor; null means dropless (no padding, no drops)."
    )
    router_score_function: RouterScore = Field(
        "softmax", description="Router score: softmax (Mixtral, Qwen) or sigmoid (DeepSeek-V3 scoring_func)."
    )
    router_expert_bias: bool = Field(
        False, description="Aux-loss-free load balancing: a per-expert bias added for top-k selection (DeepSeek-V3)."
    )
    router_topk_scaling_factor: float | None = Field(
        None, gt=0, description="Factor on the routed experts' weights (DeepSeek routed_scaling_factor); null = 1."
    )
    router_num_groups: int | None = Field(
        None,
        ge=1,
        le=MAX_WIDTH,
        description="Group-limited routing: experts split into groups (DeepSeek n_group); null = none.",
    )
    router_group_topk: int | None = Field(
        None,
        ge=1,
        le=MAX_WIDTH,
        description="Groups each token may route into (DeepSeek topk_group); set with router_num_groups.",
    )


class MLASpec(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and joint low-rank KV projections."""

    q_lora_rank: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="Rank of the Q down-projection; null = full-rank Q."
    )
    kv_lora_rank: PositiveInt = Field(le=MAX_WIDTH, description="Rank of the joint KV compression.")
    qk_nope_head_dim: PositiveInt = Field(le=MAX_WIDTH, description="Per-head Q/K dims without rotary.")
    qk_rope_head_dim: PositiveInt = Field(
        le=MAX_WIDTH, description="Per-head Q/K rotary dims (K's rope part is shared by heads)."
    )
    v_head_dim: PositiveInt = Field(le=MAX_WIDTH, description="Per-head V dims.")


class RopeScalingSpec(_Strict):
    """RoPE context extension (Hugging Face ``rope_scaling`` / ``rope_parameters``). Per-dimension
    factor lists (longrope's ``long_factor``/``short_factor``) are not kept."""

    type: RopeScalingType = Field(description="linear, dynamic (NTK), yarn, longrope or llama3.")
    factor: float | None = Field(None, gt=0, description="Context extension factor.")
    original_max_seq_len: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="Context length before extension (original_max_position_embeddings)."
    )
    low_freq_factor: float | None = Field(None, gt=0, description="llama3: low-frequency wavelength factor.")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3: high-frequency wavelength factor.")
    beta_fast: float | None = Field(None, gt=0, description="yarn: fast-rotation boundary (rotations).")
    beta_slow: float | None = Field(None, gt=0, description="yarn: slow-rotation boundary (rotations).")
    mscale: float | None = Field(None, gt=0, description="yarn: attention-temperature scale (DeepSeek).")
    mscale_all_dim: float | None = Field(None, ge=0, description="yarn: mscale applied to all dims (DeepSeek).")


class ModelSpec(_Strict):
    """A decoder (GPT/Llama family) or encoder (BERT) transformer, dense or MoE."""

    name: str = Field(description="Canonical lowercase name, e.g. llama3-70b.")
    num_layers: PositiveInt = Field(le=MAX_LAYERS, description="Transformer blocks.")
    hidden_size: PositiveInt = Field(le=MAX_WIDTH, description="Model width h.")
    num_heads: PositiveInt = Field(le=MAX_WIDTH, description="Attention (query) heads a.")
    num_kv_heads: int | None = Field(
        None, ge=1, le=MAX_WIDTH, description="Key/value heads (GQA); null = num_heads (MHA)."
    )
    head_dim: int | None = Field(None, ge=1, le=MAX_WIDTH, description="Per-head dims; null = hidden_size / num_heads.")
    ffn_hidden_size: PositiveInt = Field(le=MAX_WIDTH, description="FFN inner size (per branch for gated activations).")
    vocab_size: PositiveInt = Field(le=MAX_WIDTH, description="Vocabulary size V.")
    max_seq_len: PositiveInt = Field(4096, le=MAX_WIDTH, description="Longest sequence the positions support.")
    norm: Norm = Field("rmsnorm", description="layernorm (GPT/BERT) or rmsnorm (Llama).")
    activation: Activation = Field("swiglu", description="FFN activation; swiglu/geglu are gated (3 matrices).")
    position: Position = Field("rope", description="learned (absolute table), rope, alibi or none.")
    attention_mask: AttentionMask = Field("causal", description="causal (decoder) or bidirectional (encoder).")
    tie_embeddings: bool = Field(False, description="Output head shares the input embedding matrix.")
    bias: bool = Field(False, description="Linear layers carry biases (GPT-2/3, BERT).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability (masks are saved for backward).")
    parallel_residual: bool = Field(False, description="Attention and FFN read the same input (GPT-J/NeoX).")
    sliding_window: int | None = Field(None, ge=1, le=MAX_WIDTH, description="Sliding-window attention span in tokens.")
    full_attention_every: int | None = Field(
        None,
        ge=1,
        description="With sliding_window: blocks n-1, 2n-1, ... attend to the whole sequence, the others to "
        "the window (Gemma 2 and gpt-oss: 2, Gemma 3: 6); null = every block uses the window.",
    )
    rope_theta: float | None = Field(
        None, gt=0, description="RoPE base frequency; null = the framework's default (10000). Used with rope."
    )
    rope_scaling: RopeScalingSpec | None = Field(None, description="RoPE context extension; null = none.")
    norm_eps: float | None = Field(
        None, gt=0, description="Epsilon of the norm layers; null = the framework's default."
    )
    qk_norm: bool = Field(
        False, description="Queries and keys are normalised before attention (Qwen3, OLMo 2, Gemma 3)."
    )
    moe: MoESpec | None = Field(None, description="Mixture-of-experts settings; null = dense.")
    mla: MLASpec | None = Field(None, description="Multi-head latent attention settings (DeepSeek).")
    source: str = Field("", description="Where the numbers come from (paper, model card, config).")

    @model_validator(mode="after")
    def _check_invariants(self) -> ModelSpec:
        a, kv = self.num_heads, self.kv_heads
        if a % kv:
            raise ValueError(f"num_heads ({a}) must be divisible by num_kv_heads ({kv}): {a} % {kv} = {a % kv}")
        if self.head_dim is None and self.mla is None and self.hidden_size % a:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({a}) "
                f"when head_dim is not given: {self.hidden_size} % {a} = {self.hidden_size % a}"
            )
        if self.full_attention_every is not None and self.sliding_window is None:
            raise ValueError(f"full_attention_every ({self.full_attention_every}) needs a sliding_window")
        if self.moe is not None:
            _check_moe(self.moe, self.num_layers)
        return self

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    def attention_window(self, index: int) -> int | None:
        """Tokens block ``index`` (0-based) attends back over: the sliding window, or None (all)."""
        n = self.full_attention_every
        if self.sliding_window is None or (n is not None and (index + 1) % n == 0):
            return None
        return self.sliding_window

    def is_moe_layer(self, index: int) -> bool:
        """Whether block ``index`` (0-based) has a routed-expert FFN."""
        m = self.moe
        if m is None or index < m.first_k_dense:
            return False
        return (index - m.first_k_dense) % m.layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))


def _check_moe(m: MoESpec, num_layers: int) -> None:
    """The MoE section's invariants (part of :meth:`ModelSpec._check_invariants`)."""
    if m.top_k > m.num_experts:
        raise ValueError(f"moe.top_k ({m.top_k}) exceeds moe.num_experts ({m.num_experts})")
    if m.first_k_dense >= num_layers:
        raise ValueError(f"moe.first_k_dense ({m.first_k_dense}) must be < num_layers ({num_layers})")
    g, k = m.router_num_groups, m.router_group_topk
    if (g is None) != (k is None):
        raise ValueError(f"moe.router_num_groups ({g}) and moe.router_group_topk ({k}) are set together")
    if g is None or k is None:
        return
    if m.num_experts % g:
        raise ValueError(
            f"moe.num_experts ({m.num_experts}) must be divisible by moe.router_num_groups ({g}): "
            f"{m.num_experts} % {g} = {m.num_experts % g}"
        )
    if k > g:
        raise ValueError(f"moe.router_group_topk ({k}) exceeds moe.router_num_groups ({g})")
    if m.top_k > k * (m.num_experts // g):
        raise ValueError(
            f"moe.top_k ({m.top_k}) exceeds the experts in router_group_topk groups: "
            f"{k} * {m.num_experts} / {g} = {k * (m.num_experts // g)}"
        )
