"""The planner's per-layer activation bytes against the bytes the runtime's blocks actually keep
for backward (counted with saved-tensor hooks), for every recompute option."""

from __future__ import annotations

import pytest
import torch

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.layer import graph_costs
from planner.stacks import load_stack
from runtime.measure import measure_saved_bytes_per_layer

B, S = 2, 32


def planner_bytes(spec, recompute: str, tp: int) -> float:
    train = Training(B * 4, S, "fp32", norm_impl="unfused", stack=load_stack("autopar"))
    cluster = load_cluster("cpu:4")
    par = Parallel(dp=4 // tp, tp=tp, micro_batch=B)
    graph = build_graph(spec, S, "flash", "unfused")
    return graph_costs(graph, cluster, train, par)[1].act_bytes[recompute]


@pytest.mark.parametrize("preset", ["debug", "debug-gpt"])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("tp", [1])
def test_planner_activation_model_within_5pct_of_measured(preset, recompute, tp):
    spec = load_model(preset, {"dropout": 0.0})
    measured = measure_saved_bytes_per_layer(spec, recompute, B, S, torch.float32, tp=tp)
    predicted = planner_bytes(spec, recompute, tp)
    assert predicted == pytest.approx(measured, rel=0.05), (predicted, measured)
