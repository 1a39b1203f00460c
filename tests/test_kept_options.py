"""Kept sets in the search (planner/search/kept_options.py): the family of kept sets, its front
and lower hull, torchtitan's op policy as a point, and the planner with them — never slower than
with none / selective / full alone, strictly faster on a memory-bound setting."""

from __future__ import annotations

import pytest

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.kept_set import kept_set_prices
from planner.cost.layer import _Ctx, graph_costs, kept_tensors
from planner.kept_sets import kept_value
from planner.knobs import RECOMPUTE_OPTIONS
from planner.search import Knobs, search
from planner.search.context import SearchContext
from planner.search.kept_options import front_points, lower_hull, units
from planner.stacks import load_stack


def _ctx(model: str, train: Training, gpus: int = 8) -> SearchContext:
    return SearchContext.build(load_model(model), load_cluster(f"h100-sxm-80gb:{gpus}"), train, RECOMPUTE_OPTIONS, kept_sets=4)


def test_units_are_the_matmul_outputs_and_the_attention_kernel() -> None:
    assert units(_ctx("llama3-8b", Training(8, 2048))) == [
        ("attn.q",), ("attn.k",), ("attn.v",), ("attn.out_proj_out",), ("ffn.gate",), ("ffn.up",),
        ("ffn.down_out",), ("attn.context", "attn.lse"),
    ]
    assert len(units(_ctx("gpt3-1.3b", Training(8, 2048)))) == 7


def test_the_front_holds_torchtitans_op_policy_and_the_runtimes_selective() -> None:
    """torchtitan's op-level policy (every second matmul output kept) and the bundled runtime's
    'selective' (every matmul output) are kept sets of the family; each is priced at its stack's
    bytes and at most its stack's recompute seconds (the closure skips what no backward reads),
    and the front has a point at least as good as each."""
    for stack in ("torchtitan", "autopar"):
        train = Training(8, 8192, stack=load_stack(stack))
        ctx = _ctx("llama3-8b", train)
        par = Parallel(dp=2, pp=4)
        cost = graph_costs(ctx.graph, ctx.cluster, train, par)[1]
        kept = kept_tensors(ctx.graph.blocks[0], _Ctx(ctx.cluster, train, par, ctx.spec))["selective"]
        value = kept_value(x.name for x in kept)
        front = front_points(ctx, par, cost)
        t, mem, _ = kept_set_prices(ctx.graph.blocks[0], ctx.graph, ctx.cluster, train, par, cost, (value,))[value]
        assert mem == pytest.approx(cost.act_bytes["selective"], rel=1e-9), stack
        assert t <= cost.recompute_s["selective"] * (1 + 1e-9), stack
        assert any(ft <= t and fm <= mem for ft, fm, _ in front), stack


def test_the_lower_hull_is_convex_and_under_every_point() -> None:
    ctx = _ctx("llama3-8b", Training(32, 8192))
    par = Parallel(dp=2, pp=4, micro_batch=2)
    cost = graph_costs(ctx.graph, ctx.cluster, ctx.train, par)[1]
    points = front_points(ctx, par, cost)
    hull = lower_hull(points)
    assert len(points) >= 8 and 3 <= len(hull) < len(points)
    by_mem = sorted(hull, key=lambda p: p[1])
    slopes = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(by_mem, by_mem[1:])]
    assert all(s1 < s2 for s1, s2 in zip(slopes, slopes[1:]))  # time falls ever slower with memory
    for t, mem, _ in points:  # no point lies under the hull's segment at its memory
        a, b = next((a, b) for a, b in zip(by_mem, by_mem[1:]) if a[1] <= mem <= b[1])
        assert t >= a[0] + (b[0] - a[0]) * (mem - a[1]) / (b[1] - a[1]) - 1e-12


def _step(model: str, gpus: int, train: Training, knobs: dict, kept: bool) -> tuple[float, tuple]:
    extra = {} if kept else {"recompute": RECOMPUTE_OPTIONS}
    res = search(load_model(model), load_cluster(f"h100-sxm-80gb:{gpus}"), train, Knobs({**knobs, **extra}), gap=1e-4)
    return res.best.predicted["step_time_s"], res.best.par.recompute


def test_strictly_faster_on_a_memory_bound_setting() -> None:
    """llama3-8b on 8 H100s, tp 1 · pp 4, micro-batch 2, 32 × 8,192 tokens: recompute none does
    not fit; with kept sets the plan is 3.6% faster (4.694 s → 4.525 s at gap 1e-4)."""
    setting = ("llama3-8b", 8, Training(32, 8192), {"tp": (1,), "pp": (4,), "micro_batch": (2,)})
    three, rc3 = _step(*setting, kept=False)
    more, rc = _step(*setting, kept=True)
    assert not any(o.startswith("keep:") for o in rc3)  # --recompute given: no kept set joins
    assert any(o.startswith("keep:") for o in rc)
    assert more < three * 0.97, (more, three)


@pytest.mark.parametrize(
    "setting",
    [
        ("llama3-8b", 8, Training(32, 8192), {"tp": (1,), "pp": (4,)}),  # memory-bound at mb 2 only
        ("llama3-8b", 8, Training(64, 4096), {"tp": (2,)}),  # none fits
        ("gpt3-1.3b", 8, Training(64, 8192), {"tp": (1,)}),
    ],
)
def test_never_slower_than_with_the_three_options(setting) -> None:
    three, _ = _step(*setting, kept=False)
    more, _ = _step(*setting, kept=True)
    assert more <= three * (1 + 1e-4), (more, three)

