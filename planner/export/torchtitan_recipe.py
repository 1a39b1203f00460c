"""torchtitan 0.3 configuration module for a plan.

torchtitan 0.3 describes a run as a Python function returning ``Trainer.Config``, selected with
``--module <module> --config <function>`` (torchtitan/config/manager.py ``ConfigManager``; the
``--section.key`` flags are frozen and the model tree is not on the command line). The export is
such a module: it calls torchtitan's own recipe for the model (``config_registry``: model,
optimizer, data, checkpointing), then sets the plan's degrees and batch as attributes of the
config (slots dataclasses: a misspelt field fails), its recompute policy (``FullAC`` /
``SelectiveAC`` / None) and, for fp8, the float8 converters on the model config
(``Float8LinearConverter``, ``Float8GroupedExpertsConverter`` for routed experts), as torchtitan's
``*_float8`` recipes do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from planner.export.common import Export, PlanView


@dataclass(frozen=True)
class TTModel:
    """A torchtitan model matching an autopar preset: ``torchtitan.models.<module>``, its
    ``model_registry`` flavor, the 0.3 recipe (``config_registry`` function; None: start from
    ``llama3_8b`` and swap the model), whether 0.2.x ships the flavor, and the HF assets folder."""

    module: str
    flavor: str
    recipe: str | None
    in_02: bool
    hf_assets: str


TT_MODELS = {
    "llama3-8b": TTModel("llama3", "8B", "llama3_8b", True, "./assets/hf/Llama-3.1-8B"),
    "llama3-70b": TTModel("llama3", "70B", "llama3_70b", True, "./assets/hf/Llama-3.1-70B"),
    "llama3-405b": TTModel("llama3", "405B", "llama3_405b", True, "./assets/hf/Llama-3.1-405B"),
    "llama3.2-1b": TTModel("llama3", "1B", None, False, "./assets/hf/Llama-3.2-1B"),
    "deepseek-v3": TTModel("deepseek_v3", "671B", "deepseek_v3_671b", True, "./assets/hf/DeepSeek-V3.1-Base"),
    "qwen3-30b-a3b": TTModel("qwen3", "30B-A3B", "qwen3_30b_a3b", True, "./assets/hf/Qwen3-30B-A3B"),
}


FUNCTION = "autopar_plan"
MODULE = "autopar_plan"  # the file name the launch line assumes (``--out autopar_plan.py``)
AC_CLASS = {"full": "FullAC", "selective": "SelectiveAC"}


def recipe_export(view: PlanView, tt: TTModel | None, sections: dict, mode: str, notes: list[str]) -> Export:
    """The module text and, as data, what it sets (attribute paths -> values)."""
    settings = {
        f"{name}.{key}": (value, comment)
        for name in ("training", "parallelism", "compile")
        for key, (value, comment) in sections[name].items()
    }
    fp8 = view.train.dtype == "fp8"
    experts = fp8 and view.model.moe is not None
    body = _base(view, tt) + [_assign(path, value, comment) for path, (value, comment) in settings.items()]
    body.append(f"config.activation_checkpoint = {AC_CLASS[mode] + '.Config()' if mode in AC_CLASS else 'None'}")
    if fp8:
        body += _converters(view, experts)
    body.append("return config")
    text = "\n".join(
        [_docstring(view, notes), "", *_imports(tt, mode, fp8, experts), "", "", f"def {FUNCTION}() -> Trainer.Config:"]
        + ["    " + line if line else "" for line in "\n".join(body).split("\n")]
    )
    config = _as_data(tt, settings, mode, fp8, experts)
    return Export("torchtitan", text + "\n", config, notes)


def _docstring(view: PlanView, notes: list[str]) -> str:
    c = view.cluster
    lines = [
        f"torchtitan 0.3 configuration exported by autopar from {view.source}.",
        "",
        view.title,
        "",
        f"Run it (save as {MODULE}.py, or pass your file's name as --module, its folder on PYTHONPATH):",
        f"    PYTHONPATH=. torchrun --nnodes {c.num_nodes} --nproc-per-node {c.gpus_per_node} -m torchtitan.train "
        f"--module {MODULE} --config {FUNCTION}",
    ]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = "\n".join(lines).replace('"""', "'''").replace("\\", "/")
    return '"""' + text + '\n"""'


