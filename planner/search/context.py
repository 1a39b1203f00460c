"""What every step of the search shares: the problem (``SearchContext``), how a candidate and a
search end (status enums), and the result of solving one candidate (``CandidateResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hardware.cluster import ClusterSpec
from models.graph import LayerGraph, build_graph
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost import memory as mem
from planner.cost.estimate import Estimate
from planner.cost.layer import LayerCost
from planner.cost.schedule import PathCounts
from planner.search.pace import Pace


class CandStatus(StrEnum):
    """How one outer candidate was settled (a str: compares equal to its value)."""

    OPTIMAL = "optimal"  # its placement MILP's bound meets its best plan
    GAP = "gap"  # within the MILP gap target
    TIME_LIMIT = "time_limit"  # its time slice (or the search) ran out; resumable
    STALLED = "stalled"  # no new critical path to cut: more time would not help
    INFEASIBLE = "infeasible"  # no placement fits
    PRUNED_TIME = "pruned_time"  # its closed-form bound cannot beat the incumbent by the gap
    PRUNED_BOUND = "pruned_bound"  # an LP relaxation or the MILP with the cutoff proves it cannot
    PRUNED_MEMORY = "pruned_memory"  # its model states alone exceed the capacity
    HEURISTIC = "heuristic"  # listed with its even-split plan (alternatives only), never placed


class SearchStatus(StrEnum):
    """How a search (or one question of ``explain``) ended."""

    OPTIMAL = "optimal"
    WITHIN_GAP = "within_gap"
    TIME_LIMIT = "time_limit"
    INTERRUPTED = "interrupted"  # Ctrl-C: the best plan so far, with a valid (weaker) bound
    INFEASIBLE = "infeasible"
    NO_CANDIDATES = "no_candidates"


@dataclass(frozen=True)
class SearchContext:
    """One planning problem: model, cluster and training, the layer graph built once, the
    recompute options the placement may use (and how many kept sets it may add), the MILP
    backend and the relative gap target."""

    spec: ModelSpec
    cluster: ClusterSpec
    train: Training
    graph: LayerGraph
    options: tuple[str, ...]
    backend: str = "ortools"
    gap: float = 0.01
    # The backends that answered this problem's MILPs (Solution.backend): the requested one, or
    # the other when it was missing or failed (milp.model.Model.solve falls back); the plan file
    # records them (planner.commands.plan.solver_block).
    solved_with: set[str] = field(default_factory=set, compare=False, repr=False)
    # How long this problem's pieces of work take (planner.search.pace): a heuristic plan, by
    # its schedule's operations, and a MILP or LP, built, handed over and solved, by its
    # nonzeros. One predicted to end past the search's deadline is not started.
    estimate_pace: Pace = field(default_factory=Pace, compare=False, repr=False)
    milp_pace: Pace = field(default_factory=Pace, compare=False, repr=False)
    # Most kept-set options (the block's Pareto front, planner/search/kept_options.py) a
    # memory-bound candidate's placement may add to ``options``; 0: none.
    kept_sets: int = 0

    @staticmethod
    def build(
        spec: ModelSpec,
        cluster: ClusterSpec,
        train: Training,
        options: tuple[str, ...],
        backend: str = "ortools",
        gap: float = 0.01,
        kept_sets: int = 0,
    ) -> SearchContext:
        graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
        return SearchContext(spec, cluster, train, graph, tuple(options), backend, gap, kept_sets=kept_sets)

    @property
    def cap_bytes(self) -> float:
        return mem.capacity_bytes(self.cluster.gpu.hbm_bytes, self.train)


@dataclass
class CandidateResult:
    """What solving (or pruning) one outer candidate established."""

    par: Parallel  # the outer candidate (no placement)
    bound_s: float  # valid lower bound on this candidate's best step time
    status: CandStatus
    best: Estimate | None = None
    iterations: int = 0
    model_size: dict = field(default_factory=dict)
    solve_s: float = 0.0
    cuts: list[tuple[int, PathCounts]] = field(default_factory=list, repr=False)  # to resume an unfinished solve
    # Seconds before the solve could first stop at its deadline (model, LP bounds, first MILP):
    # what a solve of this size costs at least (planner.search.pace).
    first_s: float = 0.0


def step_s(e: Estimate | None) -> float:
    """A plan's step time; inf for no plan."""
    return e.predicted.step_time_s if e is not None else float("inf")


@dataclass
class Candidate:
    """What is known about one outer candidate across the questions asked of it (one per
    candidate in a ``bnb.Pool``): its bounds only rise, its best plan only gets faster."""

    par: Parallel
    costs: list[LayerCost] = field(repr=False)
    lb_s: float  # closed-form lower bound (planner.search.bounds.candidate_bound)
    mem_lb_bytes: float  # model states of an average pipeline rank: above capacity = cannot fit
    bound_s: float  # best valid lower bound on any plan of this candidate
    best: Estimate | None = None
    settled_gap: float = float("inf")  # relative gap to which ``best`` is proven (0: optimal or infeasible)
    last: CandidateResult | None = None  # the latest solve, to resume it
    warmed: bool = False  # a heuristic plan was tried (explain)
    proxy_s: float = 0.0  # ranking heuristic (heuristics.recompute_proxy_s), not a bound

    @property
    def step_s(self) -> float:
        return step_s(self.best)
