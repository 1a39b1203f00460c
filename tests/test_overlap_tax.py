"""The overlap tax (hardware.comm.exposed_s) in the step: ZeRO-3's per-micro-batch gathers and
scatters, the end-of-step data-parallel sync, and the breakdown that reports them."""

from __future__ import annotations

import pytest

from hardware.cluster import load_cluster
from hardware.comm import exposed_s
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.data_parallel import one_block_comm
from planner.cost.estimate import estimate
from planner.cost.layer import graph_costs

SPEC, TRAIN = load_model("llama3-8b"), Training(32, 4096)


def _cluster(slowdown: float | None = None):
    return load_cluster("h100-sxm-80gb:16", None if slowdown is None else {"gpu.efficiency.overlap_slowdown": slowdown})


@pytest.mark.parametrize("slowdown", [0.0, 0.19, 0.6])
def test_zero3_exposure_is_the_tax_formula_per_micro_batch(slowdown):
    """pp 1, ZeRO-3: per micro-batch the gathers hide under the forward and gathers + scatters
    under the backward, each costing exposed_s, plus one block's first gather / last scatter."""
    cl, par = _cluster(slowdown), Parallel(dp=16, micro_batch=1, zero=3, recompute="selective")
    costs = graph_costs(build_graph(SPEC, 4096), cl, TRAIN, par)
    tax = cl.gpu.efficiency.overlap_tax
    f = sum(c.fwd_s for c in costs)
    b = sum(c.bwd_s + c.recompute_s["selective"] for c in costs)
    ag, rs = sum(c.dp_ag_s for c in costs), sum(c.dp_rs_s for c in costs)
    ag1, rs1, _ = one_block_comm(costs)
    per_mb = exposed_s(ag, f, tax) + ag1 + exposed_s(ag + rs, b, tax) + ag1 + rs1
    e = estimate(SPEC, cl, TRAIN, par)
    m = e.predicted["num_micro_batches"]
    assert e.predicted["time_breakdown_s"]["zero_exposed_s"] == pytest.approx(m * per_mb, rel=1e-9)
    if slowdown:  # what hides is taxed: more than the contention-free excess
        assert per_mb > max(0.0, ag - f) + max(0.0, ag + rs - b) + 2 * ag1 + rs1


@pytest.mark.parametrize("par", [Parallel(dp=16, zero=3), Parallel(dp=8, tp=2, zero=1, sequence_parallel=True),
                                 Parallel(dp=4, pp=4, zero=1, schedule="interleaved", vpp=2)])
def test_step_time_grows_with_the_slowdown(par):
    steps = [estimate(SPEC, _cluster(s), TRAIN, par).predicted["step_time_s"] for s in (0.0, 0.19, 0.6)]
    assert steps[0] < steps[1] < steps[2]


def test_breakdown_attributes_zero_traffic_to_zero_not_compute():
    """The plan table and 'why it lost' read the ZeRO exposure from its own key, so compute is the
    same for ZeRO-3 and ZeRO-1 of one mesh up to their recompute."""
    from planner.cost.records import time_components

    cl = _cluster()
    z3 = estimate(SPEC, cl, TRAIN, Parallel(dp=16, zero=3)).predicted
    z1 = estimate(SPEC, cl, TRAIN, Parallel(dp=16, zero=1)).predicted
    a, b = time_components(z3), time_components(z1)
    assert a["exposed ZeRO-2/3 gather/scatter"] > 0 == b["exposed ZeRO-2/3 gather/scatter"]
    assert a["compute (incl. recompute)"] == pytest.approx(b["compute (incl. recompute)"], rel=1e-9)
