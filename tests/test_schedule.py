"""Pipeline schedule timing against closed forms and brute-force DAG longest paths."""

from __future__ import annotations

import random

import pytest

from planner.cost.schedule import rank_order, simulate


@pytest.mark.parametrize("pp,m", [(1, 1), (2, 4), (4, 4), (4, 16), (8, 9)])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_uniform_stages_match_closed_form(schedule, pp, m):
    """Equal stages, free transfers: makespan = (m + pp - 1)(F + B) (Huang et al. 2019; Narayanan 2021 §2.2)."""
    f, b = 1.0, 2.0
    r = simulate(schedule, pp, m, 1, [f] * pp, [b] * pp, [0.0] * pp, [1.0] * pp)
    assert r.makespan_s == pytest.approx((m + pp - 1) * (f + b))


@pytest.mark.parametrize("pp,v,m", [(2, 2, 4), (4, 2, 8), (4, 4, 8)])
def test_interleaved_bubble_is_divided_by_chunks(pp, v, m):
    """Interleaved 1F1B: bubble (pp - 1)(F + B)/v (Narayanan et al. 2021 §2.2.2)."""
    f, b = 1.0 / v, 2.0 / v
    r = simulate("interleaved", pp, m, v, [f] * (pp * v), [b] * (pp * v), [0.0] * (pp * v), [1.0] * (pp * v))
    assert r.makespan_s == pytest.approx(m * 3.0 + (pp - 1) * 3.0 / v)


def test_one_f_one_b_in_flight_microbatches():
    r = simulate("1f1b", 4, 8, 1, [1.0] * 4, [2.0] * 4, [0.0] * 4, [1.0] * 4)
    assert r.peak_inflight_microbatches == (4, 3, 2, 1)
    g = simulate("gpipe", 4, 8, 1, [1.0] * 4, [2.0] * 4, [0.0] * 4, [1.0] * 4)
    assert g.peak_inflight_microbatches == (8, 8, 8, 8)


def _longest_path(schedule, pp, m, v, f, b, c):
    """Independent check: longest path over the DAG with explicit edges (dependencies + rank order)."""
    n = pp * v
    nodes, edges = [], {}
    for r in range(pp):
        order = rank_order(schedule, r, pp, m, v)
        for k, (op, ch, i) in enumerate(order):
            node = (op, ch * pp + r, i)
            nodes.append(node)
            if k:
                prev = order[k - 1]
                edges.setdefault(node, []).append(((prev[0], prev[1] * pp + r, prev[2]), 0.0))
    for (op, j, i) in nodes:
        if op == "F" and j > 0:
            edges.setdefault((op, j, i), []).append((("F", j - 1, i), c[j - 1]))
        if op == "B":
            dep = ("F", j, i) if j == n - 1 else ("B", j + 1, i)
            edges.setdefault((op, j, i), []).append((dep, 0.0 if j == n - 1 else c[j]))
    memo = {}

    def finish(node):
        if node not in memo:
            start = max((finish(d) + w for d, w in edges.get(node, [])), default=0.0)
            memo[node] = start + (f[node[1]] if node[0] == "F" else b[node[1]])
        return memo[node]

    return max(finish(x) for x in nodes)


@pytest.mark.parametrize("seed", range(12))
def test_simulation_equals_dag_longest_path_with_unequal_stages(seed):
    rng = random.Random(seed)
    schedule, pp, v = rng.choice([("gpipe", 3, 1), ("1f1b", 4, 1), ("interleaved", 2, 2), ("1f1b", 2, 1)])
    m = pp * rng.randint(1, 3)
    n = pp * v
    f = [rng.uniform(0.5, 2) for _ in range(n)]
    b = [x * rng.uniform(1.5, 3) for x in f]
    c = [rng.uniform(0, 0.3) for _ in range(n)]
    r = simulate(schedule, pp, m, v, f, b, c, [1.0] * n)
    assert r.makespan_s == pytest.approx(_longest_path(schedule, pp, m, v, f, b, c), rel=1e-12)


def test_hand_computed_gpipe_timeline():
    """pp=2, m=2, F=B=[1,2]: rank 1 runs F0 1-3, F1 3-5, B0 5-7, B1 7-9; rank 0 runs B1 9-10."""
    r = simulate("gpipe", 2, 2, 1, [1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [1.0, 1.0], keep_events=True)
    assert r.makespan_s == 10.0
    assert [(e[1], e[3], e[4], e[5]) for e in r.events if e[0] == 1] == [
        ("F", 0, 1.0, 3.0), ("F", 1, 3.0, 5.0), ("B", 0, 5.0, 7.0), ("B", 1, 7.0, 9.0)]


@pytest.mark.parametrize("seed", range(30))
def test_warmup_paths_are_lower_bounds_on_every_rank(seed):
    from planner.cost.schedule import warmup_paths

    rng = random.Random(seed)
    schedule, pp, v = rng.choice([("gpipe", 3, 1), ("1f1b", 4, 1), ("interleaved", 2, 2), ("interleaved", 4, 2)])
    m, n = pp * rng.randint(1, 3), pp * v
    f = [rng.uniform(0.5, 2) for _ in range(n)]
    b = [x * rng.uniform(1.5, 3) for x in f]
    c = [rng.uniform(0, 0.3) for _ in range(n)]
    r = simulate(schedule, pp, m, v, f, b, c, [1.0] * n)
    for rank, p in warmup_paths(schedule, pp, m, v):
        length = sum(p.f[j] * f[j] + p.b[j] * b[j] + p.c[j] * c[j] for j in range(n))
        assert length <= r.rank_end_s[rank] + 1e-9


def test_warmup_path_is_exact_for_equal_stages():
    from planner.cost.schedule import warmup_paths

    r = simulate("1f1b", 4, 8, 1, [1.0] * 4, [2.0] * 4, [0.0] * 4, [1.0] * 4)
    best = max(sum(p.f[j] * 1.0 + p.b[j] * 2.0 for j in range(4)) for _, p in warmup_paths("1f1b", 4, 8, 1))
    assert best == pytest.approx(r.makespan_s)
