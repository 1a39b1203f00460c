"""Intra-op sharding ILP (planner/search/milp/sharding.py): equals brute force on small random op
graphs (CP-SAT, and PuLP/CBC on the same model); rediscovers Megatron's column→row pattern with
one all-reduce per sub-block forward (reduce-scatter / all-gather with sequence parallelism) on
Llama- and GPT-style blocks at tp 2, 4, 8; beats every fixed pattern on graphs that are not
transformers; solves repeated layers once."""

from __future__ import annotations

import json
import random

import pytest

from hardware.cluster import load_cluster
from hardware.comm import all_gather_s, all_reduce_s, all_to_all_s, reduce_scatter_s
from models.graph import build_graph
from models.load import load_model
from planner.config import PlanError
from planner.search.milp import sharding
from planner.search.milp.sbp import ShardingMesh, conversion_s, op_strategies
from planner.search.milp.sbp_2d import ShardingMesh2D
from planner.search.milp.sharding import build_model, build_problem, solve
from planner.search.milp.sharding_baselines import best_fixed_pattern, brute_force, fixed_pattern
from planner.search.milp.sharding_graph import OpGraph, OpSpec, block_op_graph, conv_net, embedding_lm, mlp_stack

CLUSTER = load_cluster("h100-sxm-80gb:8")


def random_graph(rng: random.Random, n_mid: int) -> OpGraph:
    """input → n_mid ops (matmul, norm or element-wise; element-wise ops may read two earlier
    ops of equal width) → output, with random widths and row counts, so costs differ."""
    rows = rng.choice([256, 2048, 16384])
    ops = [OpSpec("x", "input", (), rows, rng.choice([64, 512, 4096]))]
    for i in range(n_mid):
        kind = rng.choice(["matmul", "matmul", "norm", "elementwise"])
        src = rng.choice(ops)
        if kind == "matmul":
            n = rng.choice([64, 1024, 8192])
            k = src.width
            ops.append(OpSpec(f"m{i}", "matmul", (src.name,), rows, n, k, float(k * n), 2.0 * rows * k * n, float(rows * (k + n))))
            continue
        same = [o.name for o in ops if o.width == src.width and o.name != src.name]
        srcs = (src.name,) + ((rng.choice(same),) if same and kind == "elementwise" and rng.random() < 0.5 else ())
        params = float(src.width) if kind == "norm" else 0.0
        ops.append(OpSpec(f"e{i}", kind, srcs, rows, src.width, params=params, io_elems=3.0 * rows * src.width))  # type: ignore[arg-type]
    ops.append(OpSpec("y", "output", (ops[-1].name,), rows, ops[-1].width))
    return OpGraph(f"random{rng.random():.6f}", tuple(ops), tie_boundary=rng.random() < 0.3)


def test_ilp_equals_brute_force_on_random_graphs() -> None:
    """60 random graphs of 3-6 ops (2-4 strategies each), a third with a memory budget; PuLP on 15."""
    rng = random.Random(7)
    agree = pulp_agree = 0
    for case in range(60):
        g = random_graph(rng, rng.randint(1, 4))
        mesh = ShardingMesh(rng.choice([2, 4, 8]), CLUSTER, token_split=rng.choice(["none", "sequence", "all"]))
        sizes = [len(s) for s in build_problem(g, mesh).strategies]
        assert 3 <= len(g.ops) <= 6 and max(sizes) <= 4
        budget = None
        if case % 3 == 0:
            free = brute_force(g, mesh)
            budget = int(free.memory_bytes * rng.uniform(0.5, 1.0))
        try:
            truth = brute_force(g, mesh, budget)
        except PlanError:
            with pytest.raises(PlanError):
                solve(g, mesh, budget)
            continue
        ilp = solve(g, mesh, budget)
        assert round(ilp.time_s * 1e9) == round(truth.time_s * 1e9), (g, [o.strategy for o in truth.ops])
        agree += 1
        if case % 4 == 0:
            cbc = solve(g, mesh, budget, backend="pulp")
            assert round(cbc.time_s * 1e9) == round(truth.time_s * 1e9)
            pulp_agree += 1
    assert agree >= 50 and pulp_agree >= 12


def test_conversion_prices_are_the_collectives() -> None:
    mesh = ShardingMesh(4, CLUSTER)
    g, n = mesh.group, 64e6
    assert conversion_s("P", "B", n, mesh) == all_reduce_s(CLUSTER, n, g)
    assert conversion_s("P", "S0", n, mesh) == reduce_scatter_s(CLUSTER, n, g)
    assert conversion_s("S1", "B", n, mesh) == all_gather_s(CLUSTER, n, g)
    assert conversion_s("S0", "S1", n, mesh) == all_to_all_s(CLUSTER, n / 4 * 3 / 4, g)
    assert conversion_s("B", "S1", n, mesh) == 0.0 == conversion_s("S0", "S0", n, mesh)
    assert conversion_s("B", "P", n, mesh) == float("inf")


