"""Consistency checks of one plan file's own records, for `autopar validate` (planner/commands/validate.py).

Each returns findings (JSON path, severity, message with the numbers) instead of raising, so
that validate reports every problem at once:

- ``check_records``: the redundant records of a plan (``RECORDS``) hold; a field whose one other
  value would repair every broken record is named as the likely hand edit;
- ``check_rules``: ``planner.config.check_plan``'s divisibility rules, at the field they are about;
- ``check_stages``: chunk order, pipeline ranks, rank lists, embedding/head placement, and that
  the layer ranges cover [0, num_layers) exactly once with one recompute option per block;
- ``check_summary``: ``parallelism.recompute`` / ``stage_layers`` repeat what ``stages[]`` hold;
- ``check_training``: the recorded training fields the estimate relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from models.spec import ModelSpec
from planner.config import DTYPES, TP_OVERLAP, Parallel, PlanError, Training, check_plan, knob_field
from planner.knobs import BY_JSON, recompute_summary

Severity = Literal["error", "warning"]

# Redundant records of one plan: (fields whose product, what it must equal). A hand edit of one
# degree breaks at least one of them. Targets: GPUs, global batch, ranks per stage, stage count,
# and the micro-batch count the estimate recorded in `predicted`.
RECORDS = (
    (("dp", "tp", "pp", "cp"), "GPUs in the cluster"),
    (("dp", "micro_batch_size", "num_micro_batches"), "global batch (sequences)"),
    (("dp", "cp", "tp"), "ranks listed in stages[0].ranks"),
    (("pp", "virtual_stages"), "stages listed"),
    (("num_micro_batches",), "predicted.num_micro_batches"),
)
RECORD_PATH = (
    "parallelism",
    "parallelism.num_micro_batches",
    "stages[0].ranks",
    "stages",
    "predicted.num_micro_batches",
)


@dataclass(frozen=True)
class Finding:
    field: str  # JSON path in the plan file, e.g. parallelism.tp or predicted.stages[3].memory
    severity: Severity
    message: str


def short_repr(value: Any) -> str:
    """repr() cut to 40 characters, for values quoted in one-line messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_stages(doc: dict, pp: int, num_layers: int) -> list[Finding]:
    """Chunk order, pipeline ranks, rank lists, and that the layer ranges cover the model once."""
    stages, out, end = doc["stages"], [], 0
    if not stages:
        return [Finding("stages", "error", "the plan lists no stages")]
    k = len(stages[0]["ranks"])
    for i, s in enumerate(stages):
        out += _check_stage(s, i, len(stages), pp, k, end)
        end = max(end, s["layers"][1])
    if end != num_layers:
        out.append(
            Finding(
                f"stages[{len(stages) - 1}].layers",
                "error",
                f"the stages cover blocks 0..{end - 1} ({end} blocks) but the model has {num_layers}",
            )
        )
    return out


