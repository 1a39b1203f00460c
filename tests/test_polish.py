"""planner.polish: least_recompute (ties and free wins go to less recompute) and
deeper_interleaving (more virtual stages on the plan's mesh when faster); never slower, always fits."""

from __future__ import annotations

import pytest

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.config import PlanError
from planner.cost.estimate import estimate
from planner.search.polish import DEEPER_VPP, WEAKER, deepen_all, deeper_interleaving, deeper_record, least_recompute

SPEC = load_model("llama3-8b")


def _locally_least(e) -> bool:
    """No single block's recompute can be weakened without slowing the step or overflowing."""
    par, n = e.par, SPEC.num_layers
    rc = [par.recompute_of(i) for i in range(n)]
    for i, opt in enumerate(rc):
        for weaker in WEAKER.get(opt, ()):
            trial = estimate(SPEC, e.cluster, e.train, par.with_(recompute=tuple(rc[:i] + [weaker] + rc[i + 1:])))
            if trial.fits and trial.predicted["step_time_s"] <= e.predicted["step_time_s"]:
                return False
    return True


@pytest.mark.parametrize("gpus,seq,par", [
    (8, 2048, Parallel(dp=4, pp=2, zero=1, recompute="full")),  # ample memory: nothing to keep
    (8, 8192, Parallel(dp=8, micro_batch=1, zero=1, recompute="full")),  # tight: some must stay
])
def test_polish_never_slows_always_fits_and_is_locally_least(gpus, seq, par):
    train = Training(64, seq)
    cl = load_cluster(f"h100-sxm-80gb:{gpus}")
    e0 = estimate(SPEC, cl, train, par)
    assert e0.fits
    e = least_recompute(e0, max_tries=10_000)
    assert e.fits and e.predicted["step_time_s"] <= e0.predicted["step_time_s"]
    assert _locally_least(e)


def test_polish_keeps_what_memory_needs_and_drops_the_rest():
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(64, 2048)
    loose = least_recompute(estimate(SPEC, cl, train, Parallel(dp=4, pp=2, zero=1, recompute="full")), 10_000)
    assert loose.par.recompute == "none"
    tight = least_recompute(estimate(SPEC, cl, Training(64, 8192),
                                     Parallel(dp=8, micro_batch=1, zero=1, recompute="full")), 10_000)
    kept = [tight.par.recompute_of(i) for i in range(SPEC.num_layers)]
    assert any(x != "none" for x in kept) and any(x != "full" for x in kept)


def test_polish_is_a_no_op_without_recompute():
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(64, 2048)
    e = estimate(SPEC, cl, train, Parallel(dp=8, zero=1))
    assert least_recompute(e) is e


@pytest.mark.parametrize("gbs,seq,par", [
    (64, 4096, Parallel(dp=2, pp=4, micro_batch=1, zero=1, recompute="none", schedule="1f1b")),
    (64, 4096, Parallel(dp=2, pp=4, micro_batch=1, zero=1, recompute="selective", schedule="interleaved", vpp=2)),
    (16, 2048, Parallel(dp=1, pp=8, micro_batch=1, zero=0, recompute="full", schedule="gpipe")),
])
def test_deeper_interleaving_is_the_fastest_fitting_deeper_plan_of_the_mesh(gbs, seq, par):
    """Brute force over the same trials: every virtual-stage count above the plan's, each with the
    plan's recompute and every uniform option; the result is the fastest that fits, or the plan."""
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(gbs, seq)
    e0 = estimate(SPEC, cl, train, par)
    assert e0.fits
    e = deeper_interleaving(e0)
    assert e.fits and e.predicted["step_time_s"] <= e0.predicted["step_time_s"]
    assert (e.par.dp, e.par.tp, e.par.pp, e.par.micro_batch, e.par.zero) == (par.dp, par.tp, par.pp, par.micro_batch,
                                                                            par.zero)
    best = e0.predicted["step_time_s"]
    for v in DEEPER_VPP:
        if v <= par.vpp or par.pp * v > SPEC.num_layers:
            continue
        for rc in (par.recompute, "none", "selective", "full"):
            try:
                t = estimate(SPEC, cl, train, par.with_(schedule="interleaved", vpp=v, recompute=rc))
            except PlanError:
                continue
            if t.fits:
                best = min(best, t.predicted["step_time_s"])
    assert e.predicted["step_time_s"] == pytest.approx(best, rel=1e-12)
    if e is not e0:
        assert e.par.schedule == "interleaved" and e.par.vpp > par.vpp


def test_deeper_interleaving_leaves_a_single_stage_plan_alone():
    e0 = estimate(SPEC, load_cluster("h100-sxm-80gb:8"), Training(64, 2048), Parallel(dp=8, zero=1))
    assert deeper_interleaving(e0) is e0


def test_deepen_all_ranks_plan_and_runner_ups_after_the_same_step():
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(64, 4096)
    plan = estimate(SPEC, cl, train, Parallel(dp=2, pp=4, micro_batch=1, zero=1, schedule="1f1b"))
    other = estimate(SPEC, cl, train, Parallel(dp=1, pp=8, micro_batch=1, zero=0, schedule="1f1b"))
    single = estimate(SPEC, cl, train, Parallel(dp=8, micro_batch=1, zero=1))
    ranked = deepen_all(plan, [("optimal", 1.0, other), ("pruned_time", 2.0, single)])
    times = [e.predicted["step_time_s"] for _, _, e in ranked]
    assert times == sorted(times) and len(ranked) == 3
    by_mesh = {(e.par.dp, e.par.pp): (st, b, e) for st, b, e in ranked}
    for mesh, src in (((2, 4), plan), ((1, 8), other)):
        st, _, e = by_mesh[mesh]
        assert e.predicted["step_time_s"] <= src.predicted["step_time_s"]
        assert (st == "heuristic") == (e is not src) and (e is src or e.par.vpp > 1)
    assert by_mesh[(8, 1)] == ("pruned_time", 2.0, single)  # pp 1: nothing to interleave
    first = ranked[0][2]
    record = deeper_record(plan, first, (2,))
    assert (record == {}) == (first is plan)


def test_deepen_all_drops_runner_ups_that_deepen_into_the_plan():
    """The search's case: the plan is its mesh interleaved (v 2) and a runner-up is the same mesh
    under 1f1b; both deepen to the same schedule. It is one plan, listed once (the search printed
    the plan again as its own first alternative), whatever recompute each copy ends with."""
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(64, 4096)
    plan = estimate(SPEC, cl, train, Parallel(dp=2, pp=4, micro_batch=1, zero=1, schedule="interleaved", vpp=2))
    other = estimate(SPEC, cl, train, Parallel(dp=2, pp=4, micro_batch=1, zero=1, schedule="1f1b",
                                               recompute="selective"))
    ranked = deepen_all(plan, [("optimal", 1.0, other)])
    assert ranked[0][2].par.vpp > 2
    keys = [e.par.with_(recompute="none", stage_layers=None) for _, _, e in ranked]
    assert len(keys) == len(set(keys)) == 1
    # Copies that differ only in recompute are one candidate too (pp 8 · v 4 on 32 blocks: no deeper v).
    deep = Parallel(dp=1, pp=8, micro_batch=1, zero=1, schedule="interleaved", vpp=4)
    plan, slower = (estimate(SPEC, load_cluster("h100-sxm-80gb:8"), train, deep.with_(recompute=rc))
                    for rc in ("none", "full"))
    ranked = deepen_all(plan, [("optimal", 1.0, slower)])
    assert [e for _, _, e in ranked] == [plan]