def test_split_work_divides_compute_and_weight_state() -> None:
    g = mlp_stack([4096, 16384], 4096)
    fc = g.op("fc0")
    by = {s.name: s for s in op_strategies(fc, g, ShardingMesh(8, CLUSTER, token_split="all"))}
    assert set(by) == {"rep", "col", "row", "tok"}
    assert by["col"].compute_s < by["rep"].compute_s / 6  # 8× less work, plus fixed kernel overheads
    assert by["col"].in_grads == ("P",) and by["row"].output == "P" and by["row"].out_grad == "B"
    assert by["tok"].comm_s == all_reduce_s(CLUSTER, fc.params * 2, ShardingMesh(8, CLUSTER).group)
    assert by["col"].comm_s == 0.0


BLOCKS = [("llama3-8b", "ffn.gate_up", "ffn.down"), ("gpt3-1.3b", "ffn.fc1", "ffn.fc2")]


@pytest.mark.parametrize("model,up,down", BLOCKS)
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_rediscovers_megatron(model: str, up: str, down: str, tp: int) -> None:
    """Column QKV/MLP-up, heads-split attention, row out/down; forward: one all-reduce after each
    row linear; backward: one all-reduce of each column linear's input gradient."""
    graph = build_graph(load_model(model), 4096)
    plan = solve(block_op_graph(graph.layers[1], graph, 1), ShardingMesh(tp, CLUSTER))
    assert [plan.strategy(o) for o in ("attn.qkv", "attn.core", "attn.out", up, down)] == ["col", "heads", "row", "col", "row"]
    residual = [e.dst for e in plan.edges if e.src in ("attn.out", down)]
    assert plan.collectives("fwd") == [("attn.out", residual[0], "all-reduce"), (down, residual[1], "all-reduce")]
    assert plan.collectives("bwd") == [("attn.norm", "attn.qkv", "all-reduce"), ("ffn.norm", up, "all-reduce")]
    assert plan.strategy("x") == plan.strategy("y") == "rep"


@pytest.mark.parametrize("model,up,down", BLOCKS)
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_rediscovers_megatron_sequence_parallel(model: str, up: str, down: str, tp: int) -> None:
    """With row splits of norms and element-wise ops allowed, the all-reduces become an all-gather
    into each column linear and a reduce-scatter out of each row linear (Korthikanti et al. 2022)."""
    graph = build_graph(load_model(model), 4096)
    plan = solve(block_op_graph(graph.layers[1], graph, 1), ShardingMesh(tp, CLUSTER, token_split="sequence"))
    assert [plan.strategy(o) for o in ("attn.qkv", "attn.core", "attn.out", up, down)] == ["col", "heads", "row", "col", "row"]
    assert plan.strategy("attn.norm") == plan.strategy("ffn.norm") == plan.strategy("x") == "tok"
    kinds = [k for _, _, k in plan.collectives("fwd")]
    assert kinds == ["all-gather", "reduce-scatter", "all-gather", "reduce-scatter"]
    assert [k for _, _, k in plan.collectives("bwd")] == ["reduce-scatter", "all-gather", "reduce-scatter", "all-gather"]
    no_sp = solve(block_op_graph(graph.layers[1], graph, 1), ShardingMesh(tp, CLUSTER))
    assert plan.time_s < no_sp.time_s and plan.memory_bytes < no_sp.memory_bytes


def test_block_ilp_agrees_with_cbc() -> None:
    graph = build_graph(load_model("llama3-8b"), 4096)
    p = build_problem(block_op_graph(graph.layers[1], graph, 1), ShardingMesh(4, CLUSTER, token_split="all"))
    m, _ = build_model(p)
    assert m.solve("cp-sat").objective == m.solve("pulp").objective


CONV = conv_net(128, 32, [16, 128, 256, 512], [8192, 4096, 1024])


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_conv_net_mixes_data_and_tensor_parallelism(tp: int) -> None:
    """Convolutions (many pixels, small filters) split by samples, the classifier's big matrices
    split by features: cheaper than the best fixed pattern, and not Megatron's alternation."""
    mesh = ShardingMesh(tp, CLUSTER, token_split="all")
    plan = solve(CONV, mesh)
    name, best = best_fixed_pattern(CONV, mesh)
    assert plan.time_s < best.time_s * 0.95, (name, best.time_s, plan.time_s)
    assert [plan.strategy(f"conv{i}") for i in range(3)] == ["tok"] * 3
    assert plan.strategy("fc0") in ("col", "row")
    megatron = fixed_pattern(CONV, mesh, "megatron")
    assert megatron is not None and plan.time_s < megatron.time_s


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_bottleneck_mlp_under_a_memory_budget(tp: int) -> None:
    """1024→16384→64→16384→1024 on 24,576 rows: data parallelism is fastest but replicates every
    weight; Megatron fits. With a budget halfway between them the ILP shards the first half by
    features and the second by rows, faster than every fixed pattern within the budget."""
    g = mlp_stack([1024, 16384, 64, 16384, 1024], 24576)
    mesh = ShardingMesh(tp, CLUSTER, token_split="all")
    data, megatron = fixed_pattern(g, mesh, "data"), fixed_pattern(g, mesh, "megatron")
    assert data is not None and megatron is not None
    free = solve(g, mesh)
    assert free.time_s <= data.time_s < megatron.time_s
    budget = int((data.memory_bytes + megatron.memory_bytes) / 2)
    plan = solve(g, mesh, budget)
    name, best = best_fixed_pattern(g, mesh, budget)
    assert plan.memory_bytes <= budget and plan.time_s < best.time_s, (name, best.time_s, plan.time_s)
    assert [plan.strategy(f"fc{i}") for i in (0, 2, 4, 6)] == ["col", "row", "tok", "tok"]


