"""The one acceptance test of a plan file: what `autopar run` executes and `autopar validate`
accepts are the same rules, here (torch-free; runtime/plan_io.py and planner/commands/validate.py
both call ``accept_plan``).

Only the keys below are read; ``inputs.cluster`` and ``predicted`` are carried, not checked.
Every error names the offending field and shows the arithmetic of a broken invariant.

    schema_version            "1.x" (1.0 files lack the keys later minor versions added)
    inputs.model              ModelSpec fields
    inputs.training           global_batch_size, seq_len, dtype, seed
    parallelism               every knob of ``planner.knobs.KNOBS`` with an int, bool or choice
                              value, under its ``json_key`` (types, bounds and choices from the
                              registry; a key newer than 1.0 that is absent takes its default),
                              plus num_micro_batches
    stages[i]                 index, pp_rank (= i % pp), virtual_index (= i // pp),
                              layers [lo, hi) with at least one block (contiguous, covering all
                              blocks), has_embedding (first only), has_head (last only),
                              recompute (one per block: none, selective, full or, since
                              1.3, a kept set keep:<tensor>+<tensor>)

``runtime_limits`` lists what the bundled runtime does not implement (fp8): a valid plan it
cannot run, which `validate` reports as warnings.
"""

from __future__ import annotations

from typing import Any

from models.errors import SpecError
from models.spec import ModelSpec
from planner.kept_sets import check_kept_value, is_kept_set, runtime_refusal
from planner.knobs import KNOBS, RECOMPUTE_OPTIONS, Knob
from planner.planfile.schema import MAJOR as SCHEMA_MAJOR
from planner.schedules import SCHEDULES

FIRST_VERSION = "1.0"
DTYPE_NAMES = ("fp32", "bf16", "fp16")
RECOMPUTE = RECOMPUTE_OPTIONS
# Knobs read from ``parallelism``; per-block recompute and the layer split come from ``stages[]``.
PARALLELISM_KNOBS: tuple[Knob, ...] = tuple(k for k in KNOBS if k.kind in ("int", "bool", "choice"))
_TYPES = {"int": int, "bool": bool, "choice": str}


class PlanRejected(ValueError):
    """A plan the runtime cannot execute; the message names the field."""


def _recompute_ok(value: Any) -> bool:
    """One of the three options, or a canonical kept set (planner/kept_sets.py, schema 1.3)."""
    if value in RECOMPUTE:
        return True
    try:
        return is_kept_set(value) and check_kept_value(value) == value
    except SpecError:
        return False


def _get(d: dict, path: str, kind: type | tuple[type, ...]) -> Any:
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PlanRejected(f"plan is missing field {path!r}")
        node = node[part]
    if kind is int and isinstance(node, bool) or not isinstance(node, kind):
        raise PlanRejected(f"plan field {path!r} must be {getattr(kind, '__name__', kind)}, got {node!r}")
    return node


def read_parallelism(plan: dict) -> dict:
    """``plan["parallelism"]`` with the defaults of absent keys newer than 1.0 filled in (a new
    dict; e.g. ``dp_replicate`` 1 for a 1.0 file). Read knobs through this, not the raw block."""
    p = plan["parallelism"]
    missing = {k.json_key: k.default for k in PARALLELISM_KNOBS if k.since != FIRST_VERSION and k.json_key not in p}
    return {**p, **missing}


def world_size(plan: dict) -> int:
    p = plan["parallelism"]
    return p["dp"] * p["tp"] * p["pp"] * p["cp"]


def world_size_arithmetic(plan: dict) -> str:
    p = plan["parallelism"]
    return f"dp({p['dp']}) * tp({p['tp']}) * pp({p['pp']}) * cp({p['cp']}) = {world_size(plan)}"


def model_spec(plan: dict) -> ModelSpec:
    try:
        return ModelSpec.model_validate(plan["inputs"]["model"])
    except ValueError as e:
        raise PlanRejected(f"plan field 'inputs.model' is not a valid ModelSpec: {e}") from e


