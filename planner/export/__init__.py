"""`autopar export PLAN --to torchtitan|megatron|deepspeed`: the same plan as another runtime's
configuration, with a note for every plan setting that runtime cannot express.

One module per target (``megatron``: Megatron-LM arguments as a bash array; ``torchtitan``: its
TOML job config; ``deepspeed``: its JSON config), registered in ``EXPORTERS``; ``common`` loads and
re-checks the plan and reduces its per-block recompute to what runtimes can say. The mapping table
is docs/exports.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.errors import SpecError
from planner.export.common import Export, PlanView, load_view
from planner.export.deepspeed import deepspeed_export
from planner.export.megatron import megatron_export
from planner.export.torchtitan import torchtitan_export


@dataclass(frozen=True)
class Exporter:
    build: Callable[[PlanView], Export]
    writes: str  # what its text is (``--to`` help)


EXPORTERS: dict[str, Exporter] = {
    "torchtitan": Exporter(torchtitan_export, "TOML"),
    "megatron": Exporter(megatron_export, "arguments"),
    "deepspeed": Exporter(deepspeed_export, "JSON"),
}


def export_plan(path: Path, target: str) -> Export:
    """Load and re-check the plan file, then build ``target``'s configuration (SpecError: exit 2)."""
    if target not in EXPORTERS:
        raise SpecError(f"--to must be one of {', '.join(EXPORTERS)} (got {target!r})")
    return EXPORTERS[target].build(load_view(path))


__all__ = ["EXPORTERS", "Export", "Exporter", "export_plan"]
