"""Errors for bad input: one clear line, shown by the CLI with exit code 2 (never a traceback)."""

from __future__ import annotations

from pydantic import ValidationError


class SpecError(ValueError):
    """Invalid user input (spec file, preset name, command-line value). The message is one line."""


def format_validation_error(err: ValidationError, what: str) -> str:
    """Turn a pydantic error into one line: ``model spec: num_heads: Input should be ... (got 'x')``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}" if loc != "(root)" else msg)
    return f"{what}: " + "; ".join(parts)