def _check_stage(s: dict, i: int, n: int, pp: int, k: int, end: int) -> list[Finding]:
    """Stage ``i`` of ``n``: its records, its layer range after the previous stage's ``end``, one
    recompute option per block, and its ``k`` ranks."""
    out, p, (lo, hi) = [], f"stages[{i}]", s["layers"]
    wanted = (
        ("index", i),
        ("pp_rank", i % pp),
        ("virtual_index", i // pp),
        ("has_embedding", i == 0),
        ("has_head", i == n - 1),
    )
    for key, want in wanted:
        if s[key] != want:
            out.append(
                Finding(
                    f"{p}.{key}", "error", f"{p}.{key} is {s[key]!r}, expected {want!r} (chunk {i} of {n}, pp {pp})"
                )
            )
    if lo != end or hi < lo:
        gap = (end, lo - 1) if lo > end else (lo, end - 1)
        span = f"block {gap[0]} is" if gap[0] == gap[1] else f"blocks {gap[0]}..{gap[1]} are"
        what = "reversed" if hi < lo else f"{span} in {'no stage' if lo > end else 'two stages'}"
        out.append(
            Finding(
                f"{p}.layers", "error", f"{p}.layers is [{lo}, {hi}) but the previous stage ends at block {end}: {what}"
            )
        )
    if len(s["recompute"]) != max(hi - lo, 0):
        out.append(
            Finding(
                f"{p}.recompute",
                "error",
                f"{len(s['recompute'])} recompute options for the {max(hi - lo, 0)} blocks of {p}.layers [{lo}, {hi})",
            )
        )
    want_ranks = list(range(i % pp * k, (i % pp + 1) * k))
    if s["ranks"] != want_ranks:
        text = (
            f"{p}.ranks should be {want_ranks[0]}..{want_ranks[-1]} (pipeline rank {i % pp} holds {k} "
            f"consecutive ranks)"
            if k
            else f"{p}.ranks is empty"
        )
        out.append(Finding(f"{p}.ranks", "error", text))
    return out


def check_training(train: Training) -> list[Finding]:
    """The recorded training fields the estimate relies on (their sha256 only says they were edited)."""
    out = []
    value: object
    for key, value in (("global_batch_size", train.global_batch), ("seq_len", train.seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            out.append(
                Finding(
                    f"inputs.training.{key}",
                    "error",
                    f"inputs.training.{key} is {short_repr(value)}: expected a positive integer",
                )
            )
    for key, value, allowed in (
        ("dtype", train.dtype, DTYPES),
        ("attention_impl", train.attention_impl, ("flash", "eager")),
        ("norm_impl", train.norm_impl, ("fused", "unfused")),
        ("tp_overlap", train.tp_overlap, TP_OVERLAP),
    ):
        if value not in allowed:
            out.append(
                Finding(
                    f"inputs.training.{key}",
                    "error",
                    f"inputs.training.{key} is {short_repr(value)}: expected one of {', '.join(allowed)}",
                )
            )
    return out


def check_summary(doc: dict) -> list[Finding]:
    """``parallelism.recompute`` and ``parallelism.stage_layers`` repeat what ``stages[]`` hold."""
    p, stages, out = doc["parallelism"], doc["stages"], []
    per_block = [o for s in stages for o in s["recompute"]]
    rc = p.get("recompute")
    if rc is not None and rc != per_block and not (isinstance(rc, str) and set(per_block) == {rc}):
        out.append(
            Finding(
                "parallelism.recompute",
                "error",
                f"parallelism.recompute ({recompute_summary(rc)}) disagrees "
                f"with stages[].recompute ({recompute_summary(per_block)} of {len(per_block)} blocks)",
            )
        )
    sizes = [s["layers"][1] - s["layers"][0] for s in stages]
    if p.get("stage_layers") is not None and p["stage_layers"] != sizes:
        out.append(
            Finding(
                "parallelism.stage_layers",
                "error",
                f"parallelism.stage_layers {p['stage_layers']} "
                f"disagrees with the blocks per stage in stages[].layers {sizes}",
            )
        )
    return out


def check_records(doc: dict, train: Training, num_gpus: int) -> tuple[list[Finding], dict]:
    """The redundant records (RECORDS) and the likely single edit: a field whose one other value
    would repair every broken record. Returns the findings and {Parallel field: repaired value}."""
    p = doc["parallelism"]
    v = {k: p[k] for k in ("dp", "tp", "pp", "cp", "micro_batch_size", "num_micro_batches", "virtual_stages")}
    m = doc["predicted"].get("num_micro_batches")
    targets = (
        num_gpus,
        train.global_batch,
        len(doc["stages"][0]["ranks"]) if doc["stages"] else 0,
        len(doc["stages"]),
        m if isinstance(m, int) else None,
    )  # None: not recorded, not checked

    def broken(vals: dict) -> list[int]:
        return [
            i
            for i, (fs, _) in enumerate(RECORDS)
            if targets[i] is not None and math.prod(vals[f] for f in fs) != targets[i]
        ]

    bad = broken(v)
    arithmetic = [
        f"{' * '.join(f'{f}({v[f]})' for f in RECORDS[i][0])} = {math.prod(v[f] for f in RECORDS[i][0])}"
        f" != {targets[i]} {RECORDS[i][1]}"
        for i in bad
    ]
    suspects = []
    for name in v if bad else ():
        for i in (i for i in bad if name in RECORDS[i][0]):
            rest = math.prod(v[f] for f in RECORDS[i][0] if f != name)
            want = targets[i] // rest if rest else 0
            if want >= 1 and want * rest == targets[i] and not broken({**v, name: want}):
                suspects.append((name, want))
                break
    if not suspects:
        return [Finding(RECORD_PATH[i], "error", text) for i, text in zip(bad, arithmetic)], {}
    (name, want), others = suspects[0], suspects[1:]
    alt = "".join(f" (or parallelism.{n} should be {w})" for n, w in others)
    finding = Finding(
        f"parallelism.{name}",
        "error",
        f"parallelism.{name} is {v[name]} but the rest of the plan implies {want}{alt}: {'; '.join(arithmetic)}",
    )
    knob = BY_JSON.get(name)
    return [finding], ({knob.name: want} if knob is not None else {})


def check_rules(par: Parallel, train: Training, model: ModelSpec) -> list[Finding]:
    """check_plan's divisibility rules (heads, batch, sequence, experts, pipeline), at the field they are about."""
    try:
        check_plan(par, train, model, par.world)  # the world size is RECORDS[0], checked apart
    except PlanError as exc:
        return [Finding(knob_field(exc.field), "error", str(exc))]
    return []
