"""Hugging Face ``config.json`` -> :class:`ModelSpec`, through the alias table in
:mod:`models.hf_families` (:data:`FAMILIES`, one entry per ``model_type``).

The lookup takes, for each spec field, the first of the family's HF keys that is present and not
null, else the default transformers documents, and the facts the architecture fixes override
both. Then the rules below turn the rule inputs (``_*``) into fields: the attention layout
(Falcon's multi-query and parallel flags, ALiBi, MPT's ``no_bias``), the sliding-window pattern,
RoPE scaling, the MoE layer selection and DeepSeek's router. Sizes are never inferred from
ratios, except the FFN size a config class itself derives (``ffn_ratio``: GPT-2's ``n_inner:
null`` = 4 x n_embd; MPT's ``expansion_ratio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from models.errors import SpecError, format_validation_error
from models.hf_families import FAMILIES, GATED_ACTS, PLAIN_ACTS, ROPE_SCALING_KEYS, ROPE_TYPES, Family
from models.spec import ModelSpec

__all__ = ["FAMILIES", "Family", "config_value", "family_of", "from_hf_config", "text_model_config"]

# What to do about a config the table does not cover (appended to the unknown-family error).
UNSUPPORTED_HINT = (
    "for another architecture write a spec YAML instead: `extends:` the closest preset and set the fields "
    "that differ (docs/models.md; `autopar schema model` lists them)"
)
ABSENT = object()  # config_value's answer for a key the config does not have


def config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]``, a dotted key walking into nested mappings; :data:`ABSENT` if a step is missing."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ABSENT
        node = node[part]
    return node


def family_of(cfg: Mapping[str, Any], origin: str = "config.json") -> tuple[str, Family]:
    """The config's ``model_type`` and its family; SpecError saying what to do when unknown."""
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        got = f"'{model_type}'" if model_type is not None else "(no model_type key)"
        raise SpecError(f"unknown {origin} family {got}; supported: {', '.join(sorted(FAMILIES))}; {UNSUPPORTED_HINT}")
    return str(model_type), FAMILIES[str(model_type)]


def text_model_config(cfg: Mapping[str, Any], family: Family, origin: str) -> dict[str, Any]:
    """A multimodal wrapper's nested ``text_config``, typed as the family the wrapper names."""
    inner = cfg.get("text_config")
    if not isinstance(inner, Mapping):
        raise SpecError(f"{origin} (model_type '{cfg.get('model_type')}'): no text_config mapping to import")
    return {**inner, "model_type": family.text_config}


def from_hf_config(cfg: Mapping[str, Any], name: str | None = None, *, origin: str = "config.json") -> ModelSpec:
    """Map a Hugging Face config dict to a validated :class:`ModelSpec`.

    ``origin`` names the file in error messages and in ``source``. A value of a type the mapping
    does not expect (a dict where a name belongs, a string where a size does) is a SpecError too.
    """
    try:
        return _map_config(cfg, name, origin)
    except SpecError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError, OverflowError) as exc:
        raise SpecError(
            f"{origin}: a field has a value of the wrong type or size ({type(exc).__name__}: {exc})"
        ) from None


def _map_config(cfg: Mapping[str, Any], name: str | None, origin: str) -> ModelSpec:
    outer_type, family = family_of(cfg, origin)
    model_type, text = outer_type, cfg
    if family.text_config is not None:
        text = text_model_config(cfg, family, origin)
        model_type, family = family_of(text, origin)
    what = f"{origin} (model_type '{model_type}')"
    values = _lookup(text, family)
    missing = [" or ".join(family.keys[f]) for f in family.required if values.get(f) is None]
    if missing:
        raise SpecError(f"{what}: missing keys: {', '.join(missing)}")
    _check_representable(values, what)
    spec = _build(values, family, what)
    spec["name"] = name or _default_name(cfg, outer_type)
    path = cfg.get("_name_or_path")
    kind = f"model_type '{outer_type}'" + (f", its text model '{model_type}' only" if text is not cfg else "")
    spec["source"] = f"Hugging Face {origin} ({kind}" + (f", {path})" if path else ")")
    try:
        return ModelSpec.model_validate(spec)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"model spec from {what}")) from None


