"""Time limits under expensive pieces of work (issue 21, item 2): a heuristic try, a placement
solve, a MILP handed to its backend or a polish trial predicted (planner.search.pace, from the
pieces already done) to end past the search's deadline is not started; with no deadline in
reach nothing is skipped, so a search within its limit finds the same plan."""

from __future__ import annotations

import math
import time

import pytest

from planner.inputs import build_inputs
from planner.knobs import Knobs
from planner.search import heuristics
from planner.search.bnb import Pool
from planner.search.context import CandStatus, SearchContext
from planner.search.milp import model as milp
from planner.search.pace import SMALL_OPS, Pace, Timed, schedule_ops
from planner.search.polish import least_recompute
from planner.search.solve import solve


@pytest.fixture(scope="module")
def problem():
    i = build_inputs("debug", "cpu:4", 16, 64, "fp32", "flash", {}, None)
    ctx = SearchContext.build(i.model, i.cluster, i.training, Knobs({}).options())
    pool = Pool(ctx, Knobs({}))
    return ctx, pool.candidates()


def test_the_prediction_is_a_fixed_part_and_a_rate_each_the_largest_seen():
    pace = Pace()
    assert pace.predict_s(10**9) == 0.0  # nothing measured: nothing is skipped
    pace.record(100, 0.02)
    pace.record(SMALL_OPS, 0.05)  # small pieces: the fixed part
    pace.record(100_000, 0.45)  # (0.45 - 0.05) / 100,000 = 4 µs per operation
    pace.record(200_000, 0.6)  # 2.75 µs: not the largest
    assert pace.fixed_s == 0.05 and pace.s_per_op == pytest.approx(4e-6)
    assert pace.predict_s(500_000) == pytest.approx(0.05 + 2.0)
    assert pace.fits(500_000, time.perf_counter() + 3) and not pace.fits(500_000, time.perf_counter() + 1)
    assert pace.fits(10**12, math.inf)  # no limit: everything runs


def test_a_heuristic_try_predicted_past_the_deadline_is_not_made(problem, monkeypatch):
    ctx, cands = problem
    par, tried = cands[0].par, {}
    ctx.estimate_pace.record(SMALL_OPS, 30.0)  # 30 s for a small piece: a fixed part no try keeps within 1 s
    try:
        monkeypatch.setattr(heuristics, "least_recompute_that_fits", lambda *a: pytest.fail("tried"))
        assert not heuristics.paced_try(ctx, par, time.perf_counter() + 1.0, tried) and par not in tried
        monkeypatch.undo()
        assert heuristics.paced_try(ctx, par, math.inf, tried) and tried[par] is not None
    finally:
        ctx.estimate_pace.fixed_s = ctx.estimate_pace.s_per_op = 0.0


def test_a_solve_past_the_search_deadline_starts_no_model_and_keeps_a_valid_bound(problem, monkeypatch):
    ctx, cands = problem
    c = next(c for c in cands if c.par.pp > 1)
    monkeypatch.setattr(milp.Model, "solve", lambda *a, **k: pytest.fail("a model was solved"))
    r = solve(ctx, c.par, c.costs, 0.005, time.perf_counter() + 30, floor_s=c.lb_s, hard_deadline=time.perf_counter() - 1)
    assert r.status == CandStatus.TIME_LIMIT and r.best is None and r.bound_s == c.lb_s
    monkeypatch.undo()
    full = solve(ctx, c.par, c.costs, 0.005, time.perf_counter() + 30, floor_s=c.lb_s)  # no hard deadline: solved
    assert full.status in (CandStatus.OPTIMAL, CandStatus.GAP) and full.best is not None and full.bound_s >= c.lb_s


def test_a_milp_predicted_past_the_deadline_is_not_handed_to_the_backend(problem, monkeypatch):
    ctx, cands = problem
    c = next(c for c in cands if c.par.pp > 1)
    calls = []
    real = milp.Model.solve
    monkeypatch.setattr(milp.Model, "solve", lambda self, *a, **k: calls.append(self.nonzeros) or real(self, *a, **k))
    ctx.milp_pace.record(SMALL_OPS * 2, 1e6)  # a pace no model can keep within a minute
    try:
        r = solve(ctx, c.par, c.costs, 0.005, time.perf_counter() + 30, floor_s=c.lb_s, hard_deadline=time.perf_counter() + 60)
    finally:
        ctx.milp_pace.fixed_s = ctx.milp_pace.s_per_op = 0.0
    assert calls == []  # no model handed over, the LP bounds' included
    assert r.status == CandStatus.TIME_LIMIT and r.bound_s == c.lb_s and r.best is not None  # the seed plans


def test_polish_past_its_deadline_keeps_the_plan(problem):
    ctx, cands = problem
    from planner.cost.estimate import estimate

    c = next(c for c in cands if c.par.pp > 1)
    e = estimate(ctx.spec, ctx.cluster, ctx.train, c.par.with_(recompute="full"))
    assert e.fits
    late = Timed(Pace(), time.perf_counter() - 1)
    assert least_recompute(e, None, ctx.options, late) is e  # no trial made
    assert least_recompute(e, None, ctx.options).par.recompute != "full"  # without a deadline it polishes
    ops = schedule_ops(c.par, ctx.train.global_batch)
    assert Timed().estimate(ctx.spec, ctx.cluster, ctx.train, c.par) is not None and ops > 0
