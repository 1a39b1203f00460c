"""What an import of a Hugging Face ``config.json`` read, defaulted and ignored.

:func:`models.hf_import.from_hf_config` maps a config through its family's alias table
(:data:`models.hf_families.FAMILIES`). This module replays the same lookup rule on the same table
to say, key by key, where each spec field came from:

- ``read``: HF key -> spec field(s) (joined by " & "), for the first listed key that is present and not null (the
  key ``from_hf_config`` takes); a key present as ``null`` counts as read (the config said null).
  A dotted alias (``rope_parameters.rope_theta``) is reported under its top-level key;
- ``defaulted``: HF keys absent from the config for which the family's table documents a
  transformers default (``hidden_act`` absent -> ``silu``), with the value used;
- ``absent``: HF keys the table knows that the config lacks and that have no default, so the
  spec's own default applies (``num_key_value_heads`` absent -> MHA);
- ``fixed``: what the architecture fixes and no config states (``norm: rmsnorm`` for Llama);
- ``ignored``: every other config key (``initializer_range``, ``torch_dtype``, ...), and alternative
  keys shadowed by an earlier one (``mlp_bias`` when ``attention_bias`` is given).

A multimodal wrapper (``gemma3``) reports its ``text_config`` keys as ``text_config.KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.hf_import import ABSENT, FAMILIES, Family, config_value, family_of, text_model_config

# Keys every config carries that the importer uses for the family and the name, not a field.
_META = {"model_type": "family", "_name_or_path": "name"}
# The alias table's internal inputs (``_*``), named by what they decide.
_RULE_INPUTS = {
    "_first_k_dense": "moe.first_k_dense",
    "_moe_layer_freq": "moe.layer_freq",
    "_sparse_step": "MoE layer selection",
    "_mlp_only_layers": "MoE layer selection",
    "_use_sliding_window": "sliding_window on/off",
    "_layer_types": "sliding_window layers",
    "_full_every": "full_attention_every",
    "_word_embed_proj_dim": "checked == hidden_size",
    "_position_embedding_type": "checked == absolute",
    "_rope_scaling": "rope_scaling",
    "_rope_original_max": "rope_scaling.original_max_seq_len",
    "_topk_method": "moe.router_expert_bias & groups on/off",
    "_n_group": "moe.router_num_groups",
    "_topk_group": "moe.router_group_topk",
    "_alibi": "position (alibi)",
    "_no_bias": "bias (not no_bias)",
    "_multi_query": "num_kv_heads (multi-query: 1)",
    "_new_arch": "num_kv_heads & parallel_residual (Falcon layout)",
    "_ffn_ratio": "ffn_hidden_size (ratio x hidden_size)",
}


@dataclass(frozen=True)
class ImportReport:
    """Provenance of every spec field of one imported config (see the module docstring)."""

    model_type: str
    read: dict[str, str]
    defaulted: dict[str, object]
    absent: dict[str, str]
    fixed: dict[str, object]
    ignored: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "read": self.read,
            "defaulted": self.defaulted,
            "absent": self.absent,
            "fixed": self.fixed,
            "ignored": list(self.ignored),
        }


def import_report(cfg: Mapping[str, Any]) -> ImportReport:
    """Replay the family's alias lookup on ``cfg``; SpecError for an unknown ``model_type``."""
    model_type, family = family_of(cfg)
    if family.text_config is not None:
        inner = _family_report(text_model_config(cfg, family, "config.json"), FAMILIES[family.text_config])
        read = {k: v for k, v in _META.items() if k in cfg}
        read["text_config"] = f"the text model ({family.text_config})"
        ignored = tuple(sorted(k for k in cfg if k not in read))
        return ImportReport(
            model_type,
            {**read, **{f"text_config.{k}": v for k, v in inner.read.items() if k != "model_type"}},
            {f"text_config.{k}": v for k, v in inner.defaulted.items()},
            {f"text_config.{k}": v for k, v in inner.absent.items()},
            inner.fixed,
            ignored + tuple(f"text_config.{k}" for k in inner.ignored),
        )
    return _family_report(cfg, family)


def _family_report(cfg: Mapping[str, Any], family: Family) -> ImportReport:
    read: dict[str, str] = {k: v for k, v in _META.items() if k in cfg}
    defaulted: dict[str, object] = {}
    absent: dict[str, str] = {}
    for field, keys in family.keys.items():
        if field in family.facts:
            continue  # the architecture fixes it; a config key cannot change it
        hit = next((k for k in keys if config_value(cfg, k) not in (ABSENT, None)), None)
        hit = hit or next((k for k in keys if config_value(cfg, k) is not ABSENT), None)  # present as null
        target = _RULE_INPUTS.get(field, field)
        if hit is not None and config_value(cfg, hit) is not None:  # one key may feed several fields
            top = hit.split(".", 1)[0]  # rope_parameters.rope_theta -> rope_parameters
            read[top] = f"{read[top]} & {target}" if top in read else target
        elif field == "ffn_hidden_size" and family.ffn_ratio:
            # GPT2Config/GPTJConfig document n_inner None as 4 * n_embd; FalconConfig likewise.
            hidden_key = next((k for k in family.keys["hidden_size"] if k in cfg), family.keys["hidden_size"][0])
            value = f" = {family.ffn_ratio * cfg[hidden_key]}" if hidden_key in cfg else ""
            defaulted[" or ".join(keys)] = f"{family.ffn_ratio} * {hidden_key}{value}"
        elif hit is not None:
            read[hit.split(".", 1)[0]] = target  # present as null: the config chose null
        elif field in family.defaults:
            defaulted[" or ".join(keys)] = family.defaults[field]
        else:
            absent[" or ".join(keys)] = target
    fixed = {_RULE_INPUTS.get(k, k): v for k, v in family.facts.items()}
    if "ffn_hidden_size" not in family.keys and family.ffn_ratio:
        fixed["ffn_hidden_size"] = f"{family.ffn_ratio} * hidden_size"  # BloomMLP
    ignored = tuple(sorted(k for k in cfg if k not in read and k not in defaulted))
    return ImportReport(str(cfg.get("model_type")), read, defaulted, absent, fixed, ignored)
