"""HSDP (``dp_replicate``): the cost model against its closed form, the placement MILP against the
cost model, the planner choosing HSDP where it is right and not where it is not (checked against
each choice searched alone), plan files, the CLI and the exports. Loss parity of the runtime's
HSDP is tests/test_runtime_hsdp.py."""

from __future__ import annotations

import json
import shlex
import tomllib

import pytest
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.planfile.schema import SCHEMA_VERSION
from planner.config import Parallel, PlanError, Training
from planner.cost.estimate import estimate
from planner.cost.layer import graph_costs
from planner.knobs import RECOMPUTE_OPTIONS
from planner.planfile import load_plan, plan_inputs
from planner.search import Knobs, search
from planner.search.milp.data import build_data
from planner.search.milp.placement import build_placement_model, read_assignment

runner = CliRunner()
SPEC = load_model("llama3-8b")
OPTS = ("none", "selective", "full")
FSDP = {"tp": (1,), "pp": (1,), "zero": (3,)}  # a torchtitan-style FSDP job: data parallelism only


def _tiers(cl):
    eff = cl.gpu.efficiency
    return (cl.intra_node_bw_GBps * 1e9 * eff.intra_node_link, cl.intra_node_latency_us * 1e-6,
            cl.inter_node_bw_GBps * 1e9 * eff.inter_node_link, cl.inter_node_latency_us * 1e-6)


def test_collectives_memory_and_tail_match_the_closed_form():
    """16 H100s on 2 nodes, ZeRO-3 over dp 16 vs HSDP 2 replicas x 8 shards. Ring collectives
    (nccl-tests' bus-bandwidth convention, one alpha per step): the shard group is one node of 8,
    so a block's gather is 7·α_intra + 7/8·2P/bw_intra and its fp32 reduce-scatter 7·α_intra +
    7/8·4P/bw_intra; its replicas are 2 ranks on 2 nodes, so the all-reduce of a 1/8 gradient
    shard is 2·α_inter + 4P/8/bw_inter. States shard over 8 ranks instead of 16; the step's tail
    is the replica all-reduce under the last backward, max(R − B, tax·R) + the largest block's."""
    cl, train = load_cluster("h100-sxm-80gb:16"), Training(64, 4096)
    hsdp, full = Parallel(dp=16, zero=3, dp_replicate=2), Parallel(dp=16, zero=3)
    graph = build_graph(SPEC, train.seq_len, train.attention_impl, train.norm_impl)
    costs, costs_full = graph_costs(graph, cl, train, hsdp), graph_costs(graph, cl, train, full)
    bw_intra, a_intra, bw_inter, a_inter = _tiers(cl)
    block = costs[1]
    p = block.params_dp_replicas
    assert block.params_local == p  # dense block: every parameter is data-parallel replicated
    assert block.dp_ag_s == pytest.approx(7 * a_intra + 7 / 8 * 2 * p / bw_intra, rel=1e-12)
    assert block.dp_rs_s == pytest.approx(7 * a_intra + 7 / 8 * 4 * p / bw_intra, rel=1e-12)
    assert block.dp_rep_ar_s == pytest.approx(2 * a_inter + 4 * p / 8 / bw_inter, rel=1e-12)
    assert costs_full[1].dp_rep_ar_s == 0 and costs_full[1].dp_ag_s > block.dp_ag_s  # across both nodes
    e, e_full = estimate(SPEC, cl, train, hsdp), estimate(SPEC, cl, train, full)
    m, m_full = e.predicted.stages[0].memory, e_full.predicted.stages[0].memory
    for key in ("weights_bytes", "gradients_bytes", "optimizer_bytes"):
        assert getattr(m, key) == pytest.approx(2 * getattr(m_full, key), rel=1e-12)
    rep, b_rank = sum(c.dp_rep_ar_s for c in costs), sum(c.bwd_s for c in costs)
    tax = cl.gpu.efficiency.overlap_tax
    tail = max(rep - b_rank, tax * rep) + max(c.dp_rep_ar_s for c in costs[1:-1])
    assert e.predicted.stages[0].dp_sync_exposed_s == pytest.approx(tail, rel=1e-12)
    assert e_full.predicted.stages[0].dp_sync_exposed_s == 0  # ZeRO-3 alone has no end-of-step sync


