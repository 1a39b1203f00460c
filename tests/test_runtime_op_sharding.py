"""runtime/op_sharding.py runs plans the sharding ILP makes: on 2 and 4 gloo ranks (1-D meshes,
and a 2 × 2 mesh), forward +
backward + SGD of the sharded nn.Sequential gives the single-process losses and final weights
within 1e-5. The plans are the ILP's for full-size graphs (not fixed patterns); they run on nets
with the same layers at 1/16 of the widths, so each rank's work stays tiny."""

from __future__ import annotations

import json

import pytest
from torch import nn

from conftest import run_python
from hardware.cluster import load_cluster
from planner.search.milp.sbp import ShardingMesh
from planner.search.milp.sbp_2d import ShardingMesh2D
from planner.search.milp.sharding import solve
from planner.search.milp.sharding_baselines import fixed_pattern
from planner.search.milp.sharding_graph import mlp_stack
from runtime.op_sharding import ShardedSequential, placement, weight_placement

CLUSTER = load_cluster("h100-sxm-80gb:8")
BOTTLENECK = [1024, 16384, 64, 16384, 1024]
WIDENING = [64, 512, 512, 16384, 16384, 64]


def bottleneck_plan(tp: int) -> dict:
    """The memory-budgeted bottleneck plan: col, row, tok, tok (tests/test_sharding_ilp.py)."""
    g = mlp_stack(BOTTLENECK, 24576)
    mesh = ShardingMesh(tp, CLUSTER, token_split="all")
    data, megatron = fixed_pattern(g, mesh, "data"), fixed_pattern(g, mesh, "megatron")
    assert data is not None and megatron is not None
    return solve(g, mesh, int((data.memory_bytes + megatron.memory_bytes) / 2)).to_json()


def widening_plan(tp: int) -> dict:
    """rep, rep, col, row, row: the last row linear reads the previous one's partial sum through
    a reduce-scatter (P→S1), a pattern no alternation has."""
    return solve(mlp_stack(WIDENING, 4096), ShardingMesh(tp, CLUSTER, token_split="all")).to_json()


def widening_plan_2d() -> dict:
    """On a 2 × 2 mesh: rows split on the inner axis for the narrow layers, then a weight split
    on both axes (colxcol), colxrow (or rowxcol), and rowxrow whose output is partial on both axes."""
    return solve(mlp_stack(WIDENING, 4096), ShardingMesh2D(2, 2, CLUSTER, token_split="all")).to_json()


RANKS = """
import json, os, tempfile, torch
import torch.multiprocessing as mp
from torch import nn
from runtime.op_sharding import rank_parity

def make(widths):
    def build():
        torch.manual_seed(0)
        layers = []
        for i, (k, n) in enumerate(zip(widths, widths[1:])):
            layers += [nn.Linear(k, n, bias=False)] + ([nn.Tanh()] if i < len(widths) - 2 else [])
        return nn.Sequential(*layers), torch.randn(32, widths[0]), torch.randn(32, widths[-1])
    return build

ctx = mp.get_context("fork")
for name, widths, world, plan in json.loads(CONFIGS):
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        store = os.path.join(d, "store")
        procs = [ctx.Process(target=rank_parity, args=(r, world, store, make(widths), plan, 3, q)) for r in range(world)]
        for p in procs:
            p.start()
        rows = sorted(q.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    print("RESULT", name, world, max(r[1] for r in rows), max(r[2] for r in rows))
"""


def test_ilp_plans_keep_parity_on_2_and_4_ranks() -> None:
    configs = []
    for tp in (2, 4):
        for name, widths, plan in (("bottleneck", BOTTLENECK, bottleneck_plan(tp)), ("widening", WIDENING, widening_plan(tp))):
            small = [max(w // 16, tp) for w in widths]
            configs.append((name, small, tp, plan))
    configs.append(("widening-2x2", [max(w // 16, 4) for w in WIDENING], 4, widening_plan_2d()))
    strategies = {(c[0], c[2]): [o["strategy"] for o in c[3]["ops"] if o["op"].startswith("fc")] for c in configs}
    assert strategies[("bottleneck", 2)] == strategies[("bottleneck", 4)] == ["col", "row", "tok", "tok"]
    assert strategies[("widening", 4)] == ["rep", "rep", "col", "row", "row"]
    two = strategies[("widening-2x2", 4)]  # colxrow and rowxcol tie (the mesh is square)
    assert two[:3] == ["repxtok", "repxtok", "colxcol"] and two[3] in ("colxrow", "rowxcol") and two[4] == "rowxrow"
    out = run_python(f"CONFIGS = {json.dumps(json.dumps(configs))}\n" + RANKS, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [line.split() for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 5, out.stdout
    for _, name, world, loss_err, w_err in results:
        assert float(loss_err) <= 1e-5 and float(w_err) <= 1e-5, (name, world, loss_err, w_err)


def test_layouts_map_to_placements() -> None:
    assert str(placement("S0")) == "S(0)" and str(placement("P")).startswith("P")
    assert str(weight_placement("S0")) == "S(1)" and str(weight_placement("S1")) == "S(0)"
    with pytest.raises(ValueError, match="unknown layout"):
        placement("S2")


def test_refuses_layers_it_cannot_shard() -> None:
    plan = {"graph": "g", "ops": []}
    with pytest.raises(ValueError, match="bias"):
        ShardedSequential(nn.Sequential(nn.Linear(4, 4)), plan, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a Linear"):
        ShardedSequential(nn.Sequential(nn.Conv1d(4, 4, 1)), plan, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no strategy"):
        ShardedSequential(nn.Sequential(nn.Linear(4, 4, bias=False)), plan, None)  # type: ignore[arg-type]
