"""The integrity of a plan file, checked before anything reads its content: the one check shared
by every command that takes a plan (`run`, `export`, `estimate --plan`, `diff`, `explain`, and the
version half of `validate`) and by the runtime's own reader (``runtime.plan_io.load_plan``), so
that no rank ever starts on a plan that fails it.

    schema_version    a string MAJOR.MINOR with this autopar's major (another layout is unknown)
    inputs.sha256     recorded, with the sha256 of each of inputs.{model,cluster,training}
    the hashes        sha256 of the canonical JSON of each input block equals the recorded one
                      (an edited model, cluster or batch is refused: the plan was not made for it)
    the world size    dp * tp * pp * cp equals inputs.cluster's num_nodes * gpus_per_node, when
                      the cluster records them (a hand-edited degree would run another plan)

Every failure is a ``SpecError`` (exit 2): one line naming the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from models.errors import SpecError
from planner.planfile.build import input_sha256
from planner.planfile.schema import MAJOR, SCHEMA_VERSION

INPUT_BLOCKS = ("model", "cluster", "training")
DEGREES = ("dp", "tp", "pp", "cp")


def check_version(doc: dict, where: str | Path) -> str:
    """``schema_version`` must be MAJOR.MINOR with this autopar's major; returns it."""
    version = doc.get("schema_version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+", version):
        raise SpecError(
            f"{where}: plan field 'schema_version' is {version!r}, expected MAJOR.MINOR such as "
            f"{SCHEMA_VERSION!r} (is this an autopar plan file?)"
        )
    if version.split(".")[0] != MAJOR:
        raise SpecError(
            f"{where}: plan field 'schema_version' {version!r} is not supported (this autopar reads {MAJOR}.x)"
        )
    return version


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_world_size(doc: dict, where: str | Path) -> None:
    """dp * tp * pp * cp against the GPUs of the recorded cluster (skipped when it records none)."""
    cluster, par = doc["inputs"].get("cluster"), doc.get("parallelism")
    if not isinstance(cluster, dict) or not isinstance(par, dict):
        return
    nodes, per_node = _int(cluster.get("num_nodes")), _int(cluster.get("gpus_per_node"))
    degrees = [_int(par.get(k)) for k in DEGREES]
    if nodes is None or per_node is None or any(d is None for d in degrees):
        return  # a wrong type is named by the schema check that follows
    world = math.prod(d for d in degrees if d is not None)
    if world != nodes * per_node:
        arithmetic = " * ".join(f"{k}({par[k]})" for k in DEGREES)
        raise SpecError(
            f"{where}: plan field 'parallelism': {arithmetic} = {world} != {nodes * per_node} GPUs in "
            f"inputs.cluster (num_nodes {nodes} * gpus_per_node {per_node}; edited by hand?)"
        )


def check_integrity(doc: dict, where: str | Path) -> dict:
    """Version, recorded hashes and world size (module docstring); returns ``doc``."""
    check_version(doc, where)
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict):
        raise SpecError(f"{where}: plan field 'inputs' is missing or not an object")
    sha = inputs.get("sha256")
    if not isinstance(sha, dict):
        raise SpecError(
            f"{where}: plan field 'inputs.sha256' is missing: the plan does not record the hashes of its inputs "
            "(write it with `autopar plan --out`)"
        )
    for key in INPUT_BLOCKS:
        if key not in inputs:
            raise SpecError(f"{where}: plan field 'inputs.{key}' is missing")
        if input_sha256(inputs[key]) != sha.get(key):
            raise SpecError(f"{where}: inputs.{key} does not match inputs.sha256.{key} (edited by hand?)")
    check_world_size(doc, where)
    return doc