@pytest.mark.parametrize("exact", [True, False])
def test_placement_milp_prices_hsdp_as_the_cost_model_does(exact):
    """Both backends agree; the exact formulation's objective is estimate() of its own plan."""
    cl, train = load_cluster("h100-sxm-80gb:16"), Training(32, 2048)
    par = Parallel(dp=8, pp=2, zero=3, dp_replicate=2)
    graph = build_graph(SPEC, train.seq_len, train.attention_impl, train.norm_impl)
    d = build_data(graph, graph_costs(graph, cl, train, par), cl, train, par, OPTS)
    model, v = build_placement_model(d, exact=exact)
    a, b = model.solve("ortools", 60), model.solve("pulp", 60)
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-6)
    if exact:
        sizes, rc = read_assignment(d, v, a.values)
        e = estimate(SPEC, cl, train, par.with_(stage_layers=sizes, recompute=rc))
        assert e.predicted.stages[0].dp_sync_exposed_s > 0  # the replica all-reduce is in the tail
        assert e.step_time_s == pytest.approx(a.objective, rel=1e-6)


def _best(cluster, train, knobs, spec=SPEC):
    res = search(spec, cluster, train, Knobs(knobs), time_limit_s=30)
    assert res.certificate.status in ("optimal", "within_gap")
    return res.best


def test_planner_picks_hsdp_where_gathers_across_nodes_cost_more_than_the_memory_they_save():
    """64 H100s on 100 Gb/s Ethernet (12.5 GB/s per GPU), an FSDP job (ZeRO-3, no tp or pp): sharding
    over all 64 ranks sends every gather and reduce-scatter across nodes each micro-batch, while
    8 replicas of node-sized shard groups keep them on NVLink and send one all-reduce of a 1/8
    shard across nodes per step. 16 bytes per parameter over 8 GPUs is 15 GiB for 8B parameters:
    the memory full sharding saves is not needed. The planner, allowed both, picks HSDP, and its
    plan is the faster of the two searched alone."""
    cl, train = load_cluster("h100-sxm-80gb:64", {"inter_node_bw_GBps": 12.5}), Training(512, 4096)
    # The three recompute options: kept sets (planner/search/kept_options.py) shrink full
    # sharding's recompute (3.383 s → 3.128 s) more than HSDP's (3.163 s → 3.109 s), leaving
    # HSDP ahead by less than the 1% asserted here.
    three = {"recompute": RECOMPUTE_OPTIONS}
    both = _best(cl, train, FSDP | three | {"dp_replicate": (1, 8)})
    alone = {r: _best(cl, train, FSDP | three | {"dp_replicate": (r,)}) for r in (1, 8)}
    assert both.par.dp_replicate == 8 and both.par.dense_shard == 8
    assert alone[8].step_time_s < alone[1].step_time_s * 0.99
    assert both.step_time_s == pytest.approx(alone[8].step_time_s, rel=1e-12)
    assert both.par.describe() == f"dp64 tp1 pp1 cp1 ep1 zero3 hsdp8x8 mb{both.par.micro_batch} 1f1b"


def test_planner_keeps_full_sharding_inside_one_node():
    """On one node every collective is on NVLink either way; HSDP only adds the replica all-reduce
    and holds twice the states, so the planner keeps ZeRO-3 over all 8 ranks."""
    cl, train = load_cluster("h100-sxm-80gb:8"), Training(64, 4096)
    both = _best(cl, train, FSDP | {"dp_replicate": (1, 2)})
    alone = {r: _best(cl, train, FSDP | {"dp_replicate": (r,)}) for r in (1, 2)}
    assert both.par.dp_replicate == 1
    assert alone[1].step_time_s < alone[2].step_time_s
    assert both.step_time_s == pytest.approx(alone[1].step_time_s, rel=1e-12)