def _check_knob(plan: dict, k: Knob) -> None:
    """One knob's value against the registry: type, bounds, choices (absent newer keys: default)."""
    path = f"parallelism.{k.json_key}"
    if k.since != FIRST_VERSION and k.json_key not in _get(plan, "parallelism", dict):
        return
    value = _get(plan, path, _TYPES[k.kind])
    if k.kind == "int":
        if k.maximum is not None and not k.minimum <= value <= k.maximum:
            raise PlanRejected(f"plan field {path!r} must be {k.minimum}..{k.maximum}, got {value}")
        if value < k.minimum:
            raise PlanRejected(f"plan field {path!r} must be >= {k.minimum}, got {value}")
    elif k.kind == "choice" and value not in k.choices:
        raise PlanRejected(f"plan field {path!r} must be one of {k.choices}, got {value!r}")


def _check_schedule(p: dict) -> None:
    """The schedule's rules, read from its registry entry (``planner.schedules``)."""
    sched, pp, n, v = SCHEDULES[p["schedule"]], p["pp"], p["num_micro_batches"], p["virtual_stages"]
    if v > 1 and not sched.virtual_stages:
        names = " or ".join(repr(s.name) for s in SCHEDULES.values() if s.virtual_stages)
        raise PlanRejected(f"plan field 'parallelism.virtual_stages' ({v}) > 1 needs schedule {names}")
    if pp > 1 and sched.min_microbatches_pp and n < pp:
        raise PlanRejected(
            f"plan field 'parallelism.num_micro_batches' ({n}) < pp ({pp}): "
            f"schedule {sched.name!r} needs at least one micro-batch per stage"
        )
    if pp > 1 and sched.microbatches_multiple_of_pp and n % pp:
        raise PlanRejected(
            f"plan field 'parallelism.num_micro_batches' ({n}) % pp ({pp}) = {n % pp}: "
            f"schedule {sched.name!r} runs micro-batches in groups of pp"
        )


def _check_hsdp(p: dict) -> None:
    """HSDP: dp_replicate replicas of a ZeRO-2/3 shard group of dp / dp_replicate ranks."""
    r, dp, zero = p["dp_replicate"], p["dp"], p["zero_stage"]
    if r > 1 and zero < 2:
        raise PlanRejected(
            f"plan field 'parallelism.dp_replicate' ({r}) > 1 needs zero_stage 2 or 3, got zero_stage {zero}: "
            f"HSDP replicates a sharded model and ZeRO-{zero} shards no gradients or weights"
        )
    if dp % r:
        raise PlanRejected(
            f"plan field 'parallelism.dp_replicate' ({r}) must divide dp ({dp}): dp % dp_replicate = {dp % r}"
        )


def _check_parallelism(plan: dict) -> None:
    for k in PARALLELISM_KNOBS:
        _check_knob(plan, k)
    if _get(plan, "parallelism.num_micro_batches", int) < 1:
        raise PlanRejected("plan field 'parallelism.num_micro_batches' must be >= 1")
    p, t = read_parallelism(plan), plan["inputs"]["training"]
    expected = p["dp"] * p["micro_batch_size"] * p["num_micro_batches"]
    if t["global_batch_size"] != expected:
        raise PlanRejected(
            f"plan field 'inputs.training.global_batch_size' ({t['global_batch_size']}) != dp({p['dp']}) * "
            f"micro_batch_size({p['micro_batch_size']}) * num_micro_batches({p['num_micro_batches']}) = {expected}"
        )
    _check_schedule(p)
    _check_hsdp(p)
    _check_context_expert(p, t["seq_len"], model_spec(plan))
    local = t["seq_len"] // p["cp"]  # tokens of a sequence on one cp rank, split again by SP
    if p["sequence_parallel"] and p["tp"] > 1 and local % p["tp"]:
        raise PlanRejected(
            f"sequence parallel: seq_len/cp ({t['seq_len']}/{p['cp']} = {local}) % tp ({p['tp']}) = {local % p['tp']}"
        )


def _check_context_expert(p: dict, seq_len: int, spec: ModelSpec) -> None:
    """cp: the sequence splits into 2·cp equal chunks (load-balanced causal chunking). ep: the
    experts split evenly over ep ranks carved out of one HSDP replica's dp·cp ranks."""
    cp, ep = p["cp"], p["ep"]
    if seq_len % (2 * cp) and cp > 1:
        raise PlanRejected(
            f"plan field 'parallelism.cp' ({cp}): seq_len ({seq_len}) % 2*cp ({2 * cp}) = {seq_len % (2 * cp)}; "
            "each cp rank holds two equal chunks of every sequence"
        )
    if ep == 1:
        return
    if spec.moe is None:
        raise PlanRejected(f"plan field 'parallelism.ep' ({ep}) > 1 needs a mixture-of-experts model")
    shard = p["dp"] * cp // p["dp_replicate"]
    if spec.moe.num_experts % ep or shard % ep:
        raise PlanRejected(
            f"plan field 'parallelism.ep' ({ep}) must divide num_experts ({spec.moe.num_experts}) and "
            f"dp*cp/dp_replicate ({p['dp']}*{cp}/{p['dp_replicate']} = {shard})"
        )


