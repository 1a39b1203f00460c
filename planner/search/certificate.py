"""The certificate of a search: incumbent, best bound over every candidate, relative gap, and how
each candidate was settled (``solver.certificate`` in plan files)."""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost.estimate import Estimate
from planner.knobs import SPACE_KNOBS
from planner.records import JsonRecord
from planner.search.context import CandidateResult, CandStatus, SearchStatus, step_s
from planner.search.solve import OPT_TOL


@dataclass(frozen=True)
class DeeperRecord(JsonRecord):
    """Deeper interleaving after the search (planner.search.polish): virtual stages and step times
    before and after, and the virtual-stage counts the searched space (the bound) covers."""

    vpp: tuple[int, int]
    searched_vpp: tuple[int, ...]
    step_time_s: tuple[float, float]


@dataclass(frozen=True)
class OutsideRecord(JsonRecord):
    """A plan outside the searched space that beats the plan (``polish.probe_outside``): the knob,
    its value, and that plan's step time. The bound does not cover it: the knob's flag widens it."""

    knob: str
    value: int
    step_time_s: float
    flag: str


@dataclass(frozen=True)
class Certificate(JsonRecord):
    status: SearchStatus
    incumbent_s: float | None
    best_bound_s: float | None
    gap: float | None  # (incumbent − bound) / incumbent; negative when deeper interleaving beat the space
    gap_target: float
    candidates: int
    rejected_invalid: int
    settled: dict[str, int]  # candidates per CandStatus
    pruned_by_time_bound: int
    pruned_by_memory_bound: int
    pruned_by_milp_bound: int
    deeper_interleaving: DeeperRecord | None = field(default=None, metadata={"omit_none": True})
    # The values each knob took across the searched candidates: the space the bound speaks of.
    space: dict[str, list] = field(default_factory=dict)
    outside_space: tuple[OutsideRecord, ...] = ()


def searched_space(results: list[CandidateResult]) -> dict[str, list]:
    """Per searched knob, the sorted values its candidates took (``Certificate.space``)."""
    out: dict[str, set] = {}
    for r in results:
        for name in SPACE_KNOBS:
            if name in ("recompute", "stage_layers"):
                continue
            out.setdefault(name, set()).add(getattr(r.par, name))
    return {k: sorted(v, key=str) for k, v in out.items()}


def certify(
    results: list[CandidateResult],
    incumbent: Estimate | None,
    rejected: int,
    gap_target: float,
    deeper: DeeperRecord | None = None,
    outside: tuple[OutsideRecord, ...] = (),
) -> Certificate:
    """Incumbent, best bound over every candidate, relative gap, and how candidates were settled.
    With ``deeper`` the plan came from deeper interleaving, outside the searched space; the bound
    is then the searched space's, and a negative gap says by how much the plan beats all of it."""
    inc = step_s(incumbent) if incumbent is not None else None
    bounds = [r.bound_s for r in results if r.status not in (CandStatus.INFEASIBLE, CandStatus.PRUNED_MEMORY)]
    best_bound = min(bounds) if bounds else None
    if inc is not None and best_bound is not None and deeper is None:
        best_bound = min(best_bound, inc)
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    gap = (inc - best_bound) / inc if inc and best_bound is not None else None
    if inc is None:
        status = SearchStatus.INFEASIBLE
    elif gap is not None and gap <= OPT_TOL:
        status = SearchStatus.OPTIMAL
    elif gap is not None and gap <= gap_target:
        status = SearchStatus.WITHIN_GAP
    else:
        status = SearchStatus.TIME_LIMIT
    return Certificate(
        status,
        inc,
        best_bound,
        gap,
        gap_target,
        len(results),
        rejected,
        counts,
        counts.get(CandStatus.PRUNED_TIME, 0),
        counts.get(CandStatus.PRUNED_MEMORY, 0),
        counts.get(CandStatus.PRUNED_BOUND, 0),
        deeper,
        searched_space(results),
        outside,
    )
