"""What every runtime export needs from a plan file: the typed inputs, the chunks, the recompute
pattern, and the result record the targets return.

A plan chunk is one pipeline stage of one virtual stage (chunk j on pipeline rank j mod pp, the
Megatron-LM / torch.distributed.pipelining "loop" order). Recompute is one option per block; the
runtimes express far less than that, so :func:`recompute_pattern` reduces it to what they can say
(one option for all blocks, or "the first k blocks of every chunk recompute fully") and every
target turns the rest into notes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hardware.cluster import ClusterSpec
from models.spec import ModelSpec
from planner.config import Parallel, Training, check_plan
from planner.kept_sets import is_kept_set
from planner.knobs import recompute_summary
from planner.planfile.load import load_plan, plan_inputs

# Stronger options save more activation memory (Korthikanti et al. 2022, table 2): a fallback
# may only move a block to a stronger option, so the exported run never needs more memory.


@dataclass(frozen=True)
class Chunk:
    """One model chunk of the plan: blocks [first, first + num_blocks), one option per block."""

    index: int
    pp_rank: int
    first: int
    num_blocks: int
    has_embedding: bool
    has_head: bool
    recompute: tuple[str, ...]


@dataclass(frozen=True)
class PlanView:
    """A loaded, re-checked plan: specs, degrees and chunks, plus where it came from."""

    source: str
    model: ModelSpec
    cluster: ClusterSpec
    train: Training
    par: Parallel
    chunks: tuple[Chunk, ...]
    num_micro_batches: int
    fits: bool | None  # the plan's own prediction; None when the file does not say

    @property
    def even_split(self) -> bool:
        """Every chunk holds the same number of blocks (what runtimes do without being told)."""
        return len({c.num_blocks for c in self.chunks}) == 1

    @property
    def title(self) -> str:
        return (
            f"{self.model.name} on {self.cluster.num_gpus} x {self.cluster.gpu.name}: "
            f"{self.par.describe('long', self.num_micro_batches)}"
        )


@dataclass(frozen=True)
class RecomputePattern:
    """What a runtime can express: ``mode`` for every block, or ``block_full`` = k (the first k
    blocks of each chunk recompute fully, the rest not). ``exact`` says whether that equals the
    plan block for block; ``detail`` describes the plan when it does not."""

    mode: str  # none | selective | full
    block_full: int | None
    exact: bool
    detail: str


@dataclass
class Export:
    """One target's configuration: ``text`` is the file the runtime reads, ``config`` the same
    content as data (dict or argument list), ``notes`` every plan setting with no equivalent."""

    target: str
    text: str
    config: dict | list
    notes: list[str] = field(default_factory=list)


def load_view(path: Path) -> PlanView:
    """Load a plan file (schema, version and input hashes checked) and re-check its degrees."""
    doc = load_plan(path)
    model, cluster, train, par = plan_inputs(doc)
    check_plan(par, train, model, cluster.num_gpus)
    chunks = tuple(
        Chunk(
            s["index"],
            s["pp_rank"],
            s["layers"][0],
            s["layers"][1] - s["layers"][0],
            s["has_embedding"],
            s["has_head"],
            tuple(s["recompute"]),
        )
        for s in doc["stages"]
    )
    pred = doc.get("predicted", {})
    fits = None
    if "peak_memory_bytes" in pred and "memory_capacity_bytes" in pred:
        fits = pred["peak_memory_bytes"] <= pred["memory_capacity_bytes"]
    return PlanView(str(path), model, cluster, train, par, chunks, doc["parallelism"]["num_micro_batches"], fits)


def recompute_pattern(view: PlanView) -> RecomputePattern:
    """Reduce per-block recompute to what runtimes express, never to less memory saving.

    Rules: one option everywhere -> that option (exact). Only none/full with the same count k of
    full blocks in every chunk -> block k (exact up to which k blocks). Otherwise every chunk gets
    its recomputing blocks (selective or full) as full, k = the largest count -> block k, or, when
    no block is full, selective everywhere; both save at least the plan's activation memory."""
    opts = [o for c in view.chunks for o in c.recompute]
    used = Counter(opts)
    detail = recompute_summary(opts) if opts else ""
    if any(is_kept_set(o) for o in used):
        # No target names a kept set (planner/kept_sets.py): its blocks recompute fully, which
        # keeps only the block input, less than any kept set.
        return RecomputePattern("full", max(sum(o != "none" for o in c.recompute) for c in view.chunks), False, detail)
    if len(used) <= 1:
        return RecomputePattern(opts[0] if opts else "none", None, True, detail)
    per_chunk = [sum(o != "none" for o in c.recompute) for c in view.chunks]
    if "full" not in used:
        return RecomputePattern("selective", None, False, detail)
    if "selective" not in used and len(set(per_chunk)) == 1:
        exact = all(c.recompute[: per_chunk[0]] == ("full",) * per_chunk[0] for c in view.chunks)
        return RecomputePattern("full", per_chunk[0], exact, detail)
    return RecomputePattern("full", max(per_chunk), False, detail)


def recompute_note(
    view: PlanView, pat: RecomputePattern, target: str, emitted: str, block_ok: bool = False
) -> str | None:
    """The note a target adds when its recompute setting is not the plan's, block for block
    (``block_ok``: the target states "first k blocks of every chunk", as Megatron-LM does)."""
    if pat.exact and (pat.block_full is None or block_ok):
        return None
    counts = "/".join(str(sum(o != "none" for o in c.recompute)) for c in view.chunks)
    kept = any(is_kept_set(o) for c in view.chunks for o in c.recompute)
    why = "keeps chosen tensors per block (kept sets)" if kept else "mixes options per block"
    again = "; re-plan with --recompute none,selective,full for an export that matches the plan" if kept else ""
    return (
        f"recompute: the plan {why} ({pat.detail}; recomputing blocks per chunk "
        f"{counts}); {target} cannot express that, so the export uses {emitted}: at least as many blocks per "
        f"chunk recompute, at least as strongly (same or less activation memory, some extra recompute time){again}"
    )


def tp_overlap_note(view: PlanView, target: str, how: str) -> list[str]:
    """A note when the plan was priced with TP collectives under their GEMMs (``training.tp_overlap``
    backward: Megatron-LM's async communication; full: also forward, Transformer Engine's
    ``--tp-comm-overlap``) but ``target`` runs them ``how``."""
    if view.par.tp == 1 or view.train.tp_overlap == "none":
        return []
    which = "backward TP collectives" if view.train.tp_overlap == "backward" else "TP collectives"
    return [
        f"tp_overlap {view.train.tp_overlap}: the plan hides {which} under their GEMMs, as Megatron "
        f"does; {how}. Re-plan with --set training.tp_overlap=none for {target} step times"
    ]


def common_notes(view: PlanView) -> list[str]:
    """Notes every target shares."""
    notes = []
    if view.fits is False:
        notes.append(
            "the plan is predicted NOT to fit in memory (predicted.peak_memory_bytes > "
            "memory_capacity_bytes); the exported configuration will likely run out of memory"
        )
    return notes
