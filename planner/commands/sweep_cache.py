"""The sweep cache: one JSON file per point, named by the sha256 of what determines its result (the
resolved inputs, knobs, search settings, the autopar version and a fingerprint of the planner's
source), written atomically so that concurrent sweeps can share a directory."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from planner.commands.plan import SearchSettings
from planner.inputs import Inputs
from planner.planfile.build import input_block

CACHE_VERSION = 1


# The source a point's result depends on: every module of the packages the search reads (the
# rendering excepted) and the stack profiles with their fitted constants (the key names a stack,
# not its contents), so an edited cost model, solver or fit never serves stale rows. Loaders'
# output, the resolved specs, is in the key as well.
ROOT = Path(__file__).resolve().parents[2]
CODE_FILES = tuple(
    sorted(
        [
            p.relative_to(ROOT).as_posix()
            for pkg in ("models", "hardware", "planner")
            for p in (ROOT / pkg).rglob("*.py")
            if "render" not in p.parts
        ]
        + [p.relative_to(ROOT).as_posix() for p in (ROOT / "planner" / "stacks").rglob("*.yaml")]
    )
)


def code_fingerprint() -> str:
    """sha256 over CODE_FILES, so an edited cost model or solver never serves stale rows."""
    h = hashlib.sha256()
    for rel in CODE_FILES:
        h.update(rel.encode())
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()


def _version() -> str:
    try:
        return metadata.version("autopar")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+source"


def cache_key(inputs: Inputs, raw: dict, settings: SearchSettings, fingerprint: str) -> str:
    """sha256 of what determines a point's result (see planner.commands.sweep's docstring)."""
    doc = {
        "inputs": input_block(inputs.model, inputs.cluster, inputs.training, raw),
        "solver": settings.solver,
        "gap": settings.gap,
        "time_limit_s": settings.time_limit_s,
        "version": _version(),
        "code": fingerprint,
        "cache_version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``--cache`` unset: $AUTOPAR_CACHE_DIR, else ~/.cache/autopar/sweep."""
    env = os.environ.get("AUTOPAR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "autopar" / "sweep"


def cache_read(cache_dir: Path | None, key: str) -> dict | None:
    if cache_dir is None:
        return None
    try:
        doc = json.loads((cache_dir / f"{key}.json").read_text())
    except (OSError, ValueError):  # missing or corrupt: recompute
        return None
    return doc.get("result") if isinstance(doc, dict) and doc.get("key") == key else None


def _degrade(cache_dir: Path, why: str) -> None:
    """One warning line on stderr: the sweep goes on without its cache (issue 21: a read-only or
    full cache directory must not fail a sweep whose answers it only speeds up)."""
    sys.stderr.write(f"warning: cache directory {cache_dir} {why}; continuing without the cache\n")


def cache_write(cache_dir: Path | None, key: str, result: dict) -> Path | None:
    """Store one point's result; returns ``cache_dir``, or None (with a warning) when it cannot be
    written, so the caller stops trying."""
    if cache_dir is None:
        return None
    # Write a temporary file and rename it: a reader never sees half a file, even from another
    # sweep, and two writers of one key both rename a whole file (the last one wins; same content).
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "cache_version": CACHE_VERSION, "result": result}, f)
        os.replace(tmp, cache_dir / f"{key}.json")
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        _degrade(cache_dir, f"cannot be written ({exc.strerror or exc})")
        return None
    return cache_dir


def open_cache(cache_dir: Path | None) -> Path | None:
    """The cache directory to use: ``cache_dir`` created if needed, or None (with a warning) when
    it cannot be created or written."""
    if cache_dir is None:
        return None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _degrade(cache_dir, f"cannot be created ({exc.strerror or exc})")
        return None
    if not os.access(cache_dir, os.W_OK):
        _degrade(cache_dir, "is not writable")
        return None
    return cache_dir
