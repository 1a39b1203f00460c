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

GATED_ACTIVATIONS = ("swiglu", "geglu")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MoESpec(_Strict):
    """Mixture-of-experts feed-forward layers (Switch/GShard style top-k routing)."""

    num_experts: PositiveInt = Field(description="Routed experts per MoE layer.")
    top_k: PositiveInt = Field(description="Experts each token is routed to.")
    expert_ffn_hidden_size: PositiveInt = Field(description="Hidden size of one routed expert's FFN.")
    num_shared_experts: int = Field(0, ge=0, description="Always-active shared experts (DeepSeek/Qwen2-MoE).")
    shared_expert_ffn_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of one shared expert; defaults to expert_ffn_hidden_size."
    )
    first_k_dense: int = Field(0, ge=0, description="The first k layers keep a dense FFN (DeepSeek-V3: 3).")
    layer_freq: PositiveInt = Field(1, description="After first_k_dense, every layer_freq-th layer is MoE (1 = all).")
    dense_ffn_hidden_size: int | None = Field(
        None, ge=1, description="FFN size of the dense layers; defaults to the model's ffn_hidden_size."
    )
    capacity_factor: float | None = Field(
        None, gt=0, description="Expert capacity factor; null means dropless (no padding, no drops)."
    )


class MLASpec(_Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and joint low-rank KV projections."""

    q_lora_rank: int | None = Field(None, ge=1, description="Rank of the Q down-projection; null = full-rank Q.")
    kv_lora_rank: PositiveInt = Field(description="Rank of the joint KV compression.")
    qk_nope_head_dim: PositiveInt = Field(description="Per-head Q/K dims without rotary.")
    qk_rope_head_dim: PositiveInt = Field(description="Per-head Q/K rotary dims (K's rope part is shared by heads).")
    v_head_dim: PositiveInt = Field(description="Per-head V dims.")


class ModelSpec(_Strict):
    """A decoder (GPT/Llama family) or encoder (BERT) transformer, dense or MoE."""

    name: str = Field(description="Canonical lowercase name, e.g. llama3-70b.")
    num_layers: PositiveInt = Field(description="Transformer blocks.")
    hidden_size: PositiveInt = Field(description="Model width h.")
    num_heads: PositiveInt = Field(description="Attention (query) heads a.")
    num_kv_heads: int | None = Field(None, ge=1, description="Key/value heads (GQA); null = num_heads (MHA).")
    head_dim: int | None = Field(None, ge=1, description="Per-head dims; null = hidden_size / num_heads.")
    ffn_hidden_size: PositiveInt = Field(description="FFN inner size (per branch for gated activations).")
    vocab_size: PositiveInt = Field(description="Vocabulary size V.")
    max_seq_len: PositiveInt = Field(4096, description="Longest sequence the positions support.")
    norm: Norm = Field("rmsnorm", description="layernorm (GPT/BERT) or rmsnorm (Llama).")
    activation: Activation = Field("swiglu", description="FFN activation; swiglu/geglu are gated (3 matrices).")
    position: Position = Field("rope", description="learned (absolute table), rope, alibi or none.")
    attention_mask: AttentionMask = Field("causal", description="causal (decoder) or bidirectional (encoder).")
    tie_embeddings: bool = Field(False, description="Output head shares the input embedding matrix.")
    bias: bool = Field(False, description="Linear layers carry biases (GPT-2/3, BERT).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability (masks are saved for backward).")
    parallel_residual: bool = Field(False, description="Attention and FFN read the same input (GPT-J/NeoX).")
    sliding_window: int | None = Field(None, ge=1, description="Sliding-window attention span in tokens.")
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
        if self.moe is not None:
            if self.moe.top_k > self.moe.num_experts:
                raise ValueError(f"moe.top_k ({self.moe.top_k}) exceeds moe.num_experts ({self.moe.num_experts})")
            if self.moe.first_k_dense >= self.num_layers:
                raise ValueError(
                    f"moe.first_k_dense ({self.moe.first_k_dense}) must be < num_layers ({self.num_layers})"
                )
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

    def is_moe_layer(self, index: int) -> bool:
        """Whether block ``index`` (0-based) has a routed-expert FFN."""
        m = self.moe
        if m is None or index < m.first_k_dense:
            return False
        return (index - m.first_k_dense) % m.layer_freq == 0

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))
