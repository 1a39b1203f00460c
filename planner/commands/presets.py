"""`autopar presets list|show`: the model and GPU presets, as data."""

from __future__ import annotations

from dataclasses import dataclass

from hardware.gpu import GPUSpec, list_gpus, load_gpu, preset_data
from models.errors import SpecError
from models.graph import build_graph
from models.load import list_presets, load_model
from models.spec import ModelSpec
from planner.commands.common import FMT_OPTION, Opt

SHOW_OPTIONS = (
    Opt("name", str, ..., (), "A model or GPU preset, or a model spec file or config.json.", argument=True),
    FMT_OPTION,
)


@dataclass(frozen=True)
class ModelRow:
    name: str
    spec: ModelSpec
    params: float

    @property
    def kind(self) -> str:
        return "MoE" if self.spec.moe else ("encoder" if self.spec.attention_mask == "bidirectional" else "dense")


@dataclass(frozen=True)
class PresetList:
    models: list[ModelRow]
    gpus: list[GPUSpec]


def list_preset_rows(kind: str) -> PresetList:
    if kind not in ("all", "models", "gpus"):
        raise SpecError(f"presets list: kind must be models, gpus or all (got {kind!r})")
    models = []
    for name in list_presets() if kind in ("all", "models") else []:
        s = load_model(name)
        models.append(ModelRow(name, s, build_graph(s, min(s.max_seq_len, 2048)).num_params))
    return PresetList(models, [load_gpu(g) for g in list_gpus()] if kind in ("all", "gpus") else [])


def preset_fields(name: str) -> dict:
    """One preset's fields: a GPU spec, or a model spec with its derived parameter count.

    ``name`` is a GPU preset or anything ``--model`` takes: a model preset, a spec file (which may
    ``extends:`` a preset) or a Hugging Face config.json / its directory. An unknown name is the
    ``--model`` error (nearest presets, or the missing file)."""
    if name not in list_presets() and name in list_gpus():
        return preset_data(name)
    spec = load_model(name)
    data = spec.model_dump(exclude_none=True)
    g = build_graph(spec, min(spec.max_seq_len, 2048))  # parameters do not depend on seq_len
    data["derived"] = {"params": g.num_params, "params_b": round(g.num_params / 1e9, 3)}
    return data
