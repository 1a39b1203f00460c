"""The versioned plan JSON: build it from a search result, load and re-check it, print its schema.

Stable paths (training jobs and CI read them): ``schema_version``, ``inputs``,
``parallelism.{dp,tp,pp,cp,ep,zero_stage,micro_batch_size,num_micro_batches,schedule,
virtual_stages,sequence_parallel}``, ``stages[]``, ``predicted``, ``solver.{backend,status,
objective,best_bound,gap,wall_time_s}``, ``reproduce``. A file with another major version is
rejected on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hardware.cluster import ClusterSpec
from models.errors import SpecError, format_validation_error
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.render import SCHEMA_VERSION, parallel_dict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ParallelismBlock(_Open):
    dp: int = Field(ge=1, description="Data-parallel degree.")
    tp: int = Field(ge=1, description="Tensor-parallel degree.")
    pp: int = Field(ge=1, description="Pipeline-parallel degree.")
    cp: int = Field(ge=1, description="Context-parallel degree.")
    ep: int = Field(ge=1, description="Expert-parallel degree (carved out of dp*cp).")
    zero_stage: int = Field(ge=0, le=3, description="0 none, 1 optimizer, 2 +gradients, 3 +weights (FSDP).")
    micro_batch_size: int = Field(ge=1, description="Sequences per micro-batch per data-parallel rank.")
    num_micro_batches: int = Field(ge=1, description="Micro-batches per step (gradient accumulation).")
    schedule: Literal["gpipe", "1f1b", "interleaved"]
    virtual_stages: int = Field(ge=1, description="Model chunks per pipeline rank.")
    sequence_parallel: bool


class StageBlock(_Open):
    index: int = Field(ge=0, description="Model chunk index in model order.")
    pp_rank: int = Field(ge=0, description="Pipeline rank holding this chunk (index % pp).")
    virtual_index: int = Field(ge=0, description="Chunk index on its pipeline rank.")
    layers: list[int] = Field(min_length=2, max_length=2, description="Half-open block range [first, last+1).")
    has_embedding: bool
    has_head: bool
    recompute: list[Literal["none", "selective", "full"]] = Field(description="One option per block in the range.")
    ranks: list[int] = Field(description="Global ranks of this pipeline rank (tp innermost, then cp, dp).")


class SolverBlock(_Open):
    backend: str
    status: str
    objective: float | None = Field(description="Step time of the plan, seconds.")
    best_bound: float | None = Field(description="Certified lower bound on the step time of any plan in the "
                                                 "searched space, seconds.")
    gap: float | None = Field(description="(objective - best_bound) / objective; negative when deeper "
                                          "interleaving, tried after the search, beat the whole searched space.")
    wall_time_s: float


class PlanFile(_Open):
    """autopar plan file (JSON)."""

    schema_version: str = Field(description="MAJOR.MINOR; another major version is rejected.")
    kind: Literal["plan"] = "plan"
    inputs: dict[str, Any] = Field(description="Resolved model, cluster and training inputs with their sha256.")
    parallelism: ParallelismBlock
    stages: list[StageBlock]
    predicted: dict[str, Any] = Field(description="Same keys as `autopar estimate --format json`.")
    solver: SolverBlock
    reproduce: str = Field(description="The command that reproduces this plan.")


def input_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def input_block(model: ModelSpec, cluster: ClusterSpec, train: Training, knobs: dict | None = None) -> dict:
    m, c = model.model_dump(), cluster.model_dump()
    t = {"global_batch_size": train.global_batch, "seq_len": train.seq_len, "dtype": train.dtype,
         "attention_impl": train.attention_impl, "grad_reduce_dtype": train.grad_reduce_dtype,
         "norm_impl": train.norm_impl, "tp_overlap": train.tp_overlap, "seed": 0}
    return {"model": m, "cluster": c, "training": t, "knobs": knobs or {},
            "sha256": {"model": input_sha256(m), "cluster": input_sha256(c), "training": input_sha256(t)}}


def stage_blocks(est) -> list[dict]:
    par = est.par
    per_pp = par.dp * par.cp * par.tp
    out = []
    for c in est.chunks:
        blocks = range(c.first_block, c.first_block + c.num_blocks)
        out.append({"index": c.index, "pp_rank": c.pp_rank, "virtual_index": c.index // par.pp,
                    "layers": [c.first_block, c.first_block + c.num_blocks], "has_embedding": c.has_embedding,
                    "has_head": c.has_head, "recompute": [par.recompute_of(i) for i in blocks],
                    "ranks": list(range(c.pp_rank * per_pp, (c.pp_rank + 1) * per_pp))})
    return out


def build_plan(est, solver: dict, reproduce: str, knobs: dict | None = None, extra: dict | None = None) -> dict:
    doc = {"schema_version": SCHEMA_VERSION, "kind": "plan",
           "inputs": input_block(est.model, est.cluster, est.train, knobs),
           "parallelism": parallel_dict(est.par, est.predicted["num_micro_batches"]),
           "stages": stage_blocks(est), "predicted": est.predicted, "solver": solver, "reproduce": reproduce}
    doc.update(extra or {})
    return doc


def plan_schema() -> dict:
    return PlanFile.model_json_schema()


def load_plan(path: Path) -> dict:
    """Read and check a plan file: JSON, schema, major version, input hashes."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"plan file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from None
    major = str(doc.get("schema_version", "")).split(".")[0] if isinstance(doc, dict) else ""
    if major != SCHEMA_VERSION.split(".")[0]:
        raise SpecError(f"{path}: schema_version {doc.get('schema_version')!r} is not supported "
                        f"(this autopar reads {SCHEMA_VERSION.split('.')[0]}.x)")
    try:
        PlanFile.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"plan {path}")) from None
    for key in ("model", "cluster", "training"):
        if input_sha256(doc["inputs"][key]) != doc["inputs"]["sha256"][key]:
            raise SpecError(f"{path}: inputs.{key} does not match inputs.sha256.{key} (edited by hand?)")
    return doc


def plan_inputs(doc: dict) -> tuple[ModelSpec, ClusterSpec, Training, Parallel]:
    """Typed inputs and the parallel plan recorded in a plan file."""
    try:
        model = ModelSpec.model_validate(doc["inputs"]["model"])
        cluster = ClusterSpec.model_validate(doc["inputs"]["cluster"])
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, "plan inputs")) from None
    t = doc["inputs"]["training"]
    train = Training(t["global_batch_size"], t["seq_len"], t["dtype"], t.get("attention_impl", "flash"),
                     t.get("grad_reduce_dtype", "auto"), t.get("norm_impl", "fused"), t.get("tp_overlap", "backward"))
    p = doc["parallelism"]
    recompute = tuple(o for s in doc["stages"] for o in s["recompute"])
    par = Parallel(dp=p["dp"], tp=p["tp"], pp=p["pp"], cp=p["cp"], ep=p["ep"], micro_batch=p["micro_batch_size"],
                   zero=p["zero_stage"], recompute=recompute, schedule=p["schedule"], vpp=p["virtual_stages"],
                   sequence_parallel=p["sequence_parallel"],
                   stage_layers=tuple(s["layers"][1] - s["layers"][0] for s in doc["stages"]))
    return model, cluster, train, par
