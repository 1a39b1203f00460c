"""planner.polish.least_recompute: ties and free wins go to less recompute; never slower, always fits."""

from __future__ import annotations

import pytest

from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.estimate import estimate
from planner.polish import WEAKER, least_recompute

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
