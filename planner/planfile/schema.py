"""The plan file's schema: ``PlanFile`` (pydantic) with its ``parallelism`` block generated from the
knob registry, so a knob added there is a field here.

Stable paths (training jobs and CI read them): ``schema_version``, ``inputs``,
``parallelism.{dp,tp,pp,cp,ep,zero_stage,micro_batch_size,num_micro_batches,schedule,
virtual_stages,sequence_parallel,dp_replicate}``, ``stages[]``, ``predicted``,
``solver.{backend,status,objective,best_bound,gap,wall_time_s}``, ``reproduce``. A file with
another major version is rejected on load; a key a later minor version added takes its knob's
default when absent (``dp_replicate`` 1 in 1.0 files).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from planner.knobs import KNOBS, RECOMPUTE_OPTIONS, Knob

SCHEMA_VERSION = "1.3"  # 1.3: a recompute value may be a kept set (planner/kept_sets.py)
MAJOR = SCHEMA_VERSION.split(".")[0]


# A kept set: ``keep:`` and sorted tensor names joined by ``+`` (planner/kept_sets.py).
KeptSet = Annotated[
    str, StringConstraints(pattern=r"^keep:([a-z][a-z0-9_]*(\.[a-z0-9_]+)+(\+[a-z][a-z0-9_]*(\.[a-z0-9_]+)+)*)?$")
]
RecomputeValue = Literal[RECOMPUTE_OPTIONS] | KeptSet  # type: ignore[valid-type]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _OpenStrict(_Open):
    """Blocks read as typed values: ``"dp": "4"`` or ``4.0`` is an error, not coerced (the
    commands read the raw JSON after validation, so coercion would hide the wrong type)."""

    model_config = ConfigDict(extra="allow", strict=True)


def _field(k: Knob) -> tuple[Any, Any]:
    """(type, Field) of a knob's key in ``parallelism``: required since 1.0, else its default."""
    default = ... if k.since == "1.0" and k.searched else k.default
    if k.kind == "int":
        return int, Field(default, ge=k.minimum, le=k.maximum, description=k.help + ".")
    if k.kind == "bool":
        return bool, Field(default, description=k.help + ".")
    if k.kind == "choice":
        return Literal[k.choices], Field(default, description=k.help + ".")
    if k.kind == "per_block":
        return RecomputeValue | list[RecomputeValue] | None, Field(
            None, description=k.help + " (also in stages[].recompute)."
        )
    return list[int] | None, Field(None, description=k.help + " (also in stages[].layers).")


ParallelismBlock = create_model(  # type: ignore[call-overload]
    "ParallelismBlock",
    __base__=_OpenStrict,
    num_micro_batches=(int, Field(ge=1, description="Micro-batches per step (gradient accumulation).")),
    **{k.json_key: _field(k) for k in KNOBS},
)


class StageBlock(_OpenStrict):
    index: int = Field(ge=0, description="Model chunk index in model order.")
    pp_rank: int = Field(ge=0, description="Pipeline rank holding this chunk (index % pp).")
    virtual_index: int = Field(ge=0, description="Chunk index on its pipeline rank.")
    layers: list[int] = Field(min_length=2, max_length=2, description="Half-open block range [first, last+1).")
    has_embedding: bool
    has_head: bool
    recompute: list[RecomputeValue] = Field(
        description="One option per block in the range: none, selective, full or a kept set keep:<tensor>+<tensor>."
    )
    ranks: list[int] = Field(description="Global ranks of this pipeline rank (tp innermost, then cp, dp).")


class SolverBlock(_Open):
    backend: str = Field(
        description="The MILP backend that solved: ortools-highs or pulp, the other than requested when the "
        "requested one was missing or failed, both joined by '+' when only some MILPs fell back."
    )
    backend_requested: str | None = Field(None, description="The backend --solver asked for.")
    status: str
    objective: float | None = Field(description="Step time of the plan, seconds.")
    best_bound: float | None = Field(
        description="Certified lower bound on the step time of any plan in the searched space, seconds."
    )
    gap: float | None = Field(
        description="(objective - best_bound) / objective; negative when deeper "
        "interleaving, tried after the search, beat the whole searched space."
    )
    wall_time_s: float


class PlanFile(_Open):
    """autopar plan file (JSON)."""

    schema_version: str = Field(description="MAJOR.MINOR; another major version is rejected.")
    kind: Literal["plan"] = "plan"
    inputs: dict[str, Any] = Field(description="Resolved model, cluster and training inputs with their sha256.")
    parallelism: ParallelismBlock  # type: ignore[valid-type]
    stages: list[StageBlock]
    predicted: dict[str, Any] = Field(description="Same keys as `autopar estimate --format json`.")
    solver: SolverBlock
    reproduce: str = Field(description="The command that reproduces this plan.")


def plan_schema() -> dict:
    return PlanFile.model_json_schema()