def _imports(tt: TTModel | None, mode: str, fp8: bool, experts: bool) -> list[str]:
    out = []
    if fp8:
        names = "Float8GroupedExpertsConverter, Float8LinearConverter" if experts else "Float8LinearConverter"
        out.append(f"from torchtitan.components.quantization import {names}")
    if mode in AC_CLASS:
        out.append(f"from torchtitan.distributed.activation_checkpoint import {AC_CLASS[mode]}")
    if tt is not None and tt.recipe is None:
        out.append(f"from torchtitan.models.{tt.module} import model_registry")
        out.append(f"from torchtitan.models.{tt.module}.config_registry import {tt.module}_8b")
    elif tt is not None:
        out.append(f"from torchtitan.models.{tt.module}.config_registry import {tt.recipe}")
    out.append("from torchtitan.trainer import Trainer")
    return out


def _base(view: PlanView, tt: TTModel | None) -> list[str]:
    """The recipe the run starts from: torchtitan's for the model, or a bare config without a model
    (torchtitan asserts ``model_spec`` is set: it does not fall back to a debug model)."""
    if tt is None:
        return [f"config = Trainer.Config()  # torchtitan has no {view.model.name}: set config.model_spec (see notes)"]
    if tt.recipe is None:  # a flavor without a recipe: start from the family's 8B recipe, swap the model
        return [
            f"config = {tt.module}_8b()  # torchtitan's {tt.module} recipe (optimizer, data, checkpointing)",
            f'config.model_spec = model_registry("{tt.flavor}")  # {view.model.name}',
            f'config.hf_assets_path = "{tt.hf_assets}"',
        ]
    return [f"config = {tt.recipe}()  # torchtitan's {tt.module} {tt.flavor} recipe (optimizer, data, checkpointing)"]


def _assign(path: str, value: Any, comment: str | None) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        text = "[\n" + "".join(f"    {json.dumps(v)},\n" for v in value) + "]"
    else:
        text = repr(value) if isinstance(value, bool | int) else json.dumps(value)
    return f"config.{path} = {text}" + (f"  # {comment}" if comment else "")


def _converters(view: PlanView, experts: bool) -> list[str]:
    """float8 training on the model config, as torchtitan's deepseek_v3_671b_float8 recipe does
    (the LM head and MoE router gates stay bf16)."""
    skip = ["lm_head", "router.gate"] if view.model.moe else ["lm_head"]
    converters = [f"    Float8LinearConverter.Config(filter_fqns={json.dumps(skip)}, model_compile_enabled=compiled),"]
    if experts:
        converters.append("    Float8GroupedExpertsConverter.Config(model_compile_enabled=compiled),")
    return [
        'compiled = config.compile.enable and "model" in config.compile.components',
        "for converter in (  # dtype fp8: torchao float8 training",
        *converters,
        "):",
        "    config.model_spec.model = converter.build().convert(config.model_spec.model)",
    ]


def _as_data(tt: TTModel | None, settings: dict, mode: str, fp8: bool, experts: bool) -> dict:
    """What the module sets, for ``--format json``: the recipe, then attribute path -> value."""
    recipe = None
    if tt is not None:
        recipe = f"torchtitan.models.{tt.module}.config_registry.{tt.recipe or tt.module + '_8b'}"
    converters = (["Float8LinearConverter"] + (["Float8GroupedExpertsConverter"] if experts else [])) if fp8 else []
    return {
        "module": MODULE,
        "config": FUNCTION,
        "recipe": recipe,
        "model": None if tt is None else {"module": tt.module, "flavor": tt.flavor},
        "set": {path: value for path, (value, _) in settings.items()},
        "activation_checkpoint": mode,
        "converters": converters,
    }
