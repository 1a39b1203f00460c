"""Kept-set recompute options for a memory-bound candidate: the points of its block's
(recompute seconds, kept bytes) Pareto front that the placement MILP may choose per block beside
none / selective / full.

Which kept sets. The runtime keeps a tensor by saving the output of the aten op that made it
(``runtime/recompute.py``), so the sets considered are unions of *units*: each matmul output
(q, k, v, the attention out-projection, gate, up / fc1, down / fc2) and the attention kernel's
outputs together (context and log-sum-exp come from one SDPA call). With ``u`` units (8 for a
gated block, 6 for a GPT block) all ``2^u`` sets are priced by their closure
(``cost.kept_set.kept_set_prices``, no solver) and their front is exact for that family; the
two-phase program (``milp/recompute.py``) over all tensors reaches further but costs a CP-SAT
sweep per candidate (0.4-1.4 s), which the plan-speed targets do not allow.

Which points. The lower convex hull of the front together with the three hand-written options
(memory against time): a count of blocks mixes two hull points, which reaches every average
between them, so a point above the hull is never needed by the MILP's LP relaxation. Of the kept
sets on that hull strictly between ``full``'s and ``none``'s bytes, only those next to the bytes
per block that would just fit a rank (``block_targets``, from the even split's peaks under none
and under full) are added, at most ``MAX_KEPT_SETS`` and ``KEPT_SET_CHUNKS`` / chunks: every
option adds integers to each stage's block counts, and with four spread over the whole range the
search for gpt3-175b on 1,024 A100s went from 40 s past its 120 s limit (docs/search.md). Only
for candidates where recompute ``none`` on the even split does not fit: elsewhere none is
feasible and no kept set is faster than it. The certificate covers what each candidate was
solved with: kept sets where they were added, the three options elsewhere.
"""

from __future__ import annotations

import itertools

from planner.config import Parallel
from planner.cost import memory as mem
from planner.cost.estimate import rank_memory_bytes
from planner.cost.kept_set import block_graph, kept_set_prices, with_kept_sets
from planner.cost.layer import LayerCost
from planner.kept_sets import kept_value
from planner.knobs import RECOMPUTE_OPTIONS, Knobs
from planner.search.context import SearchContext

Point = tuple[float, float, str]  # (recompute seconds, kept bytes, option)
# Kept sets a memory-bound candidate may add (bench/plan_speed.py and bench/recompute_options.py
# measured with it; docs/search.md).
MAX_KEPT_SETS = 4
# Kept sets × model chunks a candidate's MILP may carry: each kept set adds one block-count
# integer per chunk, and deep pipelines' MILPs grow slow with them (gpt3-175b on 1,024 A100s,
# pp 32 · v 2: one candidate 9 s → 39 s with one kept set; llama3-405b on 1,024 H100s, pp 16 ·
# v 2: past the 60 s limit with one); 16 allows 4 kept sets up to 4 chunks, 2 at 8, 1 at 16.
KEPT_SET_CHUNKS = 16


def kept_sets_allowed(knobs: Knobs) -> int:
    """How many kept sets a search may add: ``MAX_KEPT_SETS``, or none when the user fixed
    ``--recompute`` (their list is kept as given)."""
    return MAX_KEPT_SETS if knobs.given("recompute") is None else 0


def units(ctx: SearchContext) -> list[tuple[str, ...]]:
    """The kept-set building blocks of this model's block (module docstring)."""
    layer = ctx.graph.blocks[0]
    names = [x.name for x in layer.saved if x.mm_output]
    core = tuple(n for n in names if n in ("attn.context", "attn.lse"))
    return [(n,) for n in names if n not in core] + ([core] if core else [])


def front_points(ctx: SearchContext, par: Parallel, cost: LayerCost) -> list[Point]:
    """Every kept set of the unit family, priced; the non-dominated ones, fastest first."""
    layer = ctx.graph.blocks[0]
    us = units(ctx)
    values = tuple(
        kept_value(n for u, b in zip(us, bits) if b for n in u) for bits in itertools.product((0, 1), repeat=len(us))
    )
    prices = kept_set_prices(layer, ctx.graph, ctx.cluster, ctx.train, par, cost, values)
    out: list[Point] = []
    for t, nbytes, v in sorted((p[0], p[1], v) for v, p in prices.items()):
        if not out or nbytes < out[-1][1]:
            out.append((t, nbytes, v))
    return out