def _check_stages(plan: dict, num_layers: int) -> None:
    stages = _get(plan, "stages", list)
    p = plan["parallelism"]
    expected = p["pp"] * p["virtual_stages"]
    if len(stages) != expected:
        raise PlanRejected(
            f"plan field 'stages' has {len(stages)} entries; "
            f"pp({p['pp']}) * virtual_stages({p['virtual_stages']}) = {expected}"
        )
    next_layer = 0
    for i, st in enumerate(stages):
        where = f"stages[{i}]"
        for key, want in (("index", i), ("pp_rank", i % p["pp"]), ("virtual_index", i // p["pp"])):
            if _get(st, key, int) != want:
                raise PlanRejected(
                    f"plan field '{where}.{key}' is {st[key]}, expected {want} (chunk i lives on pp_rank i % pp)"
                )
        layers = _get(st, "layers", list)
        if len(layers) != 2 or layers[0] != next_layer or not layers[0] < layers[1] <= num_layers:
            raise PlanRejected(
                f"plan field '{where}.layers' {layers} must be [{next_layer}, hi) with hi <= {num_layers}"
            )
        next_layer = layers[1]
        for key, want in (("has_embedding", i == 0), ("has_head", i == len(stages) - 1)):
            if _get(st, key, bool) != want:
                raise PlanRejected(f"plan field '{where}.{key}' must be {want}")
        recompute = _get(st, "recompute", list)
        if len(recompute) != layers[1] - layers[0] or any(not _recompute_ok(r) for r in recompute):
            n = layers[1] - layers[0]
            raise PlanRejected(
                f"plan field '{where}.recompute' must list one of {RECOMPUTE} or a kept set keep:<tensor>+<tensor> per block ({n})"
            )
    if next_layer != num_layers:
        raise PlanRejected(f"plan field 'stages' covers blocks [0, {next_layer}) of {num_layers}")


def accept_plan(plan: dict) -> dict:
    """Check every key the runtime reads and every rule a plan must meet; returns ``plan``
    unchanged (PlanRejected names the field)."""
    version = _get(plan, "schema_version", str)
    if version.split(".")[0] != SCHEMA_MAJOR:
        raise PlanRejected(f"plan field 'schema_version' is {version!r}; this runtime reads {SCHEMA_MAJOR}.x")
    spec = model_spec(plan)
    for name in ("global_batch_size", "seq_len", "seed"):
        _get(plan, f"inputs.training.{name}", int)
    _get(plan, "inputs.training.dtype", str)
    seq_len = plan["inputs"]["training"]["seq_len"]
    if not 1 <= seq_len <= spec.max_seq_len:
        raise PlanRejected(
            f"plan field 'inputs.training.seq_len' ({seq_len}) must be in [1, max_seq_len={spec.max_seq_len}]"
        )
    accept_layout(plan, spec.num_layers)
    return plan


def accept_layout(plan: dict, num_layers: int) -> None:
    """The parallelism and stage rules alone (every command reading a plan applies them: a plan
    with 10**9 micro-batches or a float degree is refused by `export` as by `run`)."""
    _check_parallelism(plan)
    _check_stages(plan, num_layers)


def runtime_limits(plan: dict) -> list[tuple[str, str]]:
    """(field, message) for each setting of an accepted plan the bundled runtime does not run."""
    out = []
    dtype = plan["inputs"]["training"]["dtype"]
    if dtype not in DTYPE_NAMES:
        out.append(("inputs.training.dtype", f"autopar run executes {', '.join(DTYPE_NAMES)}, not {dtype}"))
    for i, st in enumerate(plan["stages"]):
        why = next((w for r in dict.fromkeys(st["recompute"]) if is_kept_set(r) and (w := runtime_refusal(r))), None)
        if why:
            out.append((f"stages[{i}].recompute", why))
    return out
