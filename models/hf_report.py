"""What an import of a Hugging Face ``config.json`` read, defaulted and ignored.

:func:`models.hf_import.from_hf_config` maps a config through its family's alias table
(:data:`models.hf_import.FAMILIES`). This module replays the same lookup rule on the same table to
say, key by key, where each spec field came from:

- ``read``: HF key -> spec field(s) (joined by " & "), for the first listed key that is present and not null (the
  key ``from_hf_config`` takes); a key present as ``null`` counts as read (the config said null);
- ``defaulted``: HF keys absent from the config for which the family's table documents a
  transformers default (``hidden_act`` absent -> ``silu``), with the value used;
- ``absent``: HF keys the table knows that the config lacks and that have no default, so the
  spec's own default applies (``num_key_value_heads`` absent -> MHA);
- ``fixed``: what the architecture fixes and no config states (``norm: rmsnorm`` for Llama);
- ``ignored``: every other config key (``rope_theta``, ``torch_dtype``, ...), and alternative
  keys shadowed by an earlier one (``mlp_bias`` when ``attention_bias`` is given).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import SpecError
from models.hf_import import FAMILIES

# Keys every config carries that the importer uses for the family and the name, not a field.
_META = {"model_type": "family", "_name_or_path": "name"}
# The alias table's internal inputs (``_*``), named by what they decide.
_RULE_INPUTS = {
    "_first_k_dense": "moe.first_k_dense",
    "_moe_layer_freq": "moe.layer_freq",
    "_sparse_step": "MoE layer selection",
    "_mlp_only_layers": "MoE layer selection",
    "_use_sliding_window": "sliding_window on/off",
    "_word_embed_proj_dim": "checked == hidden_size",
    "_position_embedding_type": "checked == absolute",
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
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise SpecError(f"unknown config.json family {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    read: dict[str, str] = {k: v for k, v in _META.items() if k in cfg}
    defaulted: dict[str, object] = {}
    absent: dict[str, str] = {}
    for field, keys in family.keys.items():
        hit = next((k for k in keys if cfg.get(k) is not None), None)
        hit = hit or next((k for k in keys if k in cfg), None)  # present as null: the config chose null
        if keys == ("n_inner",) and cfg.get("n_inner") is None:
            # GPT2Config/GPTJConfig document n_inner None as 4 * n_embd; from_hf_config applies it.
            defaulted["n_inner"] = f"4 * n_embd = {4 * cfg['n_embd']}" if "n_embd" in cfg else "4 * n_embd"
        elif hit is not None:  # one key may feed several fields (gpt-oss: intermediate_size)
            target = _RULE_INPUTS.get(field, field)
            read[hit] = f"{read[hit]} & {target}" if hit in read else target
        elif field in family.defaults:
            defaulted[" or ".join(keys)] = family.defaults[field]
        else:
            absent[" or ".join(keys)] = _RULE_INPUTS.get(field, field)
    ignored = tuple(sorted(k for k in cfg if k not in read and k not in defaulted))
    return ImportReport(model_type, read, defaulted, absent, dict(family.facts), ignored)
