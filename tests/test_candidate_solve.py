"""One outer candidate's placement solve: the space it bounds holds the default split, and an
unfinished solve resumes to the same answer as an uninterrupted one."""

from __future__ import annotations

import time

import pytest

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.chunks import split_counting_ends, split_layers
from planner.cost.estimate import estimate
from planner.cost.layer import graph_costs
from planner.search.milp.placement import chunk_size_ranges
from planner.search import solve_candidate

OPTS = ("none", "selective", "full")


# Only chunks <= blocks: a plan with more chunks than blocks is refused by check_plan.
@pytest.mark.parametrize(
    "blocks,chunks", [(b, c) for b in (2, 5, 16, 32, 61, 80, 96, 126) for c in (2, 4, 8, 16, 24, 32) if c <= b]
)
def test_interleaved_ranges_hold_the_default_split(blocks, chunks):
    ranges = chunk_size_ranges(blocks, chunks, "interleaved")
    even, ends = split_layers(blocks, chunks), split_counting_ends(blocks, chunks)
    assert sum(even) == sum(ends) == blocks
    # The even split (what the planner seeds) lies inside; the ends-counting split too, except for
    # a chunk it leaves empty, which no plan may have (issue 19, item 2).
    assert all(lo <= k <= hi and (lo <= e <= hi or e == 0) for k, e, (lo, hi) in zip(even, ends, ranges))
    floor, ceil = max(1, blocks // chunks), -(-blocks // chunks)
    # Only the chunks a split needs widened are: the others keep floor/ceil.
    assert all(
        lo == floor and hi == ceil
        for k, e, (lo, hi) in zip(even, ends, ranges)
        if floor <= k <= ceil and floor <= e <= ceil
    )
    # Every chunk holds a block: a chunk of only the embedding or head is a stage the runtime
    # refuses (issue 19, item 2).
    assert all(lo == 1 and hi is None for lo, hi in chunk_size_ranges(blocks, chunks, "1f1b"))
    assert all(lo >= 1 for lo, _ in ranges)


def test_default_split_is_uniform_with_the_remainder_in_the_middle():
    assert split_layers(128, 64) == [2] * 64  # Narayanan et al. 2021 Table 1, 1T: 2 layers per stage
    assert split_layers(80, 8) == [10] * 8
    assert split_layers(126, 16) == [7] + [8] * 14 + [7]  # Llama 3 405B
    assert split_layers(5, 4) == [1, 2, 1, 1] and split_layers(2, 4) == [0, 1, 1, 0]
    assert split_counting_ends(96, 16) == [5, 7, 7] + [6] * 12 + [5]


def _setup(model: str, cluster: str, gbs: int, seq: int, **par):
    spec, cl, train = load_model(model), load_cluster(cluster), Training(gbs, seq)
    p = Parallel(**par)
    graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
    return spec, cl, train, p, graph, graph_costs(graph, cl, train, p)


@pytest.mark.parametrize(
    "model,cluster,gbs,par",
    [
        # 96 blocks on 16 chunks: the default split is 5, 7, 7, 6, ..., 6, 5 (floor = ceil = 6). Before
        # the ranges held it, the bound (6.70 s) exceeded that plan's own time (6.68 s).
        (
            "gpt3-175b",
            "a100-sxm-80gb:64",
            32,
            dict(dp=1, tp=8, pp=8, schedule="interleaved", vpp=2, sequence_parallel=True),
        ),
        ("llama3-8b", "h100-sxm-80gb:32", 64, dict(dp=4, tp=2, pp=4, schedule="interleaved", vpp=2)),
    ],
)
def test_bound_never_exceeds_the_default_split(model, cluster, gbs, par):
    spec, cl, train, p, graph, costs = _setup(model, cluster, gbs, 2048 if "gpt3" in model else 8192, **par)
    r = solve_candidate(spec, graph, costs, cl, train, p, OPTS, "ortools", 0.0, time.perf_counter() + 60)
    assert r.status == "optimal"
    for o in OPTS:
        e = estimate(spec, cl, train, p.with_(recompute=o))
        if e.fits:
            assert r.bound_s <= e.predicted["step_time_s"] * (1 + 1e-9)
            assert r.best.predicted["step_time_s"] <= e.predicted["step_time_s"] * (1 + 1e-9)


def test_an_unfinished_solve_resumes_to_the_uninterrupted_answer():
    spec, cl, train, p, graph, costs = _setup(
        "llama3-8b", "h100-sxm-80gb:32", 64, 8192, dp=4, tp=2, pp=4, schedule="interleaved", vpp=2
    )
    full = solve_candidate(spec, graph, costs, cl, train, p, OPTS, "ortools", 0.0, time.perf_counter() + 60)
    assert full.status == "optimal" and full.iterations >= 2
    cut_short = solve_candidate(spec, graph, costs, cl, train, p, OPTS, "ortools", 0.0, time.perf_counter())
    assert cut_short.status == "time_limit" and cut_short.iterations == 1 and cut_short.cuts
    resumed = solve_candidate(
        spec, graph, costs, cl, train, p, OPTS, "ortools", 0.0, time.perf_counter() + 60, prior=cut_short
    )
    assert resumed.status == "optimal"
    assert resumed.iterations > cut_short.iterations
    assert len(resumed.cuts) > len(cut_short.cuts)
    assert resumed.best.predicted["step_time_s"] == pytest.approx(full.best.predicted["step_time_s"], rel=1e-9)


def test_constraint_names_are_unique_for_a_single_chunk_under_zero3():
    """One chunk holds both the embedding and the head: their ZeRO-3 gather rows need distinct
    names (MathOpt rejects a model that repeats one; the builder now refuses it too)."""
    from planner.search.milp.data import build_data
    from planner.search.milp.model import Model
    from planner.search.milp.placement import build_placement_model

    spec, cl, train, p, graph, costs = _setup("llama3-8b", "h100-sxm-80gb:8", 16, 4096, dp=8, zero=3)
    model, _ = build_placement_model(build_data(graph, costs, cl, train, p, OPTS), exact=False)
    names = [c.name for c in model.constraints]
    assert len(names) == len(set(names))
    assert {"gather_end[rank=0,chunk=0,layer=embedding]", "gather_end[rank=0,chunk=0,layer=head]"} <= set(names)
    assert model.solve("ortools", 30).status == "optimal"
    m = Model("dup")
    x = m.var("x")
    m.add(x, ">=", 1, "row[k=0]")
    with pytest.raises(ValueError, match="duplicate constraint name"):
        m.add(x, "<=", 2, "row[k=0]")


@pytest.mark.parametrize("blocks,pp,vpp,zero", [(5, 2, 1, 0), (8, 3, 1, 3), (12, 4, 2, 2), (7, 4, 1, 0), (16, 4, 2, 3)])
def test_busiest_rank_bound_is_the_whole_block_min_max(blocks, pp, vpp, zero):
    """The greedy bound equals brute force over whole-block counts per rank, and exceeds the
    fractional average when blocks do not divide evenly."""
    import itertools

    from models.spec import ModelSpec
    from planner.search.bounds import busiest_rank_work

    spec = ModelSpec(
        name="t",
        num_layers=blocks,
        hidden_size=256,
        num_heads=4,
        num_kv_heads=4,
        ffn_hidden_size=1024,
        vocab_size=32000,
        max_seq_len=512,
    )
    cl, train = load_cluster(f"h100-sxm-80gb:{pp * 2}"), Training(16, 512)
    p = Parallel(dp=2, pp=pp, zero=zero, schedule="interleaved" if vpp > 1 else "1f1b", vpp=vpp)
    graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
    costs = graph_costs(graph, cl, train, p)
    extra = 0.25e-3  # an arbitrary per-chunk exposure
    w = costs[1].fwd_s + costs[1].bwd_s
    ends = [costs[0].fwd_s + costs[0].bwd_s if r == 0 else 0.0 for r in range(pp)]
    ends[-1] += costs[-1].fwd_s + costs[-1].bwd_s
    brute = min(
        max(k * w + e + vpp * extra for k, e in zip(ks, ends))
        for ks in itertools.product(range(blocks + 1), repeat=pp)
        if sum(ks) == blocks
    )
    assert busiest_rank_work(costs, p, extra) == pytest.approx(brute, rel=1e-12)
    average = (sum(c.fwd_s + c.bwd_s for c in costs) + pp * vpp * extra) / pp
    assert brute >= average * (1 - 1e-12)
