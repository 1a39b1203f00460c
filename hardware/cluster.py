"""Cluster specs: which GPU, how many nodes, and the two link tiers between ranks.

``load_cluster`` accepts three spellings (see docs/hardware.md):

* ``NAME`` - one full node of the GPU preset NAME (``h100-sxm-80gb`` = 8 GPUs);
* ``NAME:N`` - N GPUs of preset NAME. ``gpus_per_node`` comes from the preset; N below it means one
  node of N GPUs; otherwise N must be a multiple of it (``100 % 8 = 4`` is an error);
* a YAML / JSON / TOML file (chosen by extension) with these keys:

  ======================== ========= ===========================================================
  key                      required  default
  ======================== ========= ===========================================================
  gpu                      yes       preset name, or an inline GPU object; ``extends: <preset>``
                                     inside it merges the given fields over that preset
  num_nodes                yes       -
  gpus_per_node            no        the GPU's ``gpus_per_node``
  intra_node_bw_GBps       no        the GPU's ``intra_node_bw_GBps`` (per GPU, one direction)
  inter_node_bw_GBps       no        the GPU's ``inter_node_bw_GBps`` (per GPU, one direction)
  intra_node_latency_us    no        the GPU's ``intra_node_latency_us``
  inter_node_latency_us    no        the GPU's ``inter_node_latency_us``
  name                     no        the file's stem
  ======================== ========= ===========================================================

Unknown keys, wrong types and non-positive sizes are errors (one line, ``SpecError``).
``overrides`` (from ``--set``) is a nested or dotted-key mapping of the same keys, applied last:
CLI > file > preset. Its values must already be typed (e.g. parsed with ``yaml.safe_load``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from hardware.gpu import GPUSpec, list_gpus, load_gpu, preset_data, unknown_name_error
from models.errors import SpecError, format_validation_error
from models.files import read_spec_mapping

CLUSTER_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
# Bounds (issue 21): 2**20 nodes of up to 4,096 GPUs is far beyond any cluster built, and keeps
# the planner's divisor enumeration and float arithmetic bounded.
MAX_NODES = 2**20
MAX_GPUS_PER_NODE = 4096


class _Strict(BaseModel):
    # allow_inf_nan=False: an `.inf` latency or a NaN size is an error, never a step time of inf s.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ClusterSpec(_Strict):
    """A homogeneous cluster: num_nodes nodes of gpus_per_node identical GPUs (one rank each)."""

    name: str = Field(description="Label shown in plans, e.g. h100-sxm-80gb:64.")
    gpu: GPUSpec = Field(description="The accelerator every rank runs on.")
    num_nodes: PositiveInt = Field(le=MAX_NODES, description=f"Nodes (NVLink domains), at most {MAX_NODES:,}.")
    gpus_per_node: PositiveInt = Field(le=MAX_GPUS_PER_NODE, description="Ranks per node.")
    intra_node_bw_GBps: PositiveFloat = Field(description="Per-GPU, one-direction bandwidth inside a node, GB/s.")
    inter_node_bw_GBps: PositiveFloat = Field(description="Per-GPU, one-direction NIC bandwidth between nodes, GB/s.")
    intra_node_latency_us: NonNegativeFloat = Field(description="Per-step latency inside a node, us.")
    inter_node_latency_us: NonNegativeFloat = Field(description="Per-step latency across nodes, us.")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


class ClusterFile(_Strict):
    """The on-disk cluster format before defaults are filled in from the GPU preset."""

    gpu: Any = Field(description="GPU preset name, or an inline GPU object (may use extends: <preset>).")
    num_nodes: PositiveInt = Field(le=MAX_NODES)
    gpus_per_node: PositiveInt | None = Field(None, le=MAX_GPUS_PER_NODE)
    intra_node_bw_GBps: PositiveFloat | None = None
    inter_node_bw_GBps: PositiveFloat | None = None
    intra_node_latency_us: NonNegativeFloat | None = None
    inter_node_latency_us: NonNegativeFloat | None = None
    name: str | None = None

    @field_validator("gpu")
    @classmethod
    def _gpu_kind(cls, value: Any) -> Any:
        if not isinstance(value, (str, dict)):
            raise ValueError("expected a GPU preset name or a GPU object")
        return value


def load_cluster(arg: str, overrides: dict | None = None) -> ClusterSpec:
    """Resolve ``NAME``, ``NAME:N`` or a cluster file path into a ClusterSpec (module docstring)."""
    path = Path(arg)
    if path.suffix.lower() in CLUSTER_FILE_SUFFIXES or path.is_file():
        raw, what = _read_cluster_file(path), f"cluster file {arg}"
        raw.setdefault("name", path.stem)
    else:
        raw, what = _parse_shorthand(arg), f"cluster {arg!r}"
    if overrides:
        raw = _deep_merge(raw, _expand_dotted(overrides))
    return _build(raw, what)


def _parse_shorthand(arg: str) -> dict[str, Any]:
    """``NAME`` -> one full node; ``NAME:N`` -> N GPUs, whole nodes of the preset's gpus_per_node."""
    name, sep, count = arg.strip().partition(":")
    gpu = load_gpu(name)
    per_node = gpu.gpus_per_node
    if not sep:
        return {"gpu": gpu.name, "num_nodes": 1, "gpus_per_node": per_node, "name": gpu.name}
    try:
        n = int(count)
    except ValueError:
        raise SpecError(f"cluster {arg!r}: GPU count must be a positive integer (got {count!r})") from None
    if n <= 0:
        raise SpecError(f"cluster {arg!r}: GPU count must be a positive integer (got {n})")
    if n <= per_node:
        # Fewer GPUs than a node holds: one partially used node, every link is intra-node.
        return {"gpu": gpu.name, "num_nodes": 1, "gpus_per_node": n, "name": f"{gpu.name}:{n}"}
    if n % per_node:
        raise SpecError(
            f"cluster {arg!r}: {n} GPUs is not a multiple of {per_node} GPUs per node "
            f"({n} % {per_node} = {n % per_node}); use a multiple of {per_node} or a cluster file"
        )
    return {"gpu": gpu.name, "num_nodes": n // per_node, "gpus_per_node": per_node, "name": f"{gpu.name}:{n}"}


def _read_cluster_file(path: Path) -> dict[str, Any]:
    return read_spec_mapping(path, f"cluster file {path}")  # bounded and safe: models/files.py


def _build(raw: dict[str, Any], what: str) -> ClusterSpec:
    try:
        spec = ClusterFile.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, what)) from None
    gpu = _resolve_gpu(spec.gpu, what)
    fields = {
        "name": spec.name or gpu.name,
        "gpu": gpu,
        "num_nodes": spec.num_nodes,
        "gpus_per_node": spec.gpus_per_node or gpu.gpus_per_node,
        "intra_node_bw_GBps": _default(spec.intra_node_bw_GBps, gpu.intra_node_bw_GBps),
        "inter_node_bw_GBps": _default(spec.inter_node_bw_GBps, gpu.inter_node_bw_GBps),
        "intra_node_latency_us": _default(spec.intra_node_latency_us, gpu.intra_node_latency_us),
        "inter_node_latency_us": _default(spec.inter_node_latency_us, gpu.inter_node_latency_us),
    }
    try:
        return ClusterSpec.model_validate(fields)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, what)) from None