def lower_hull(points: list[Point]) -> list[Point]:
    """The points on the lower convex hull of memory against time (Andrew's monotone chain over
    the points sorted by memory), fastest first."""
    hull: list[Point] = []
    for p in sorted(points, key=lambda q: (q[1], q[0])):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is dropped when it lies on or above the segment a-p
            if (b[0] - a[0]) * (p[1] - a[1]) >= (p[0] - a[0]) * (b[1] - a[1]):
                hull.pop()
            else:
                break
        hull.append(p)
    return sorted(hull)


def bracket(hull: list[Point], target: float) -> list[Point]:
    """The hull points next to ``target`` bytes: the largest at or below it and the smallest at or
    above it (the two a block count mixes to average ``target``)."""
    below = [p for p in hull if p[1] <= target]
    above = [p for p in hull if p[1] >= target]
    return ([max(below, key=lambda p: p[1])] if below else []) + ([min(above, key=lambda p: p[1])] if above else [])


def chosen_kept_sets(
    ctx: SearchContext, par: Parallel, cost: LayerCost, targets: list[float], limit: int
) -> tuple[str, ...]:
    """At most ``limit`` kept sets on the hull of the front and the three options that bracket
    the per-block bytes ``targets`` (module docstring), nearest the targets first."""
    base = [(cost.recompute_s[o], cost.act_bytes[o], o) for o in RECOMPUTE_OPTIONS]
    hull = lower_hull(front_points(ctx, par, cost) + base)
    lo, hi = cost.act_bytes["full"], cost.act_bytes["none"]
    near: dict[str, float] = {}
    for b in targets:
        for p in bracket(hull, b):
            if p[2] not in RECOMPUTE_OPTIONS and lo < p[1] < hi:
                near[p[2]] = min(near.get(p[2], float("inf")), abs(p[1] - b))
    return tuple(sorted(near, key=lambda v: near[v])[:limit])


def block_targets(ctx: SearchContext, par: Parallel, cost: LayerCost) -> list[float]:
    """Per pipeline rank where recompute none does not fit, the per-block kept bytes that would
    just fit it: a rank's peak is affine in the blocks' bytes under one option everywhere (the
    in-flight micro-batches are the schedule's), so from its peaks under none (``n``) and full
    (``f``), ``b* = a_full + (cap − f)·(a_none − a_full)/(n − f)``; ranks full does not fit are
    left out (no kept set helps them). Empty when none fits."""
    cap = mem.capacity_bytes(ctx.cluster.gpu.hbm_bytes, ctx.train)
    even = par.with_(stage_layers=None)
    none = rank_memory_bytes(ctx.spec, ctx.cluster, ctx.train, even.with_(recompute="none"))
    if all(b <= cap for b in none):
        return []
    full = rank_memory_bytes(ctx.spec, ctx.cluster, ctx.train, even.with_(recompute="full"))
    a_none, a_full = cost.act_bytes["none"], cost.act_bytes["full"]
    return [a_full + (cap - f) * (a_none - a_full) / (n - f) for n, f in zip(none, full) if f <= cap < n]


def kept_set_options(
    ctx: SearchContext, par: Parallel, costs: list[LayerCost]
) -> tuple[list[LayerCost], tuple[str, ...]]:
    """The costs and options ``par``'s placement is solved with: ``ctx.options`` plus, for a
    memory-bound candidate, up to ``ctx.kept_sets`` kept sets priced on every block."""
    if ctx.kept_sets <= 0 or not ctx.graph.blocks or "none" not in ctx.options:
        return costs, ctx.options
    try:
        for layer in {b.signature or (b.name,): b for b in ctx.graph.blocks}.values():
            block_graph(layer, ctx.graph, ctx.cluster, ctx.train, par)
    except ValueError:
        return costs, ctx.options  # an MoE, MLA or parallel-residual block: no dataflow, no kept sets
    if KEPT_SET_CHUNKS // par.chunks <= 0:
        return costs, ctx.options
    first = next(i for i, layer in enumerate(ctx.graph.layers) if layer.kind == "block")
    targets = block_targets(ctx, par, costs[first])
    if not targets:
        return costs, ctx.options
    limit = min(ctx.kept_sets, KEPT_SET_CHUNKS // par.chunks)
    extra = chosen_kept_sets(ctx, par, costs[first], targets, limit)
    if not extra:
        return costs, ctx.options
    return with_kept_sets(costs, extra, ctx.graph, ctx.cluster, ctx.train, par), ctx.options + extra