def test_repeated_blocks_solve_once_and_plan_serialises() -> None:
    graph = build_graph(load_model("llama3.2-1b"), 2048)
    mesh = ShardingMesh(2, CLUSTER, token_split="sequence")
    before = sharding.SOLVES["count"]
    plans = [solve(block_op_graph(layer, graph, 1), mesh) for layer in graph.layers[1:-1]]
    assert len(plans) == graph.spec.num_layers > 1 and sharding.SOLVES["count"] == before + 1
    assert plans[-1].graph.startswith(graph.layers[-2].name) and plans[-1].time_s == plans[0].time_s
    doc = json.loads(json.dumps(plans[0].to_json()))
    assert doc["version"] == 1 and doc["tp"] == 2 and doc["time_s"] == pytest.approx(doc["compute_s"] + doc["comm_s"])
    assert {o["op"]: o["strategy"] for o in doc["ops"]}["attn.qkv"] == "col"


def test_infeasible_budget_says_what_binds() -> None:
    g = mlp_stack([1024, 4096, 1024], 1024)
    with pytest.raises(PlanError, match="memory budget .* below"):
        solve(g, ShardingMesh(2, CLUSTER), budget_bytes=1000)
    with pytest.raises(PlanError, match="not among"):
        solve(g, ShardingMesh(2, CLUSTER), fixed={"fc0": "tok"})


@pytest.mark.parametrize("tp", [2, 8])
def test_embedding_splits_under_a_budget(tp: int) -> None:
    """Unconstrained, the lookup is cheapest replicated; with a budget below the replicated
    table's training state the ILP splits the table (vocab → P, or hidden → S1), as brute force does."""
    g = embedding_lm(50304, 2048, 4096)
    mesh = ShardingMesh(tp, CLUSTER, token_split="sequence")
    free = solve(g, mesh)
    assert free.strategy("embed") == "rep" and free.strategy("logits") == "col"
    table_state = 50304 * 2048 * 16
    budget = int(free.memory_bytes - table_state * (1 - 1 / tp) / 2)
    plan, truth = solve(g, mesh, budget), brute_force(g, mesh, budget)
    assert plan.strategy("embed") in ("vocab", "hidden") and plan.memory_bytes <= budget
    assert round(plan.time_s * 1e9) == round(truth.time_s * 1e9)


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_2d_mesh_with_one_outer_rank_is_the_1d_mesh(tp: int) -> None:
    graph = build_graph(load_model("llama3-8b"), 4096)
    og = block_op_graph(graph.layers[1], graph, 1)
    one = solve(og, ShardingMesh(tp, CLUSTER, token_split="sequence"))
    two = solve(og, ShardingMesh2D(1, tp, CLUSTER, token_split="sequence"))
    assert two.time_s == pytest.approx(one.time_s, rel=1e-9) and two.memory_bytes == pytest.approx(one.memory_bytes)
    assert [o.strategy for o in two.ops] == ["repx" + o.strategy for o in one.ops]
    assert [k for _, _, k in two.collectives("fwd")] == [k + "@1" for _, _, k in one.collectives("fwd")]


def test_2d_ilp_equals_brute_force_on_random_graphs() -> None:
    rng = random.Random(11)
    agree = 0
    for case in range(25):
        g = random_graph(rng, rng.randint(1, 2))
        shape = rng.choice([(2, 2), (2, 4), (4, 2)])
        mesh = ShardingMesh2D(*shape, CLUSTER, token_split=rng.choice(["sequence", "all"]))
        truth = brute_force(g, mesh)
        ilp = solve(g, mesh, backend="cp-sat" if case % 5 else "pulp")
        assert round(ilp.time_s * 1e9) == round(truth.time_s * 1e9), g
        agree += 1
    assert agree == 25


def test_2d_mesh_over_two_nodes_beats_16_way_tensor_parallelism() -> None:
    """tp 16 spans two nodes: every block collective crosses the NICs. A 2 × 8 mesh keeps the
    attention's collectives inside a node and is faster."""
    two_nodes = load_cluster("h100-sxm-80gb:16")
    graph = build_graph(load_model("llama3-8b"), 4096)
    og = block_op_graph(graph.layers[1], graph, 1)
    flat = solve(og, ShardingMesh(16, two_nodes, token_split="sequence"))
    mesh2 = solve(og, ShardingMesh2D(2, 8, two_nodes, token_split="sequence"))
    assert mesh2.time_s < 0.7 * flat.time_s
    assert all(s.startswith("rep") for s in (mesh2.strategy("attn.qkv"), mesh2.strategy("attn.out")))
    assert mesh2.mesh_shape == (2, 8) and mesh2.to_json()["mesh_shape"] == [2, 8]
