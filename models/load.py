"""Resolve a ``--model`` argument into a validated :class:`ModelSpec`.

The argument is, in the order tried:

1. a preset name (``models/presets/<name>.yaml``), so a local folder called ``debug`` never
   shadows the ``debug`` preset;
2. an existing path: a directory holding ``config.json``, a Hugging Face ``config.json``
   (recognised by its keys, mapped by :mod:`models.hf_import`), or a spec file (.yaml/.yml/
   .json/.toml) that may name a preset in ``extends:`` and override only some fields;
3. anything else is an unknown preset (nearest names suggested) or a missing file.

Precedence: ``overrides`` (dotted paths such as ``moe.top_k``) > file > preset > schema
defaults. Nested sections (``moe:``, ``mla:``) merge key by key; ``moe: null`` removes one.
Every failure is a one-line :class:`SpecError`.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.errors import SpecError, format_validation_error
from models.files import SPEC_SUFFIXES, read_spec_mapping
from models.hf_import import from_hf_config
from models.spec import ModelSpec

PRESETS_DIR = Path(__file__).parent / "presets"
# Keys every transformers config.json has one of and a ModelSpec never has.
HF_MARKERS = ("model_type", "architectures", "num_hidden_layers", "n_layer", "transformers_version")


def list_presets() -> list[str]:
    """Names of the bundled model presets, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of preset ``name`` (case-insensitive); unknown names suggest the nearest ones."""
    path = PRESETS_DIR / f"{name.lower()}.yaml"
    if path.is_file():
        return path
    known = list_presets()
    near = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    hint = f"did you mean: {', '.join(near)}?" if near else f"known presets: {', '.join(known)}"
    raise SpecError(f"unknown model preset '{name}'; {hint} (or give a spec file / config.json path)")


def load_model(arg: str, overrides: Mapping[str, object] | None = None) -> ModelSpec:
    """Load a preset, spec file or Hugging Face config, apply ``overrides``, validate."""
    data, what = _load_data(arg)
    if overrides:
        data = apply_overrides(data, overrides)
        what += " with overrides"
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"model spec {what}")) from None


def _load_data(arg: str) -> tuple[dict[str, Any], str]:
    """The unvalidated spec dict for ``arg`` and how to name it in errors."""
    if (PRESETS_DIR / f"{arg.lower()}.yaml").is_file():
        return _resolve_extends(_read_file(preset_path(arg)), seen={arg.lower()}), arg
    path = Path(arg).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise SpecError(f"model directory {arg} has no config.json")
        return _from_hf(config, default_name=hf_default_name(config)), str(config)
    if path.is_file():
        return _from_spec_file(path), str(path)
    if path.suffix.lower() in SPEC_SUFFIXES or "/" in arg or "\\" in arg:
        raise SpecError(f"model spec file not found: {arg}")
    return _resolve_extends(_read_file(preset_path(arg)), seen={arg.lower()}), arg


def _from_spec_file(path: Path) -> dict[str, Any]:
    """A user file: a config.json goes to hf_import; a spec file may extend a preset."""
    data = _read_file(path)
    if path.suffix.lower() == ".json" and any(k in data for k in HF_MARKERS):
        return _from_hf(path, data=data, default_name=hf_default_name(path))
    base = data.get("extends")
    # A file that does not name itself is named after its file (llama3-8b-short.yaml -> llama3-8b-short),
    # so a modified preset is never reported under the preset's name.
    data.setdefault("name", path.stem.lower())
    data.setdefault("source", f"{path} (extends {base})" if base else str(path))
    return _resolve_extends(data, seen=set())


def hf_default_name(config: Path) -> str:
    """The name of a config.json that does not name itself (no ``_name_or_path``): the directory
    holding it, whether the user gave the directory or the file (``dir`` and ``dir/config.json``
    are one model)."""
    return config.resolve().parent.name.lower()


def _from_hf(path: Path, data: dict[str, Any] | None = None, default_name: str | None = None) -> dict[str, Any]:
    cfg = data if data is not None else _read_file(path)
    name = None if cfg.get("_name_or_path") else default_name
    return from_hf_config(cfg, name, origin=str(path)).model_dump()


def _resolve_extends(data: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    """Merge ``data`` over the preset it ``extends`` (recursively; cycles are errors)."""
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise SpecError(f"extends: expected a preset name, got {base!r}")
    if base.lower() in seen:
        raise SpecError(f"extends: cycle through preset '{base}'")
    parent = _resolve_extends(_read_file(preset_path(base)), seen | {base.lower()})
    return _deep_merge(parent, data)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; sections present as mappings on both sides merge key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, object]) -> dict[str, Any]:
    """Set each dotted path (``moe.top_k``), creating absent sections (``moe`` on a dense model)."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        *parents, leaf = parts = dotted.split(".")
        if not all(parts):
            raise SpecError(f"override key '{dotted}': empty path component")
        node = out
        for depth, key in enumerate(parents):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise SpecError(f"override key '{dotted}': {where} is {child!r}, not a section")
            node = child
        node[leaf] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file into a dict (bounded and safe: models/files.py)."""
    suffix = path.suffix.lower()
    if suffix not in SPEC_SUFFIXES:
        raise SpecError(f"{path}: unsupported spec file type '{suffix}'; use {', '.join(SPEC_SUFFIXES)}")
    return read_spec_mapping(path, str(path))