def _default(value: float | None, fallback: float) -> float:
    # Not `value or fallback`: 0.0 is a legal latency and must not fall back.
    return fallback if value is None else value


def _resolve_gpu(value: str | dict[str, Any], what: str) -> GPUSpec:
    """A preset name, an inline GPU object, or an inline object that ``extends`` a preset."""
    if isinstance(value, str):
        return load_gpu(value)
    data = dict(value)
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str):
            raise SpecError(f"{what}: gpu.extends: expected a GPU preset name (got {base!r})")
        key = base.strip().lower()
        if key not in list_gpus():
            raise unknown_name_error("GPU preset", base, list_gpus())
        merged = _deep_merge(preset_data(key), data)
        if "name" not in data:  # a modified preset must not pass for the preset itself
            merged["name"] = f"{key}-custom"
        merged["source"] = f"{merged['source']} Fields {sorted(data)} overridden in {what}."
        data = merged
    try:
        return GPUSpec.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(err, f"{what}: gpu")
        if base is None and any(e["type"] == "missing" for e in err.errors()):
            message += " (an inline GPU without 'extends: <preset>' must give every field)"
        raise SpecError(message) from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; nested mappings merge key by key (so one efficiency can be changed)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), str) and key == "gpu":
            # Overriding a field of a preset named by string: extend that preset.
            out[key] = {"extends": out[key], **value}
        else:
            out[key] = value
    return out


def _expand_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"gpu.efficiency.memory_bw": 0.7}`` -> ``{"gpu": {"efficiency": {"memory_bw": 0.7}}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"override {key!r}: {part!r} is set both as a value and as a mapping")
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested
