"""`autopar export PLAN --to torchtitan|megatron|deepspeed`: the same plan as another runtime's
configuration, with a note for every plan setting that runtime cannot express.

One module per target (``megatron``: Megatron-LM arguments as a bash array; ``torchtitan``: a
Python config module for torchtitan 0.3 (``torchtitan_recipe``) or the TOML job config of 0.2;
``deepspeed``: its JSON config), registered in ``EXPORTERS``; ``common`` loads and re-checks the
plan and reduces its per-block recompute to what runtimes can say; ``rescore`` prices the plan as
the target runs it whenever the export had to change a setting. The mapping table is
docs/exports.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.errors import SpecError
from planner.export.common import Export, PlanView, load_view
from planner.export.deepspeed import deepspeed_export
from planner.export.megatron import megatron_export
from planner.export.torchtitan import DEFAULT_TT_VERSION, torchtitan_export, tt_version


@dataclass(frozen=True)
class Exporter:
    build: Callable[..., Export]
    writes: str  # what its text is (``--to`` help)
    stack: str  # the stack profile whose behaviour this target runs (planner/stacks): plan with it
    options: tuple[str, ...] = ()  # keyword options of ``build`` (export_plan's arguments)


EXPORTERS: dict[str, Exporter] = {
    "torchtitan": Exporter(torchtitan_export, "Python config (0.3) or TOML (0.2)", "torchtitan", ("version",)),
    "megatron": Exporter(megatron_export, "arguments", "megatron-core"),
    "deepspeed": Exporter(deepspeed_export, "JSON", "deepspeed"),
}


def stack_note(view: PlanView, target: str) -> list[str]:
    """A warning when the plan was priced for a stack that is not ``target``'s: its step time,
    memory and even its choice of plan assume another framework's behaviour."""
    stack = view.train.stack
    if stack.export_target == target:
        return []
    want = EXPORTERS[target].stack
    return [
        f"WARNING: the plan was priced for the {stack.name} stack, not {target}'s; its figures assume "
        f"{stack.title}'s kernels and overlap. Re-plan with --stack {want} before running it under {target}"
    ]


def export_plan(path: Path, target: str, torchtitan_version: str = DEFAULT_TT_VERSION) -> Export:
    """Load and re-check the plan file, then build ``target``'s configuration for the given runtime
    release (torchtitan: 0.3.x by default, or 0.2.x). SpecError (exit 2) on bad input."""
    if target not in EXPORTERS:
        raise SpecError(f"--to must be one of {', '.join(EXPORTERS)} (got {target!r})")
    options = {"version": tt_version(torchtitan_version)}
    view = load_view(path)
    exporter = EXPORTERS[target]
    out = exporter.build(view, **{k: options[k] for k in exporter.options})
    out.notes[:0] = stack_note(view, target)
    return out


__all__ = ["DEFAULT_TT_VERSION", "EXPORTERS", "Export", "Exporter", "export_plan"]
