"""JSON Schemas of the model spec file and the cluster file (``autopar schema model|cluster``).

Both come from the pydantic models the loaders validate with, so they cannot drift from them:

- **model**: :class:`models.spec.ModelSpec`, as a file holds it. A file is either complete
  (every required field but ``name``, which defaults to the file's stem) or names a preset in
  ``extends:`` and overrides only some fields — then nothing is required, nested sections
  included, because ``models.load`` merges them key by key over the preset.
- **cluster**: the on-disk cluster format of :mod:`hardware.cluster`. ``gpu`` is a preset name,
  a complete inline :class:`hardware.gpu.GPUSpec`, or an inline object that ``extends:`` a
  preset and overrides some fields (merged key by key, so nothing in it is required).

The "patch" variants are made by :func:`_relaxed`: the same properties with every ``required``
list dropped and every ``$ref`` pointing at the patch variant of its definition.
"""

from __future__ import annotations

from typing import Any

# The loader's own on-disk model (private there): the schema must describe what load_cluster accepts.
from hardware.cluster import ClusterFile
from hardware.gpu import GPUSpec, list_gpus
from models.load import list_presets
from models.spec import ModelSpec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PATCH = "Patch"


def _relaxed(node: Any) -> Any:
    """A copy of a schema node with no ``required`` lists and ``$ref``s to the patch variants."""
    if isinstance(node, dict):
        out = {k: _relaxed(v) for k, v in node.items() if k != "required"}
        if isinstance(node.get("$ref"), str):
            out["$ref"] = node["$ref"] + PATCH
        return out
    if isinstance(node, list):
        return [_relaxed(v) for v in node]
    return node


def _with_patches(schema: dict[str, Any]) -> dict[str, dict]:
    """``$defs`` of ``schema`` plus a patch variant of each."""
    defs = schema.get("$defs", {})
    return {**defs, **{name + PATCH: _relaxed(body) for name, body in defs.items()}}


def _extends(kind: str, names: list[str]) -> dict[str, Any]:
    return {
        "type": "string",
        "description": f"{kind} preset to start from; the other keys override its fields.",
        "examples": names,
    }


def model_schema() -> dict[str, Any]:
    """JSON Schema of a model spec file (YAML/JSON/TOML): complete, or ``extends:`` a preset."""
    base = ModelSpec.model_json_schema()
    defs = _with_patches(base)
    full = {k: v for k, v in base.items() if k != "$defs"}
    full["required"] = [f for f in base["required"] if f != "name"]  # name defaults to the file's stem
    patch = _relaxed(full)
    patch["properties"]["extends"] = _extends("Model", list_presets())
    patch["required"] = ["extends"]
    patch["title"] = "ModelSpecPatch"
    defs.update({"ModelSpec": full, "ModelSpecPatch": patch})
    return {
        "$schema": DRAFT,
        "title": "autopar model spec file",
        "description": "A complete model spec (ModelSpec) or one that extends a preset and overrides some "
        "fields. Presets: " + ", ".join(list_presets()) + ".",
        "anyOf": [{"$ref": "#/$defs/ModelSpec"}, {"$ref": "#/$defs/ModelSpecPatch"}],
        "$defs": defs,
    }


def cluster_schema() -> dict[str, Any]:
    """JSON Schema of a cluster file: ``gpu`` (preset name, GPU object or extends-object), sizes, links."""
    gpu = GPUSpec.model_json_schema()
    defs = _with_patches(gpu)
    gpu_full = {k: v for k, v in gpu.items() if k != "$defs"}
    gpu_patch = _relaxed(gpu_full)
    gpu_patch["properties"]["extends"] = _extends("GPU", list_gpus())
    gpu_patch["required"] = ["extends"]
    gpu_patch["title"] = "GPUSpecPatch"
    defs.update({"GPUSpec": gpu_full, "GPUSpecPatch": gpu_patch})
    schema = ClusterFile.model_json_schema()
    schema["properties"]["gpu"] = {
        "description": schema["properties"]["gpu"].get("description", ""),
        "anyOf": [
            {"type": "string", "description": "A GPU preset name.", "examples": list_gpus()},
            {"$ref": "#/$defs/GPUSpec"},
            {"$ref": "#/$defs/GPUSpecPatch"},
        ],
    }
    return {
        "$schema": DRAFT,
        "title": "autopar cluster file",
        "description": "A cluster file for --cluster (YAML/JSON/TOML); see docs/hardware.md. Omitted link "
        "figures and gpus_per_node come from the GPU.",
        "type": "object",
        "properties": schema["properties"],
        "required": schema["required"],
        "additionalProperties": False,
        "$defs": defs,
    }
