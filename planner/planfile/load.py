"""Reading plan files: JSON, major version, schema, input hashes; and the typed inputs and plan
they record (knobs a later minor version added take their registry default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hardware.cluster import ClusterSpec
from models.errors import SpecError, format_validation_error
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.knobs import KNOBS
from planner.planfile.accept import PlanRejected, accept_layout, model_spec
from planner.planfile.integrity import check_integrity
from planner.planfile.schema import SCHEMA_VERSION, PlanFile
from planner.stacks import DEFAULT_STACK, load_stack


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; SpecError (exit 2) when unreadable, not JSON or not an object."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, expected a {what} file") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}; truncated?)"
        ) from None
    except RecursionError:
        raise SpecError(f"{path}: the {what} nests JSON deeper than Python's recursion limit") from None
    if not isinstance(doc, dict):
        kind = {type(None): "null", list: "array", str: "string", bool: "boolean"}.get(type(doc), "number")
        raise SpecError(f"{path}: expected a JSON object (a {what}), got a JSON {kind}")
    return doc


def load_plan(path: Path) -> dict:
    """Read and check a plan file: JSON, integrity (version, input hashes, world size:
    ``planner.planfile.integrity``), schema, and the parallelism and stage rules the runtime applies (``accept_layout``)."""
    doc = check_integrity(read_json(path, "plan"), path)
    try:
        PlanFile.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"plan {path}")) from None
    try:
        accept_layout(doc, model_spec(doc).num_layers)
    except PlanRejected as exc:
        raise SpecError(f"{path}: {exc}") from None
    return doc


def plan_training(t: dict[str, Any]) -> Training:
    """The training a plan was priced for: its stack (with its overrides; files before schema 1.2
    name none and were priced for Megatron-Core's) and the numerics it records."""
    stack = load_stack(t.get("stack", DEFAULT_STACK), t.get("stack_overrides") or None)
    return Training(
        t["global_batch_size"],
        t["seq_len"],
        t["dtype"],
        t.get("attention_impl", "flash"),
        t.get("grad_reduce_dtype", "auto"),
        t.get("norm_impl", "fused"),
        t.get("tp_overlap", "backward"),
        stack,
        t.get("memory_headroom", "0%"),  # files before schema 1.2 were planned without headroom
    )


def plan_parallel(doc: dict) -> Parallel:
    """The plan's knobs (``parallelism``, with per-block recompute and the split from ``stages``)."""
    p = doc["parallelism"]
    values = {
        k.name: p[k.json_key] if k.since == "1.0" else p.get(k.json_key, k.default)
        for k in KNOBS
        if k.name not in ("recompute", "stage_layers")
    }
    values["recompute"] = tuple(o for s in doc["stages"] for o in s["recompute"])
    values["stage_layers"] = tuple(s["layers"][1] - s["layers"][0] for s in doc["stages"])
    return Parallel(**values)


def plan_inputs(doc: dict) -> tuple[ModelSpec, ClusterSpec, Training, Parallel]:
    """Typed inputs and the parallel plan recorded in a plan file."""
    try:
        model = ModelSpec.model_validate(doc["inputs"]["model"])
        cluster = ClusterSpec.model_validate(doc["inputs"]["cluster"])
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, "plan inputs")) from None
    try:
        train = plan_training(doc["inputs"]["training"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # SpecError (a ValueError) included
        raise SpecError(f"plan field 'inputs.training' cannot be read: {' '.join(str(exc).split())}") from None
    return model, cluster, train, plan_parallel(doc)


__all__ = ["SCHEMA_VERSION", "load_plan", "plan_inputs", "read_json"]
