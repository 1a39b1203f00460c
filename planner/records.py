"""Typed records that are also read as their JSON form (plan files, ``--format json``).

Results travel through autopar as frozen dataclasses read by attribute; where the same record is
written to a plan file its ``to_json()`` is that block, and ``record["key"]`` / ``"key" in record``
read the JSON form, so code written against plan files reads a live record the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def to_json(value: Any) -> Any:
    """Records to dicts (their ``to_json``), tuples to lists, everything else as is."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


class JsonRecord:
    """Mixin for frozen dataclasses that are also read as their JSON form. A field whose metadata
    sets ``omit_none`` is left out of the JSON (and ``in`` says False) while it is None."""

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = to_json(value)
        return out

    def __getitem__(self, key: str) -> Any:
        if key in {f.name for f in dataclasses.fields(self)}:  # type: ignore[arg-type]
            return to_json(getattr(self, key))
        return self.to_json()[key]  # derived keys the JSON form adds (StageMemory.total_bytes)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.to_json()

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default