def _lookup(cfg: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """Our field -> the first present, non-null HF key's value, else the documented default;
    then the facts, and the FFN size a config class derives when the config gives none."""
    values: dict[str, Any] = {}
    for ours, theirs in family.keys.items():
        found = next((v for v in (config_value(cfg, k) for k in theirs) if v is not ABSENT and v is not None), None)
        values[ours] = found if found is not None else family.defaults.get(ours)
    values.update(family.facts)
    ratio = values.get("_ffn_ratio") or family.ffn_ratio
    if values.get("ffn_hidden_size") is None and ratio and values.get("hidden_size") is not None:
        values["ffn_hidden_size"] = ratio * values["hidden_size"]  # GPT2Config, FalconConfig, BloomMLP, MptMLP
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
    if values.get("_alibi") is False and values.get("position") == "alibi":
        raise SpecError(f"{what}: attn_config.alibi false is not representable (transformers' MPT has only ALiBi)")


def _build(values: Mapping[str, Any], family: Family, what: str) -> dict[str, Any]:
    """Assemble the spec dict: mapped fields, then activation, layout, window, RoPE, MoE, MLA."""
    spec: dict[str, Any] = {k: v for k, v in values.items() if "." not in k and not k.startswith("_") and v is not None}
    act = str(values["activation"])
    table = GATED_ACTS if family.gated else PLAIN_ACTS
    if act not in table:
        raise SpecError(f"{what}: activation '{act}' is not supported; known: {', '.join(sorted(table))}")
    spec["activation"] = table[act]
    spec.update(_layout(values))
    spec.pop("sliding_window", None)
    spec.update(_window(values, what))
    spec.pop("rope_theta", None)
    if spec["position"] == "rope":
        spec.update(_rope(values, what))
    if family.moe_rule is not None:
        moe = _moe(values, family, what)
        if moe is not None:
            spec["moe"] = moe
    mla = {k[4:]: v for k, v in values.items() if k.startswith("mla.") and v is not None}
    if mla:
        spec["mla"] = mla
    return spec


def _layout(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attention layout flags: ALiBi, MPT's no_bias, Falcon's multi-query / new decoder layout."""
    out: dict[str, Any] = {}
    if values.get("_alibi"):
        out["position"] = "alibi"
    if values.get("_no_bias") is not None:
        out["bias"] = not values["_no_bias"]
    if values.get("_new_arch") is not None:
        # FalconAttention: the new (40B) layout has num_kv_heads groups and is always parallel;
        # the old one is multi-query (one K/V head) or plain multi-head, whatever num_kv_heads says.
        if values["_new_arch"]:
            out["parallel_residual"] = True
        else:
            out["num_kv_heads"] = 1 if values["_multi_query"] else None
    return out


def _window(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``sliding_window`` and ``full_attention_every`` from the window, its on/off flag (Qwen),
    ``layer_types`` (transformers 5) or the every-n-th-layer-is-full pattern (Gemma)."""
    window = values.get("sliding_window")
    if window is None or ("_use_sliding_window" in values and values["_use_sliding_window"] is not True):
        return {}
    types = values.get("_layer_types")
    if isinstance(types, list) and types:
        full = [i for i, t in enumerate(types) if t != "sliding_attention"]
        if len(full) == len(types):
            return {}
        every = full[0] + 1 if full else None
        if every is not None and full != [i for i in range(len(types)) if (i + 1) % every == 0]:
            raise SpecError(
                f"{what}: layer_types puts full attention on layers {full}, not every n-th layer; write a spec "
                "YAML with sliding_window and full_attention_every that approximates it"
            )
    else:
        every = values.get("_full_every")
        if every == 1:  # Gemma 3: (i + 1) % 1 == 0 on every layer, so none slides
            return {}
    return {"sliding_window": window, "full_attention_every": every}


def _rope(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``rope_theta`` and ``rope_scaling`` from transformers 4's rope_theta / rope_scaling or 5's
    rope_parameters (whose rope_type "default" means no scaling)."""
    out: dict[str, Any] = {}
    if values.get("rope_theta") is not None:
        out["rope_theta"] = float(values["rope_theta"])
    raw = values.get("_rope_scaling")
    kind = raw.get("rope_type", raw.get("type", "default")) if isinstance(raw, Mapping) else "default"
    if kind == "default" or not isinstance(raw, Mapping):
        return out
    if kind not in ROPE_TYPES:
        raise SpecError(f"{what}: rope scaling type '{kind}' is not supported; known: {', '.join(sorted(ROPE_TYPES))}")
    scaling: dict[str, Any] = {"type": ROPE_TYPES[kind]}
    for theirs, ours in ROPE_SCALING_KEYS.items():
        if raw.get(theirs) is not None:
            scaling[ours] = int(raw[theirs]) if ours == "original_max_seq_len" else float(raw[theirs])
    if "original_max_seq_len" not in scaling and values.get("_rope_original_max") is not None:
        scaling["original_max_seq_len"] = values["_rope_original_max"]  # Phi-3 keeps it at the top level
    out["rope_scaling"] = scaling
    return out


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
    if first_k:
        moe["first_k_dense"] = first_k
    if freq != 1:
        moe["layer_freq"] = freq
    if moe.get("shared_expert_ffn_hidden_size") == 0:  # GraniteMoeShared: shared_intermediate_size 0 = none
        del moe["shared_expert_ffn_hidden_size"], moe["num_shared_experts"]
    if family.moe_rule == "deepseek":
        moe.update(_deepseek_router(values))
    if moe.get("router_topk_scaling_factor") == 1:
        del moe["router_topk_scaling_factor"]
    return moe


def _deepseek_router(values: Mapping[str, Any]) -> dict[str, Any]:
    """DeepSeek MoEGate: noaux_tc adds the per-expert selection bias (DeepSeek-V3 section 2.1.2);
    group_limited_greedy and noaux_tc pick top-k groups first when n_group > 1."""
    method, groups, group_topk = values["_topk_method"], values.get("_n_group"), values.get("_topk_group")
    out: dict[str, Any] = {"router_expert_bias": method == "noaux_tc"}
    if method in ("group_limited_greedy", "noaux_tc") and groups and groups > 1 and group_topk:
        out.update(router_num_groups=groups, router_group_topk=group_topk)
    return out


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
