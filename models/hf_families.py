"""The alias table: for each Hugging Face ``model_type``, which ``config.json`` keys give which
:class:`models.spec.ModelSpec` field. :mod:`models.hf_import` applies it; :mod:`models.hf_report`
replays it to say what was read.

Every family declares:

- ``keys``: for each spec field, the HF keys tried in order; the first one present and not null
  wins. ``moe.*`` / ``mla.*`` are nested spec fields; ``_*`` are inputs a rule in
  :mod:`models.hf_import` reads; a dotted HF key (``rope_parameters.rope_theta``) looks inside a
  nested mapping. transformers 4 and 5 spellings both appear (``num_experts`` /
  ``num_local_experts``, ``rope_theta`` / ``rope_parameters``);
- ``required``: the fields a config must give; when absent the error names their HF keys;
- ``defaults``: the value transformers documents for an optional key the config leaves out;
- ``facts``: what the architecture fixes and the config never states (norm, position, ...);
- ``gated``: whether the activation key names the gate of a GLU FFN (silu -> swiglu);
- ``moe_rule``: how the family picks its MoE layers (every layer, Qwen's step, DeepSeek's k);
- ``ffn_ratio``: FFN size = ratio x hidden size when the config gives none (GPT-2's
  ``n_inner: null``, Falcon, BLOOM), the one size transformers itself derives;
- ``text_config``: a multimodal wrapper whose nested ``text_config`` is imported as that family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Keys = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    keys: Keys
    required: tuple[str, ...]
    facts: Mapping[str, object] = field(default_factory=dict)
    defaults: Mapping[str, object] = field(default_factory=dict)
    gated: bool = True
    moe_rule: str | None = None  # None = dense; "all", "qwen" or "deepseek"
    ffn_ratio: int | None = None
    text_config: str | None = None


# --- shared key groups -------------------------------------------------------------------------
_BASE = ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size", "max_seq_len")
_NO_FFN = tuple(f for f in _BASE if f != "ffn_hidden_size")  # the FFN size has a documented default
_MOE = ("moe.num_experts", "moe.top_k", "moe.expert_ffn_hidden_size")
_MLA = ("mla.kv_lora_rank", "mla.qk_nope_head_dim", "mla.qk_rope_head_dim", "mla.v_head_dim")

# RoPE: transformers 4 writes rope_theta and rope_scaling; 5 writes one rope_parameters mapping
# (Gemma 3: one per layer type; the full-attention layers' is the model's).
ROPE: Keys = {
    "rope_theta": ("rope_theta", "rope_parameters.rope_theta", "rope_parameters.full_attention.rope_theta"),
    "_rope_scaling": ("rope_scaling", "rope_parameters.full_attention", "rope_parameters"),
}
# Llama and every decoder that copied its config layout.
_LLAMA: Keys = {
    "num_layers": ("num_hidden_layers",),
    "hidden_size": ("hidden_size",),
    "num_heads": ("num_attention_heads",),
    "num_kv_heads": ("num_key_value_heads",),  # null / absent = num_attention_heads (MHA)
    "head_dim": ("head_dim",),
    "ffn_hidden_size": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "max_seq_len": ("max_position_embeddings",),
    "tie_embeddings": ("tie_word_embeddings",),
    "bias": ("attention_bias", "mlp_bias"),
    "activation": ("hidden_act",),
    "norm_eps": ("rms_norm_eps",),
    **ROPE,
}
# Sliding windows: one span, on every layer, on the layers layer_types names (transformers 5), or
# on all but every n-th (Gemma's sliding_window_pattern).
_WINDOW: Keys = {"sliding_window": ("sliding_window",), "_layer_types": ("layer_types",)}
_ROPE_RMS = {"norm": "rmsnorm", "position": "rope"}
_UNTIED = {"tie_embeddings": False, "bias": False, "activation": "silu"}
# Qwen configs carry sliding_window even when use_sliding_window is false; the flag decides.
_QWEN: Keys = {**_LLAMA, **_WINDOW, "_use_sliding_window": ("use_sliding_window",)}
_QWEN_MOE: Keys = {
    **_QWEN,
    "moe.num_experts": ("num_experts", "num_local_experts"),  # transformers 5 writes num_local_experts
    "moe.top_k": ("num_experts_per_tok",),
    "moe.expert_ffn_hidden_size": ("moe_intermediate_size",),
    "_sparse_step": ("decoder_sparse_step",),
    "_mlp_only_layers": ("mlp_only_layers",),
}
_QWEN_MOE_DEFAULTS = {**_UNTIED, "_sparse_step": 1, "_mlp_only_layers": []}
_DEEPSEEK: Keys = {
    **{k: v for k, v in _LLAMA.items() if k != "head_dim"},  # MLA sets its own per-head dims
    "moe.num_experts": ("n_routed_experts",),
    "moe.top_k": ("num_experts_per_tok",),
    "moe.expert_ffn_hidden_size": ("moe_intermediate_size",),
    "moe.num_shared_experts": ("n_shared_experts",),
    "moe.router_score_function": ("scoring_func",),
    "moe.router_topk_scaling_factor": ("routed_scaling_factor",),
    "_topk_method": ("topk_method",),  # noaux_tc: expert bias; group_limited_greedy / noaux_tc: groups
    "_n_group": ("n_group",),
    "_topk_group": ("topk_group",),
    "_first_k_dense": ("first_k_dense_replace",),
    "_moe_layer_freq": ("moe_layer_freq",),
    "mla.q_lora_rank": ("q_lora_rank",),  # null = full-rank Q (DeepSeek-V2-Lite)
    "mla.kv_lora_rank": ("kv_lora_rank",),
    "mla.qk_nope_head_dim": ("qk_nope_head_dim",),
    "mla.qk_rope_head_dim": ("qk_rope_head_dim",),
    "mla.v_head_dim": ("v_head_dim",),
}
_DEEPSEEK_REQUIRED = _BASE + _MOE + _MLA + ("moe.num_shared_experts", "_first_k_dense")
# DeepSeek-V3's router (modeling_deepseek.py MoEGate): sigmoid scores, an expert bias for top-k
# selection (noaux_tc), groups; DeepSeek-V2's: softmax, greedy unless the config says otherwise.
_DSV3_DEFAULTS = {**_UNTIED, "_moe_layer_freq": 1, "moe.router_score_function": "sigmoid", "_topk_method": "noaux_tc"}
_DSV2_DEFAULTS = {**_UNTIED, "_moe_layer_freq": 1, "moe.router_score_function": "softmax", "_topk_method": "greedy"}
# GPT-2 and GPT-J spell the same sizes n_layer / n_embd / n_head / n_inner / n_positions.
_GPT2: Keys = {
    "num_layers": ("n_layer",),
    "hidden_size": ("n_embd",),
    "num_heads": ("n_head",),
    "ffn_hidden_size": ("n_inner",),
    "vocab_size": ("vocab_size",),
    "max_seq_len": ("n_positions",),
    "tie_embeddings": ("tie_word_embeddings",),
    "activation": ("activation_function",),
    "dropout": ("resid_pdrop",),
    "norm_eps": ("layer_norm_epsilon",),
}
_LAYERNORM = {"norm": "layernorm", "bias": True}
_SIZES = {k: _LLAMA[k] for k in _BASE}
_GEMMA: Keys = {**_LLAMA, "activation": ("hidden_activation", "hidden_act")}  # GemmaMLP prefers the first
_GEMMA_DEFAULTS = {"tie_embeddings": True, "bias": False, "activation": "gelu_pytorch_tanh"}
# Gemma3TextConfig's documented defaults: a multimodal gemma3 config.json written by
# transformers 4 stores its text_config as a diff against them (gemma-3-4b omits the heads).
_GEMMA3_DEFAULTS = {
    **_GEMMA_DEFAULTS,
    "vocab_size": 262208,
    "num_heads": 8,
    "num_kv_heads": 4,
    "head_dim": 256,
    "max_seq_len": 131072,
    "norm_eps": 1e-6,
    "sliding_window": 4096,
    "rope_theta": 1_000_000.0,
    "_full_every": 6,
}
_GRANITE_MOE: Keys = {
    **_LLAMA,
    "moe.num_experts": ("num_local_experts",),
    "moe.top_k": ("num_experts_per_tok",),
    "moe.expert_ffn_hidden_size": ("intermediate_size",),  # GraniteMoe has no dense FFN
}
_FALCON: Keys = {
    "num_layers": ("num_hidden_layers", "n_layer"),
    "hidden_size": ("hidden_size",),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_kv_heads", "n_head_kv"),  # used by the new (Falcon-40B) layout only
    "ffn_hidden_size": ("ffn_hidden_size",),
    "vocab_size": ("vocab_size",),
    "max_seq_len": ("max_position_embeddings",),
    "tie_embeddings": ("tie_word_embeddings",),
    "bias": ("bias",),
    "activation": ("activation",),
    "parallel_residual": ("parallel_attn",),
    "dropout": ("hidden_dropout",),
    "norm_eps": ("layer_norm_epsilon",),
    "_alibi": ("alibi",),
    "_multi_query": ("multi_query",),
    "_new_arch": ("new_decoder_architecture",),
    **ROPE,
}
_FALCON_DEFAULTS = {
    "max_seq_len": 2048,
    "tie_embeddings": True,
    "bias": False,
    "activation": "gelu",
    "parallel_residual": True,
    "dropout": 0.0,
    "_alibi": False,
    "_multi_query": True,
    "_new_arch": False,
}

FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA, _BASE, _ROPE_RMS, _UNTIED),
    "mistral": Family({**_LLAMA, **_WINDOW}, _BASE, _ROPE_RMS, _UNTIED),
    "mixtral": Family(
        {
            **_LLAMA,
            **_WINDOW,
            "moe.num_experts": ("num_local_experts",),
            "moe.top_k": ("num_experts_per_tok",),
            "moe.expert_ffn_hidden_size": ("intermediate_size",),
        },
        _BASE + _MOE,
        _ROPE_RMS,
        _UNTIED,
        moe_rule="all",
    ),
    "qwen2": Family(_QWEN, _BASE, _ROPE_RMS, _UNTIED),  # Q/K/V bias only: not modelled
    "qwen3": Family(_QWEN, _BASE, {**_ROPE_RMS, "qk_norm": True}, _UNTIED),
    "qwen2_moe": Family(
        {**_QWEN_MOE, "moe.shared_expert_ffn_hidden_size": ("shared_expert_intermediate_size",)},
        _BASE + _MOE + ("moe.shared_expert_ffn_hidden_size",),
        {**_ROPE_RMS, "moe.num_shared_experts": 1},  # Qwen2-MoE always has one shared expert
        _QWEN_MOE_DEFAULTS,
        moe_rule="qwen",
    ),
    "qwen3_moe": Family(_QWEN_MOE, _BASE + _MOE, {**_ROPE_RMS, "qk_norm": True}, _QWEN_MOE_DEFAULTS, moe_rule="qwen"),
    "deepseek_v2": Family(_DEEPSEEK, _DEEPSEEK_REQUIRED, _ROPE_RMS, _DSV2_DEFAULTS, moe_rule="deepseek"),
    "deepseek_v3": Family(_DEEPSEEK, _DEEPSEEK_REQUIRED, _ROPE_RMS, _DSV3_DEFAULTS, moe_rule="deepseek"),
    "gpt_oss": Family(
        {
            **_LLAMA,
            **_WINDOW,
            "moe.num_experts": ("num_local_experts", "num_experts"),
            "moe.top_k": ("experts_per_token", "num_experts_per_tok"),
            "moe.expert_ffn_hidden_size": ("intermediate_size",),
        },
        _BASE + _MOE,
        {**_ROPE_RMS, "_full_every": 2},  # sliding and full layers alternate (layer_types says so too)
        _UNTIED,
        moe_rule="all",
    ),
    "granitemoe": Family(_GRANITE_MOE, _BASE + _MOE, _ROPE_RMS, _UNTIED, moe_rule="all"),
    "granitemoeshared": Family(
        {**_GRANITE_MOE, "moe.shared_expert_ffn_hidden_size": ("shared_intermediate_size",)},
        _BASE + _MOE,
        {**_ROPE_RMS, "moe.num_shared_experts": 1},  # shared_intermediate_size 0 = none
        _UNTIED,
        moe_rule="all",
    ),
    "gemma": Family(_GEMMA, _BASE, _ROPE_RMS, _GEMMA_DEFAULTS),
    "gemma2": Family(
        {**_GEMMA, "sliding_window": ("sliding_window", "sliding_window_size"), "_layer_types": ("layer_types",)},
        _BASE,
        {**_ROPE_RMS, "_full_every": 2},  # Gemma2DecoderLayer: even layers slide, odd ones attend fully
        _GEMMA_DEFAULTS,
    ),
    "gemma3_text": Family(
        {**_GEMMA, **_WINDOW, "_full_every": ("sliding_window_pattern", "_sliding_window_pattern")},
        ("num_layers", "hidden_size", "ffn_hidden_size"),
        {**_ROPE_RMS, "qk_norm": True},
        _GEMMA3_DEFAULTS,
    ),
    "gemma3": Family({}, (), text_config="gemma3_text"),  # vision tower and projector not modelled
    "phi3": Family(
        {**_LLAMA, **_WINDOW, "dropout": ("resid_pdrop",), "_rope_original_max": ("original_max_position_embeddings",)},
        _BASE,
        _ROPE_RMS,
        _UNTIED,
    ),
    "olmo2": Family(_LLAMA, _BASE, {**_ROPE_RMS, "qk_norm": True}, _UNTIED),
    "starcoder2": Family(
        {**_LLAMA, **_WINDOW, "bias": ("use_bias",), "norm_eps": ("norm_epsilon",), "dropout": ("residual_dropout",)},
        _BASE,
        {"norm": "layernorm", "position": "rope"},
        {"tie_embeddings": True, "bias": True, "activation": "gelu_pytorch_tanh", "dropout": 0.0},
        gated=False,
    ),
    "falcon": Family(
        _FALCON, _NO_FFN, {"norm": "layernorm", "position": "rope"}, _FALCON_DEFAULTS, gated=False, ffn_ratio=4
    ),
    "bloom": Family(
        {
            "num_layers": ("n_layer", "num_hidden_layers"),
            "hidden_size": ("n_embed", "hidden_size"),  # BloomConfig: n_embed, when given, wins
            "num_heads": ("n_head", "num_attention_heads"),
            "vocab_size": ("vocab_size",),
            "max_seq_len": ("seq_length",),
            "tie_embeddings": ("tie_word_embeddings",),
            "dropout": ("hidden_dropout",),
            "norm_eps": ("layer_norm_epsilon",),
        },
        _NO_FFN,
        # BloomMLP is always 4 x hidden (n_inner is ignored); BloomGelu is the tanh GELU.
        {**_LAYERNORM, "position": "alibi", "activation": "gelu"},
        # BLOOM trained on 2048-token sequences (Le Scao et al. 2022, section 3.5); ALiBi has no table.
        {"max_seq_len": 2048, "tie_embeddings": True, "dropout": 0.0},
        gated=False,
        ffn_ratio=4,
    ),
    "mpt": Family(
        {
            "num_layers": ("n_layers",),
            "hidden_size": ("d_model",),
            "num_heads": ("n_heads",),
            "vocab_size": ("vocab_size",),
            "max_seq_len": ("max_seq_len",),
            "tie_embeddings": ("tie_word_embeddings",),
            "dropout": ("resid_pdrop",),
            "norm_eps": ("layer_norm_epsilon",),
            "_ffn_ratio": ("expansion_ratio",),
            "_no_bias": ("no_bias",),
            "_alibi": ("attn_config.alibi",),
        },
        ("num_layers", "hidden_size", "num_heads", "vocab_size"),
        {"norm": "layernorm", "position": "alibi", "activation": "gelu"},  # MptMLP: exact GELU
        {
            "max_seq_len": 2048,
            "tie_embeddings": True,
            "dropout": 0.0,
            "_ffn_ratio": 4,
            "_no_bias": True,
            "_alibi": True,
        },
        gated=False,
    ),
    "nemotron": Family(
        {**_LLAMA, "head_dim": ("head_dim", "kv_channels"), "norm_eps": ("norm_eps",)},
        _BASE,
        {"norm": "layernorm", "position": "rope"},  # layernorm1p is a LayerNorm
        {**_UNTIED, "activation": "relu2"},
        gated=False,
    ),
    "gpt2": Family(
        _GPT2,
        _NO_FFN,
        {**_LAYERNORM, "position": "learned"},
        {"tie_embeddings": True, "activation": "gelu_new", "dropout": 0.1},
        gated=False,
        ffn_ratio=4,
    ),
    "gptj": Family(
        _GPT2,
        _NO_FFN,
        # attention projections have no bias, the FFN's do; bias counts the FFN's
        {**_LAYERNORM, "position": "rope", "parallel_residual": True},
        {"tie_embeddings": False, "activation": "gelu_new", "dropout": 0.0},
        gated=False,
        ffn_ratio=4,
    ),
    "gpt_neox": Family(
        {
            **_SIZES,
            "tie_embeddings": ("tie_word_embeddings",),
            "activation": ("hidden_act",),
            "parallel_residual": ("use_parallel_residual",),
            "dropout": ("hidden_dropout",),
            "norm_eps": ("layer_norm_eps",),
            "rope_theta": ("rotary_emb_base", *ROPE["rope_theta"]),
            "_rope_scaling": ROPE["_rope_scaling"],
        },
        _BASE,
        {**_LAYERNORM, "position": "rope"},
        {"tie_embeddings": False, "activation": "gelu", "parallel_residual": True, "dropout": 0.0},
        gated=False,
    ),
    "opt": Family(
        {
            **_SIZES,
            "ffn_hidden_size": ("ffn_dim",),
            "tie_embeddings": ("tie_word_embeddings",),
            "bias": ("enable_bias",),
            "activation": ("activation_function",),
            "dropout": ("dropout",),
            "_word_embed_proj_dim": ("word_embed_proj_dim",),
        },
        _BASE,
        {"norm": "layernorm", "position": "learned"},
        {"tie_embeddings": True, "bias": True, "activation": "relu", "dropout": 0.1},
        gated=False,
    ),
    "bert": Family(
        {
            **_SIZES,
            "activation": ("hidden_act",),
            "tie_embeddings": ("tie_word_embeddings",),
            "dropout": ("hidden_dropout_prob",),
            "norm_eps": ("layer_norm_eps",),
            "_position_embedding_type": ("position_embedding_type",),
        },  # type_vocab_size (segment embeddings, 2 rows) is ignored
        _BASE,
        {**_LAYERNORM, "position": "learned", "attention_mask": "bidirectional"},
        {"tie_embeddings": True, "activation": "gelu", "dropout": 0.1, "_position_embedding_type": "absolute"},
        gated=False,
    ),
}

# Activation spellings -> our activation, for gated (GLU) and plain FFNs.
GATED_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu"}
PLAIN_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "quick_gelu": "gelu",
    "relu": "relu",
    "relu2": "relu2",
}
# rope_scaling / rope_parameters "rope_type" (or "type") -> ours; "su" is Phi-3's early longrope name.
ROPE_TYPES = {
    "linear": "linear",
    "dynamic": "dynamic",
    "yarn": "yarn",
    "longrope": "longrope",
    "su": "longrope",
    "llama3": "llama3",
}
# rope scaling keys -> RopeScalingSpec fields (long_factor/short_factor lists are not kept).
ROPE_SCALING_KEYS = {
    "factor": "factor",
    "original_max_position_embeddings": "original_max_seq_len",
    "low_freq_factor": "low_freq_factor",
    "high_freq_factor": "high_freq_factor",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "mscale": "mscale",
    "mscale_all_dim": "mscale_all_dim",
}
