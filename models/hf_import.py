"""Hugging Face ``config.json`` -> :class:`ModelSpec`, through an explicit alias table.

Every supported family (the config's ``model_type``) declares, in :data:`FAMILIES`:

- ``keys``: for each spec field, the HF keys tried in order; the first one present and not null
  wins (``moe.*`` / ``mla.*`` are nested fields, ``_*`` are inputs read by a rule below);
- ``required``: the fields a config must give; when absent the error names their HF keys;
- ``defaults``: the value transformers documents for an optional key the config leaves out;
- ``facts``: what the architecture fixes and the config never states (norm, position, ...);
- ``gated``: whether ``hidden_act`` names the gate of a GLU FFN (silu -> swiglu);
- ``moe_rule``: how the family picks its MoE layers (every layer, Qwen's step, DeepSeek's k).

Sizes are never inferred from ratios. The single derived default is GPT-2/GPT-J's
``n_inner: null`` meaning 4 * n_embd, which both transformers configs document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from models.errors import SpecError, format_validation_error
from models.spec import ModelSpec

Keys = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    keys: Keys
    required: tuple[str, ...]
    facts: Mapping[str, object] = field(default_factory=dict)
    defaults: Mapping[str, object] = field(default_factory=dict)
    gated: bool = True
    moe_rule: str | None = None  # None = dense; "all", "qwen" or "deepseek"


# --- the alias table ---------------------------------------------------------------------------
_BASE = ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size", "max_seq_len")
_MOE = ("moe.num_experts", "moe.top_k", "moe.expert_ffn_hidden_size")
_MLA = ("mla.kv_lora_rank", "mla.qk_nope_head_dim", "mla.qk_rope_head_dim", "mla.v_head_dim")

# Llama and every decoder that copied its config layout (Mistral, Qwen, DeepSeek, gpt-oss, ...).
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
}
_ROPE_RMS = {"norm": "rmsnorm", "position": "rope"}
_UNTIED = {"tie_embeddings": False, "bias": False, "activation": "silu"}
# Qwen configs carry sliding_window even when use_sliding_window is false; the flag decides.
_QWEN: Keys = {**_LLAMA, "sliding_window": ("sliding_window",), "_use_sliding_window": ("use_sliding_window",)}
_QWEN_MOE: Keys = {
    **_QWEN,
    "moe.num_experts": ("num_experts",),
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
    "_first_k_dense": ("first_k_dense_replace",),
    "_moe_layer_freq": ("moe_layer_freq",),
    "mla.q_lora_rank": ("q_lora_rank",),  # null = full-rank Q (DeepSeek-V2-Lite)
    "mla.kv_lora_rank": ("kv_lora_rank",),
    "mla.qk_nope_head_dim": ("qk_nope_head_dim",),
    "mla.qk_rope_head_dim": ("qk_rope_head_dim",),
    "mla.v_head_dim": ("v_head_dim",),
}
_DEEPSEEK_REQUIRED = _BASE + _MOE + _MLA + ("moe.num_shared_experts", "_first_k_dense")
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
}
_GPT2_REQUIRED = tuple(f for f in _BASE if f != "ffn_hidden_size")  # n_inner may be null
_LAYERNORM = {"norm": "layernorm", "bias": True}

FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA, _BASE, _ROPE_RMS, _UNTIED),
    "mistral": Family({**_LLAMA, "sliding_window": ("sliding_window",)}, _BASE, _ROPE_RMS, _UNTIED),
    "mixtral": Family(
        {
            **_LLAMA,
            "sliding_window": ("sliding_window",),
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
    "qwen3": Family(_QWEN, _BASE, _ROPE_RMS, _UNTIED),
    "qwen2_moe": Family(
        {**_QWEN_MOE, "moe.shared_expert_ffn_hidden_size": ("shared_expert_intermediate_size",)},
        _BASE + _MOE + ("moe.shared_expert_ffn_hidden_size",),
        {**_ROPE_RMS, "moe.num_shared_experts": 1},  # Qwen2-MoE always has one shared expert
        _QWEN_MOE_DEFAULTS,
        moe_rule="qwen",
    ),
    "qwen3_moe": Family(_QWEN_MOE, _BASE + _MOE, _ROPE_RMS, _QWEN_MOE_DEFAULTS, moe_rule="qwen"),
    "deepseek_v2": Family(
        _DEEPSEEK, _DEEPSEEK_REQUIRED, _ROPE_RMS, {**_UNTIED, "_moe_layer_freq": 1}, moe_rule="deepseek"
    ),
    "deepseek_v3": Family(
        _DEEPSEEK, _DEEPSEEK_REQUIRED, _ROPE_RMS, {**_UNTIED, "_moe_layer_freq": 1}, moe_rule="deepseek"
    ),
    "gpt_oss": Family(
        {
            **_LLAMA,
            "sliding_window": ("sliding_window",),  # on every other layer in gpt-oss; see docs
            "moe.num_experts": ("num_local_experts", "num_experts"),
            "moe.top_k": ("experts_per_token", "num_experts_per_tok"),
            "moe.expert_ffn_hidden_size": ("intermediate_size",),
        },
        _BASE + _MOE,
        _ROPE_RMS,
        _UNTIED,
        moe_rule="all",
    ),
    "nemotron": Family(
        {**_LLAMA, "head_dim": ("head_dim", "kv_channels")},
        _BASE,
        {"norm": "layernorm", "position": "rope"},  # layernorm1p is a LayerNorm
        {**_UNTIED, "activation": "relu2"},
        gated=False,
    ),
    "gpt2": Family(
        _GPT2,
        _GPT2_REQUIRED,
        {**_LAYERNORM, "position": "learned"},
        {"tie_embeddings": True, "activation": "gelu_new", "dropout": 0.1},
        gated=False,
    ),
    "gptj": Family(
        _GPT2,
        _GPT2_REQUIRED,
        # attention projections have no bias, the FFN's do; bias counts the FFN's
        {**_LAYERNORM, "position": "rope", "parallel_residual": True},
        {"tie_embeddings": False, "activation": "gelu_new", "dropout": 0.0},
        gated=False,
    ),
    "gpt_neox": Family(
        {
            **{k: _LLAMA[k] for k in _BASE},
            "tie_embeddings": ("tie_word_embeddings",),
            "activation": ("hidden_act",),
            "parallel_residual": ("use_parallel_residual",),
            "dropout": ("hidden_dropout",),
        },
        _BASE,
        {**_LAYERNORM, "position": "rope"},
        {"tie_embeddings": False, "activation": "gelu", "parallel_residual": True, "dropout": 0.0},
        gated=False,
    ),
    "opt": Family(
        {
            **{k: _LLAMA[k] for k in _BASE},
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
            **{k: _LLAMA[k] for k in _BASE},
            "activation": ("hidden_act",),
            "tie_embeddings": ("tie_word_embeddings",),
            "dropout": ("hidden_dropout_prob",),
            "_position_embedding_type": ("position_embedding_type",),
        },  # type_vocab_size (segment embeddings, 2 rows) is ignored
        _BASE,
        {**_LAYERNORM, "position": "learned", "attention_mask": "bidirectional"},
        {"tie_embeddings": True, "activation": "gelu", "dropout": 0.1, "_position_embedding_type": "absolute"},
        gated=False,
    ),
}

# hidden_act spellings -> our activation, for gated (GLU) and plain FFNs.
_GATED_ACTS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu"}
_PLAIN_ACTS = {
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "quick_gelu": "gelu",
    "relu": "relu",
    "relu2": "relu2",
}


# --- mapping -----------------------------------------------------------------------------------
def from_hf_config(cfg: Mapping[str, Any], name: str | None = None, *, origin: str = "config.json") -> ModelSpec:
    """Map a Hugging Face config dict to a validated :class:`ModelSpec`.

    ``origin`` names the file in error messages and in ``source``.
    """
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        got = f"'{model_type}'" if model_type is not None else "(no model_type key)"
        raise SpecError(f"unknown {origin} family {got}; supported: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    what = f"{origin} (model_type '{model_type}')"
    values = _lookup(cfg, family)
    missing = [" or ".join(family.keys[f]) for f in family.required if values.get(f) is None]
    if missing:
        raise SpecError(f"{what}: missing keys: {', '.join(missing)}")
    _check_representable(values, what)
    spec = _build(values, family, what)
    spec["name"] = name or _default_name(cfg, model_type)
    path = cfg.get("_name_or_path")
    spec["source"] = f"Hugging Face {origin} (model_type '{model_type}'" + (f", {path})" if path else ")")
    try:
        return ModelSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"model spec from {what}")) from None


def _lookup(cfg: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """Our field -> the first present, non-null HF key's value, else the documented default."""
    values: dict[str, Any] = {}
    for ours, theirs in family.keys.items():
        found = next((cfg[k] for k in theirs if cfg.get(k) is not None), None)
        values[ours] = found if found is not None else family.defaults.get(ours)
    if family.keys["ffn_hidden_size"] == ("n_inner",) and values["ffn_hidden_size"] is None:
        values["ffn_hidden_size"] = 4 * values["hidden_size"]  # GPT2Config/GPTJConfig: n_inner None = 4 * n_embd
    return values


