"""Reading a spec file (YAML, JSON or TOML) that a user or an attacker wrote: bounded in size,
depth and expansion, safe loading only, one-line ``SpecError`` for anything else.

Limits (a spec file is a few kilobytes; these are orders of magnitude above any real one):

    MAX_SPEC_BYTES  16 MiB   larger files are refused before parsing (a 200 MB YAML took 69 s)
    MAX_DEPTH       32       nesting of mappings and lists (a spec nests 3 deep; a 3,000-deep
                             file overflowed Python's recursion limit in every parser)
    YAML aliases    refused  an alias bomb (``a: &a [*b, *b, ...]``) expands exponentially when
                             the spec is copied or validated; no spec needs an alias
    YAML tags       safe     ``yaml.SafeLoader``: ``!!python/object`` and friends are errors
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from models.errors import SpecError

MAX_SPEC_BYTES = 16 * 2**20
MAX_DEPTH = 32
SPEC_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (anchors alone are harmless; expanding them is not)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in spec files", event.start_mark
            )
        return super().compose_node(parent, index)


def _depth(data: Any) -> int:
    """Nesting depth of mappings and lists, without recursion (the data may be deep)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, d + 1) for c in children)
    return deepest


def parse_text(text: str, suffix: str) -> Any:
    """Parse ``text`` as the format ``suffix`` names; the parsers' own errors pass through."""
    if suffix == ".json":
        return json.loads(text)
    if suffix == ".toml":
        return tomllib.loads(text)
    return yaml.load(text, Loader=_NoAliasLoader)


def read_spec_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping in spec file ``path`` (format by suffix; YAML when none of SPEC_SUFFIXES)."""
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise SpecError(f"{what}: is a directory, expected a file")
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{what}: {size:,} bytes, over the {MAX_SPEC_BYTES // 2**20} MiB a spec file may have")
        text = path.read_text(encoding="utf-8")
        data = parse_text(text, suffix)
    except FileNotFoundError:
        raise SpecError(f"{what}: no such file") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{what}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except RecursionError:
        raise SpecError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{what}: cannot read (cannot parse YAML: {err.problem}{where})") from None
    except (OSError, ValueError, yaml.YAMLError) as err:  # JSON/TOML decode errors are ValueErrors
        raise SpecError(f"{what}: cannot read (cannot parse: {' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{what}: expected a mapping of keys at top level (got {type(data).__name__})")
    if _depth(data) > MAX_DEPTH:
        raise SpecError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    return data
