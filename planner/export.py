"""`autopar export PLAN --to torchtitan|megatron|deepspeed`: the same plan as another runtime's
configuration, with a note for every plan setting that runtime cannot express.

The targets live in planner/export_megatron.py (Megatron-LM arguments as a bash array) and
planner/export_targets.py (torchtitan TOML, DeepSpeed JSON); planner/export_common.py loads and
re-checks the plan and reduces its per-block recompute to what runtimes can say. The mapping
table is docs/exports.md. Text output is the runtime's own file (notes as comments where the
format has them); ``--format json`` wraps it as {target, config, notes, text}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from models.errors import SpecError
from planner.export_common import TARGETS, Export, load_view
from planner.export_megatron import megatron_export
from planner.export_targets import deepspeed_export, torchtitan_export
from planner.render import SCHEMA_VERSION

EXPORTERS = {"torchtitan": torchtitan_export, "megatron": megatron_export, "deepspeed": deepspeed_export}


def export_plan(path: Path, target: str) -> Export:
    """Load and re-check the plan file, then build ``target``'s configuration (SpecError: exit 2)."""
    if target not in EXPORTERS:
        raise SpecError(f"--to must be one of {', '.join(TARGETS)} (got {target!r})")
    return EXPORTERS[target](load_view(path))


def export_document(exp: Export, source: str) -> dict:
    """The ``--format json`` document: the configuration as data, the notes, and the file text."""
    return {"schema_version": SCHEMA_VERSION, "kind": "export", "target": exp.target, "plan": source,
            "config": exp.config, "notes": exp.notes, "text": exp.text}


def run_export(plan_path: Path, target: str, out_path: Path | None, fmt: str, err: Console) -> Export:
    """CLI body: notes on stderr; the file to ``out_path`` (said on stderr) or, without it, the
    file text on stdout; with ``fmt == "json"`` stdout gets only the JSON document."""
    exp = export_plan(plan_path, target)
    for note in exp.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if out_path is not None:
        try:
            out_path.write_text(exp.text)
        except OSError as exc:
            raise SpecError(f"cannot write {out_path}: {exc.strerror}") from None
        err.print(f"wrote {out_path} ({target})", markup=False, highlight=False)
    if fmt == "json":
        print(json.dumps(export_document(exp, str(plan_path)), indent=2))
    elif out_path is None:
        sys.stdout.write(exp.text)
    return exp
