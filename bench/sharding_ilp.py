"""What the intra-op sharding ILP finds (planner/search/milp/sharding.py), with the figures that
docs/search.md quotes.

    python bench/sharding_ilp.py

Per setting: the ILP's strategies, its forward collectives, the layer's time (compute + comm,
forward + backward, one micro-batch, one rank) and memory per rank, and the best fixed pattern
(sharding_baselines.PATTERNS, each completed optimally by the ILP) on the same cost model.
Cluster: h100-sxm-80gb:8, so every tp group is inside one node.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.search.milp.sbp import ShardingMesh, TokenSplit
from planner.search.milp.sbp_2d import ShardingMesh2D
from planner.search.milp.sharding import solve
from planner.search.milp.sharding_baselines import best_fixed_pattern, fixed_pattern
from planner.search.milp.sharding_graph import OpGraph, block_op_graph, conv_net, mlp_stack
from planner.search.milp.sharding_plan import ShardingPlan

CLUSTER = load_cluster("h100-sxm-80gb:8")


def _line(label: str, plan: ShardingPlan, ops: tuple[str, ...]) -> str:
    strategies = " ".join(f"{o}={plan.strategy(o)}" for o in ops)
    fwd = ", ".join(k for _, _, k in plan.collectives("fwd")) or "none"
    return (
        f"{label:34s} {plan.time_s * 1e3:8.3f} ms {plan.memory_bytes / 2**20:8.0f} MiB "
        f"solve {plan.solve_time_s:5.2f} s | {strategies} | fwd: {fwd}"
    )


def blocks() -> None:
    print("Transformer blocks, seq 4096, micro-batch 1")
    for model in ("llama3-8b", "gpt3-1.3b"):
        graph = build_graph(load_model(model), 4096)
        og = block_op_graph(graph.layers[1], graph, 1)
        mats = tuple(o.name for o in og.ops if o.kind in ("matmul", "attention"))
        for split in ("none", "sequence", "all"):
            for tp in (2, 4, 8):
                split_t: TokenSplit = split  # type: ignore[assignment]
                plan = solve(og, ShardingMesh(tp, CLUSTER, token_split=split_t))
                print(_line(f"{model} tp={tp} token_split={split}", plan, mats))


def _versus_fixed(label: str, g: OpGraph, tp: int, budget: int | None = None) -> None:
    mesh = ShardingMesh(tp, CLUSTER, token_split="all")
    plan = solve(g, mesh, budget)
    name, best = best_fixed_pattern(g, mesh, budget)
    mats = tuple(o.name for o in g.ops if o.kind == "matmul")
    print(_line(label, plan, mats))
    gain = 1 - plan.time_s / best.time_s
    print(f"{'':34s} best fixed pattern: {name} {best.time_s * 1e3:.3f} ms (the ILP is {gain:.1%} faster)")


def others() -> None:
    print("\nConv net: batch 128, 32x32, channels 16-128-256-512 (3x3, pool 2x2), classifier 8192-4096-1024")
    conv = conv_net(128, 32, [16, 128, 256, 512], [8192, 4096, 1024])
    for tp in (2, 4, 8):
        _versus_fixed(f"convnet tp={tp}", conv, tp)
    print("\nBottleneck MLP 1024-16384-64-16384-1024 on 24,576 rows")
    g = mlp_stack([1024, 16384, 64, 16384, 1024], 24576)
    for tp in (2, 4, 8):
        mesh = ShardingMesh(tp, CLUSTER, token_split="all")
        data, meg = fixed_pattern(g, mesh, "data"), fixed_pattern(g, mesh, "megatron")
        assert data is not None and meg is not None
        _versus_fixed(f"mlp tp={tp} no budget", g, tp)
        budget = int((data.memory_bytes + meg.memory_bytes) / 2)
        _versus_fixed(f"mlp tp={tp} budget {budget / 2**20:.0f} MiB", g, tp, budget)
    print("\nWidening MLP 64-512-512-16384-16384-64 on 4,096 rows")
    for tp in (2, 4, 8):
        _versus_fixed(f"widening tp={tp}", mlp_stack([64, 512, 512, 16384, 16384, 64], 4096), tp)


def meshes_2d() -> None:
    print("\n2-D meshes: llama3-8b block, seq 4096, micro-batch 1, token_split=sequence, h100-sxm-80gb:16 (2 nodes)")
    cluster = load_cluster("h100-sxm-80gb:16")
    graph = build_graph(load_model("llama3-8b"), 4096)
    og = block_op_graph(graph.layers[1], graph, 1)
    mats = ("attn.qkv", "attn.out", "ffn.gate_up", "ffn.down")
    for tp in (8, 16):
        print(_line(f"1-D tp={tp}", solve(og, ShardingMesh(tp, cluster, token_split="sequence")), mats))
    for shape in ((1, 8), (2, 4), (4, 2), (2, 8)):
        plan = solve(og, ShardingMesh2D(*shape, cluster, token_split="sequence"))
        print(_line(f"2-D {shape[0]}x{shape[1]}", plan, mats))


if __name__ == "__main__":
    blocks()
    others()
    meshes_2d()