def test_planner_keeps_full_sharding_when_a_node_cannot_hold_the_shards():
    """Llama 3 70B: 16 bytes per parameter over 8 GPUs is 131 GiB, more than an H100 holds even
    with full recompute, so only sharding across nodes fits."""
    spec, cl, train = load_model("llama3-70b"), load_cluster("h100-sxm-80gb:64"), Training(256, 4096)
    assert not estimate(spec, cl, train, Parallel(dp=64, zero=3, dp_replicate=8, recompute="full")).fits
    best = _best(cl, train, FSDP | {"dp_replicate": (1, 8)}, spec)
    assert best.par.dp_replicate == 1 and best.fits


def test_hsdp_needs_sharded_states_and_replicas_dividing_dp():
    cl, train = load_cluster("h100-sxm-80gb:16"), Training(64, 4096)
    with pytest.raises(PlanError, match="needs --zero 2 or 3") as exc:
        estimate(SPEC, cl, train, Parallel(dp=16, zero=1, dp_replicate=2))
    assert exc.value.field == "dp_replicate"
    with pytest.raises(PlanError, match=r"dp_replicate \(3\) must divide dp \(16\)"):
        estimate(SPEC, cl, train, Parallel(dp=16, zero=3, dp_replicate=3))
    r = runner.invoke(app, ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:16", "-b", "64", "-s", "4096",
                            "--zero", "1", "--dp-replicate", "2"])
    assert r.exit_code == 2 and "needs --zero 2 or 3" in r.stderr and r.stdout == ""


@pytest.fixture(scope="module")
def hsdp_plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("hsdp") / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "llama3-8b", "-c", "h100-sxm-80gb:64", "-b", "512", "-s", "4096", "--tp", "1",
                            "--pp", "1", "--zero", "3", "--dp-replicate", "1,8", "--set",
                            "cluster.inter_node_bw_GBps=12.5", "--out", str(path), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    return path, json.loads(r.stdout)


def test_hsdp_plan_file_rescores_validates_and_runs_the_same_knob(hsdp_plan):
    path, doc = hsdp_plan
    assert doc["schema_version"] == SCHEMA_VERSION and doc["parallelism"]["dp_replicate"] == 8
    assert "--dp-replicate 1,8" in doc["reproduce"]
    again = runner.invoke(app, ["estimate", "--plan", str(path), "--format", "json"])
    assert json.loads(again.stdout)["predicted"]["step_time_s"] == doc["predicted"]["step_time_s"]
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    # A 1.0 plan file has no dp_replicate: it reads as 1 (full sharding).
    old = json.loads(path.read_text())
    old["schema_version"] = "1.0"
    del old["parallelism"]["dp_replicate"]
    path.with_name("old.json").write_text(json.dumps(old))
    assert plan_inputs(load_plan(path.with_name("old.json")))[3].dp_replicate == 1


def test_hsdp_exports(hsdp_plan):
    path, _ = hsdp_plan
    tt = runner.invoke(app, ["export", str(path), "--to", "torchtitan", "--torchtitan-version", "0.2"])
    assert tt.exit_code == 0, tt.stderr
    par = tomllib.loads(tt.stdout)["parallelism"]
    assert (par["data_parallel_replicate_degree"], par["data_parallel_shard_degree"]) == (8, 8)
    assert par["fsdp_reshard_after_forward"] == "default"
    mg = runner.invoke(app, ["export", str(path), "--to", "megatron"])
    argv = shlex.split(mg.stdout.split("MEGATRON_ARGS=(", 1)[1].split("\n)", 1)[0])
    assert argv[argv.index("--num-distributed-optimizer-instances") + 1] == "8"
    assert argv[argv.index("--outer-dp-sharding-strategy") + 1] == "no_shard"
    assert argv[argv.index("--data-parallel-sharding-strategy") + 1] == "optim_grads_params"
    ds = runner.invoke(app, ["export", str(path), "--to", "deepspeed"])
    cfg = json.loads(ds.stdout)
    assert cfg["zero_optimization"]["stage"] == 3
    assert "mics_shard_size" not in cfg["zero_optimization"]  # DeepSpeed 0.19.8 rejects it
    assert "no hybrid sharding" in ds.stderr
