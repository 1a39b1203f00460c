"""Rows of `autopar explain` that need no search: the binding constraint, per-stage recompute
forced to each option, and the figures every row carries (Δ step time and memory against the plan).

* Recompute per stage: every block of one pipeline stage forced to none / selective / full on
  the chosen plan, scored by ``estimate``.
* Binding constraints: the stage with the least memory headroom, and whether memory or time
  binds: one block of that stage one allowed recompute level lower (the smallest move towards a
  faster step) no longer fits (memory binds), or still fits or there is none to lower (time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.spec import ModelSpec
from planner.cost.estimate import Estimate, estimate
from planner.cost.records import time_components
from planner.kept_sets import is_kept_set
from planner.knobs import RECOMPUTE_OPTIONS, recompute_summary
from planner.planfile.build import parallel_dict

GiB = 2**30


@dataclass
class ExplainReport:
    """What `explain` (or `explain --infeasible`) found: the report document (``--format json``),
    whether the plan fits (a negative verdict exits 1) and the wall time."""

    doc: dict[str, Any]
    fits: bool
    wall_s: float
    interrupted: bool = False  # Ctrl-C: a partial report (the CLI prints it, then exits 130)


def delta_row(base: Estimate, e: Estimate) -> dict:
    """``e``'s figures and their change against ``base``, with ``e``'s plan."""
    p, b = e.predicted, base.predicted
    return {
        "step_time_s": p.step_time_s,
        "delta_step_time_s": p.step_time_s - b.step_time_s,
        "delta_step_time_pct": 100 * (p.step_time_s / b.step_time_s - 1),
        "tokens_per_s": p.tokens_per_s,
        "peak_memory_bytes": p.peak_memory_bytes,
        "delta_peak_memory_bytes": p.peak_memory_bytes - b.peak_memory_bytes,
        "memory_capacity_bytes": p.memory_capacity_bytes,
        "plan": e.par.describe("full"),
        "parallelism": parallel_dict(e.par, p.num_micro_batches),
    }


def over_text(e: Estimate) -> str:
    r, over = max(e.over, key=lambda x: x[1])
    cap = e.predicted.memory_capacity_bytes
    return f"stage {r} needs {(cap + over) / GiB:.2f} GiB, {over / GiB:.2f} GiB over the {cap / GiB:.2f} GiB usable"


def recompute_rows(spec: ModelSpec, base: Estimate) -> list[dict]:
    """Every block of one stage forced to each recompute option, the rest of the plan unchanged."""
    blocks = [base.par.recompute_of(i) for i in range(spec.num_layers)]
    out = []
    for ch in base.chunks:
        ids = range(ch.first_block, ch.first_block + ch.num_blocks)
        chosen: list[str] = [blocks[i] for i in ids]
        row: dict[str, Any] = {
            "stage": ch.index,
            "pp_rank": ch.pp_rank,
            "layers": [ch.first_block, ch.first_block + ch.num_blocks],
            "chosen": recompute_summary(chosen) if chosen else "-",
            "alternatives": [],
        }
        for opt in RECOMPUTE_OPTIONS:
            if not chosen or all(x == opt for x in chosen):
                continue
            rc = tuple(opt if i in ids else o for i, o in enumerate(blocks))
            e = estimate(spec, base.cluster, base.train, base.par.with_(recompute=rc))
            row["alternatives"].append(
                {
                    "value": opt,
                    "status": "fits" if e.fits else "does_not_fit",
                    "reason": None if e.fits else over_text(e),
                    **delta_row(base, e),
                }
            )
        out.append(row)
    return out


def _lowered_block(base: Estimate, rank: int, allowed: tuple[str, ...]) -> tuple[int, str, str] | None:
    """(block, its option, the next allowed option below it) on ``rank``: the strongest recompute
    there, last block first; None when nothing on the rank can recompute less."""
    opts: list[str | None] = [o for o in RECOMPUTE_OPTIONS if o in allowed]  # least first
    lower: dict[str, str | None] = {
        o: ([x for x in opts if RECOMPUTE_OPTIONS.index(x) < RECOMPUTE_OPTIONS.index(o)] or [None])[-1]
        for o in RECOMPUTE_OPTIONS
    }
    ids = [i for ch in base.chunks if ch.pp_rank == rank for i in range(ch.first_block, ch.first_block + ch.num_blocks)]
    # A kept set (planner/kept_sets.py) ranks between selective and full; lowered, it keeps all (none).
    kept = {o: "none" if "none" in allowed else None for i in ids if is_kept_set(o := base.par.recompute_of(i))}
    lower |= kept
    strength = {o: RECOMPUTE_OPTIONS.index(o) for o in RECOMPUTE_OPTIONS} | {o: 1.5 for o in kept}
    movable = [i for i in ids if lower[base.par.recompute_of(i)] is not None]
    block = max(movable, key=lambda i: (strength[base.par.recompute_of(i)], i), default=None)
    if block is None:
        return None
    old = base.par.recompute_of(block)
    new = lower[old]
    assert new is not None  # the block is movable
    return block, old, new


def binding(spec: ModelSpec, base: Estimate, allowed: tuple[str, ...]) -> dict:
    """Tightest stage, its headroom, and whether memory or time binds (module docstring)."""
    p = base.predicted
    cap = p.memory_capacity_bytes
    stages: list[dict[str, Any]] = [
        {"pp_rank": s.pp_rank, "used_bytes": s.memory.total_bytes, "headroom_bytes": cap - s.memory.total_bytes}
        for s in p.stages
    ]
    tight = min(stages, key=lambda s: s["headroom_bytes"])
    r = tight["pp_rank"]
    used = (
        f"stage {r} uses {tight['used_bytes'] / GiB:.2f} of {cap / GiB:.2f} GiB "
        f"({tight['headroom_bytes'] / GiB:.2f} GiB headroom)"
    )
    comps = time_components(p)
    top = max(comps, key=lambda k: comps[k])
    out = {
        "tightest_stage": r,
        "stages": stages,
        "capacity_bytes": cap,
        "time_components_s": comps,
        "largest_time_component": top,
        "relaxation": None,
    }
    move = _lowered_block(base, r, allowed)
    if not base.fits:
        return {**out, "binds": "memory", "text": f"the plan does not fit under these inputs: {over_text(base)}"}
    if move is None:
        return {
            **out,
            "binds": "time",
            "text": f"{used}; no recompute to lower on it, so memory does not bind: "
            f"the step is set by time, largest component {top} ({comps[top]:.3f} s of {p.step_time_s:.3f} s)",
        }
    block, old, new = move
    rc = tuple(new if i == block else base.par.recompute_of(i) for i in range(spec.num_layers))
    e = estimate(spec, base.cluster, base.train, base.par.with_(recompute=rc))
    d = p.step_time_s - e.predicted.step_time_s
    out["relaxation"] = {
        "block": block,
        "from": old,
        "to": new,
        "saves_s": d,
        "fits": e.fits,
        "peak_memory_bytes": e.predicted.peak_memory_bytes,
    }
    text = f"one block less recompute (block {block} {old} → {new}) would save {d:.3f} s per step"
    if not e.fits:
        return {**out, "binds": "memory", "text": f"{used}; {text} but {over_text(e)}"}
    return {
        **out,
        "binds": "time",
        "text": f"{used}; {text} and still fit, so memory does not bind here "
        f"(within the search's gap); largest time component {top} ({comps[top]:.3f} s)",
    }
