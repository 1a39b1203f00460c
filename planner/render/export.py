"""An export's ``--format json`` document."""

from __future__ import annotations

from planner.export.common import Export
from planner.planfile.schema import SCHEMA_VERSION


def export_document(exp: Export, source: str) -> dict:
    """The configuration as data, the notes, and the file text."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "export",
        "target": exp.target,
        "plan": source,
        "config": exp.config,
        "notes": exp.notes,
        "text": exp.text,
    }