def _check_representable(values: Mapping[str, Any], what: str) -> None:
    """Refuse configs whose architecture the spec cannot describe, rather than mis-size them."""
    proj = values.get("_word_embed_proj_dim")
    if proj is not None and proj != values["hidden_size"]:
        raise SpecError(
            f"{what}: word_embed_proj_dim ({proj}) != hidden_size ({values['hidden_size']}): "
            "OPT's embedding projections are not representable"
        )
    pos = values.get("_position_embedding_type")
    if pos is not None and pos != "absolute":
        raise SpecError(f"{what}: position_embedding_type '{pos}' is not representable (only 'absolute')")


def _build(values: Mapping[str, Any], family: Family, what: str) -> dict[str, Any]:
    """Assemble the spec dict: mapped top-level fields, then facts, activation, MoE, MLA."""
    spec: dict[str, Any] = {k: v for k, v in values.items() if "." not in k and not k.startswith("_") and v is not None}
    spec.update({k: v for k, v in family.facts.items() if "." not in k})
    act = str(values["activation"])
    table = _GATED_ACTS if family.gated else _PLAIN_ACTS
    if act not in table:
        raise SpecError(f"{what}: activation '{act}' is not supported; known: {', '.join(sorted(table))}")
    spec["activation"] = table[act]
    if "_use_sliding_window" in values and values["_use_sliding_window"] is not True:
        spec.pop("sliding_window", None)
    if family.moe_rule is not None:
        moe = _moe(values, family, what)
        if moe is not None:
            spec["moe"] = moe
    mla = {k[4:]: v for k, v in values.items() if k.startswith("mla.") and v is not None}
    if mla:
        spec["mla"] = mla
    return spec


