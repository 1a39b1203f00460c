"""The plan as a target runs it, priced again with the cost model.

A target that cannot state a plan setting exports the nearest one it has (every block recomputed
in full, FSDP2 for ZeRO-1, 1F1B for GPipe, exposed TP collectives, ...). Each exporter records
those changes in an :class:`AsRun`, the plan's ``Parallel`` and ``Training`` with the target's
values and one phrase per change; :func:`rescore_note` prices both with
``planner.cost.estimate.estimate`` and states the exported run's step time next to the plan's,
so no export changes a plan silently. Differences the cost model has no knob for (torchtitan's
per-op selective recompute, experts that are not split over tp) stay notes without a figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from models.errors import SpecError
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.export.common import PlanView

GIB = 2**30


@dataclass
class AsRun:
    """What the exported configuration runs: the plan's knobs with the target's values."""

    par: Parallel
    train: Training
    changes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, view: PlanView) -> AsRun:
        return cls(view.par, view.train)

    def set(self, what: str, **knobs: Any) -> None:
        """Change ``Parallel`` knobs (``recompute=...``, ``zero=...``) and say why in ``what``."""
        self.par = self.par.with_(**knobs)
        self.changes.append(what)

    def set_training(self, what: str, **fields: Any) -> None:
        """Change ``Training`` fields (``tp_overlap=...``, ``dtype=...``) and say why in ``what``."""
        self.train = replace(self.train, **fields)
        self.changes.append(what)


def rescore_note(view: PlanView, run: AsRun, target: str) -> list[str]:
    """One note pricing the exported run against the plan (both with the current cost model), or
    none when the export runs the plan as planned."""
    if not run.changes:
        return []
    changed = "; ".join(run.changes)
    try:
        plan = estimate(view.model, view.cluster, view.train, view.par)
        ran = estimate(view.model, view.cluster, run.train, run.par)
    except SpecError as exc:
        return [f"re-scored: {target} runs the plan with {changed}; the cost model cannot price that ({exc})"]
    t_plan, t_run = plan.predicted.step_time_s, ran.predicted.step_time_s
    m_plan, m_run = plan.predicted.peak_memory_bytes / GIB, ran.predicted.peak_memory_bytes / GIB
    fits = "fits" if ran.fits else "does NOT fit"
    return [
        f"re-scored: {target} runs the plan with {changed}; step time {t_run:.3g} s vs the plan's "
        f"{t_plan:.3g} s ({percent(t_run, t_plan)}), peak memory {m_run:.1f} GiB vs {m_plan:.1f} GiB ({fits})"
    ]


def percent(new: float, old: float) -> str:
    """``+28%`` / ``-3%`` / ``+0%``: how much ``new`` differs from ``old``."""
    return f"{(new / old - 1) * 100:+.0f}%" if old else "n/a"