def _moe(values: Mapping[str, Any], family: Family, what: str) -> dict[str, Any] | None:
    """The ``moe`` section, or None when the family's rule selects no MoE layer."""
    n = values["num_layers"]
    if family.moe_rule == "qwen":
        # Qwen2MoeDecoderLayer: sparse iff idx not in mlp_only_layers and (idx + 1) % step == 0
        step, dense = values["_sparse_step"], set(values["_mlp_only_layers"])
        layers = [i for i in range(n) if i not in dense and (i + 1) % step == 0]
    elif family.moe_rule == "deepseek":
        # modeling_deepseek.py: MoE iff idx >= first_k_dense_replace and idx % moe_layer_freq == 0
        k, freq = values["_first_k_dense"], values["_moe_layer_freq"]
        layers = [i for i in range(n) if i >= k and i % freq == 0]
    else:
        layers = list(range(n))
    if not layers:
        return None
    first_k, freq = _fit_layer_pattern(layers, n, what)
    moe = {k[4:]: v for k, v in values.items() if k.startswith("moe.") and v is not None}
    moe.update({k[4:]: v for k, v in family.facts.items() if k.startswith("moe.")})
    if first_k:
        moe["first_k_dense"] = first_k
    if freq != 1:
        moe["layer_freq"] = freq
    return moe


def _fit_layer_pattern(layers: list[int], num_layers: int, what: str) -> tuple[int, int]:
    """(first_k_dense, layer_freq) selecting exactly ``layers`` (sorted), or SpecError.

    The spec's rule: block i is MoE iff i >= first_k_dense and (i - first_k_dense) % layer_freq == 0.
    """
    first = layers[0]
    freq = layers[1] - first if len(layers) > 1 else max(1, num_layers - first)
    if [i for i in range(first, num_layers) if (i - first) % freq == 0] != layers:
        raise SpecError(
            f"{what}: MoE layers {layers} are not representable as first_k_dense + every layer_freq-th layer"
        )
    return first, freq


def _default_name(cfg: Mapping[str, Any], model_type: str) -> str:
    """Basename of ``_name_or_path`` lowercased (meta-llama/Meta-Llama-3-8B -> meta-llama-3-8b)."""
    path = str(cfg.get("_name_or_path") or "").rstrip("/\\")
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base.lower() if base else model_type
