"""Planner: both MILP backends agree; known answers are rediscovered; plan JSON and CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.commands import plan as plan_cli
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.cost.layer import graph_costs
from planner.knobs import RECOMPUTE_OPTIONS
from planner.search.milp.data import build_data
from planner.search.milp.placement import build_placement_model, read_assignment
from planner.planfile import plan_schema
from planner.search import Knobs, search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from cases import case_inputs, load_cases  # noqa: E402
from known_answers import FIG13  # noqa: E402

runner = CliRunner()
OPTS = ("none", "selective", "full")


@pytest.mark.parametrize("model,gpus,gbs,seq,par", [
    ("debug", 4, 16, 64, Parallel(dp=1, tp=2, pp=2, micro_batch=1)),
    ("debug-gpt", 8, 32, 64, Parallel(dp=2, tp=1, pp=4, micro_batch=2, zero=1)),
    ("debug-moe", 4, 16, 64, Parallel(dp=2, pp=2, micro_batch=1, zero=3, ep=2)),
    ("gpt3-1.3b", 16, 64, 1024, Parallel(dp=4, tp=2, pp=2, micro_batch=1, zero=1)),
    ("llama3-8b", 16, 32, 2048, Parallel(dp=2, tp=2, pp=4, micro_batch=1, schedule="gpipe")),
    ("qwen3-30b-a3b", 16, 64, 2048, Parallel(dp=4, tp=1, pp=4, ep=4, micro_batch=1, zero=1)),
])
@pytest.mark.parametrize("exact", [True, False])
def test_ortools_and_pulp_reach_the_same_objective(model, gpus, gbs, seq, par, exact):
    spec = load_model(model)
    gpu = "cpu" if model.startswith("debug") else "h100-sxm-80gb"
    cluster, train = load_cluster(f"{gpu}:{gpus}"), Training(gbs, seq, "fp32" if gpu == "cpu" else "bf16")
    graph = build_graph(spec, seq)
    d = build_data(graph, graph_costs(graph, cluster, train, par), cluster, train, par, OPTS)
    model_, v = build_placement_model(d, exact=exact)
    a, b = model_.solve("ortools", 60), model_.solve("pulp", 60)
    assert a.status == b.status == "optimal"
    assert a.objective == pytest.approx(b.objective, rel=1e-6)
    if exact:  # the exact formulation's objective is the cost model's step time of its plan
        sizes, rc = read_assignment(d, v, a.values)
        e = estimate(spec, cluster, train, par.with_(stage_layers=sizes, recompute=rc))
        assert e.predicted["step_time_s"] == pytest.approx(a.objective, rel=1e-6)


def _plan(model, cluster, gbs, seq, **knobs):
    return search(load_model(model), load_cluster(cluster), Training(gbs, seq), Knobs(knobs), time_limit_s=20)


def test_small_model_with_ample_memory_gets_pure_data_parallelism():
    p = _plan("gpt3-1.3b", "h100-sxm-80gb:8", 64, 2048).best.par
    assert (p.dp, p.tp, p.pp) == (8, 1, 1)


def test_memory_pressure_turns_on_zero_or_recompute_before_pipeline():
    p = _plan("llama3-8b", "h100-sxm-80gb:8", 64, 8192).best.par
    assert p.pp == 1 and p.tp == 1 and (p.zero >= 1 or p.recompute != "none")
    p = _plan("gpt3-1.3b", "a100-sxm-40gb:8", 256, 2048).best.par
    assert p.pp == 1 and p.zero >= 1


def test_gpt3_175b_on_1024_a100_keeps_tp_in_a_node_and_pipelines_across_nodes():
    """Every knob auto. The certified plan keeps tensor parallelism inside a node and pipelines
    across nodes (consecutive stages are tp·cp·dp ranks apart, at least a node), and is no slower
    than Megatron-LM's tp 8 · pp 8. The cost model prefers tp 4 · pp 8 to Megatron's tp 8
    (docs/architecture.md, Known limits); before gradients were priced in fp32 (the frameworks'
    bf16 default) it preferred ZeRO-2 with no pipeline at all."""
    # 30 s alone; the limit leaves room for a loaded CI machine (certifying is what is asserted)
    res = search(load_model("gpt3-175b"), load_cluster("a100-sxm-80gb:1024"), Training(1536, 2048), Knobs(),
                 time_limit_s=300)
    assert res.certificate["status"] in ("optimal", "within_gap")
    p = res.best.par
    assert p.pp > 1 and p.tp * p.cp <= 8 and p.tp * p.cp * p.dp >= 8
    megatron = Parallel(dp=16, tp=8, pp=8, micro_batch=1, zero=0, recompute="none", schedule="interleaved",
                        vpp=2, sequence_parallel=True)
    ref = estimate(load_model("gpt3-175b"), load_cluster("a100-sxm-80gb:1024"), Training(1536, 2048), megatron)
    assert ref.fits and res.best.predicted["step_time_s"] <= ref.predicted["step_time_s"] * (1 + res.certificate["gap"])


def test_gpt3_175b_on_1024_a100_with_2021_megatron_software_keeps_tp8_in_a_node():
    """Narayanan et al. 2021, Table 1: GPT-3 175B on 1,024 A100s at batch 1,536 ran tp 8 · pp 16
    (153 TFLOP/s per GPU). Megatron-LM then had no optimizer sharding (its distributed optimizer
    came in 2022) and unfused attention. With those two fixed (``--zero 0 --attention eager``) and
    every other knob auto, the planner keeps tensor parallelism at 8, inside a node, and pipelines
    across nodes; unsharded, tp 4 · pp 8 would hold 5.5B parameters per GPU at 18 bytes each
    (16-bit weights, fp32 gradients, Adam): 98 GB and does not fit. Certifying the whole space
    takes longer than a test may (at 120 s the search stops with the incumbent tp 8 · pp 8 and a
    true gap of 2.1%; earlier versions reported tp 8 · pp 16 as certified because the search
    overran its limit): what is asserted is the answer within its stated gap."""
    spec, cluster, train = load_model("gpt3-175b"), load_cluster("a100-sxm-80gb:1024"), Training(1536, 2048,
                                                                                                 "bf16", "eager")
    res = search(spec, cluster, train, Knobs({"zero": (0,)}), time_limit_s=120)
    gap = res.certificate["gap"]
    assert res.certificate["status"] in ("optimal", "within_gap", "time_limit") and gap <= 0.05
    p = res.best.par
    assert p.tp == 8 and p.pp >= 8 and p.tp * p.pp * p.dp == 1024
    assert not estimate(spec, cluster, train, Parallel(dp=32, tp=4, pp=8, micro_batch=1, zero=0, recompute="full",
                                                       sequence_parallel=True)).fits
    published = Parallel(dp=8, tp=8, pp=16, micro_batch=1, zero=0, recompute="full", schedule="interleaved", vpp=2)
    ref = estimate(spec, cluster, train, published)
    # No plan beats the returned one by more than the gap, the published one included.
    assert ref.fits and res.best.predicted["step_time_s"] <= ref.predicted["step_time_s"] * (1 + gap)


def test_gpt3_175b_on_128_a100_nodes_matches_nvidias_nemo_recipe():
    """NVIDIA's NeMo-Framework-Launcher training config gpt3/175b.yaml runs GPT-3 175B on 128 DGX
    A100 nodes at global batch 2,048: tp 4, pp 8, interleaved (virtual stages 12), sequence
    parallel, distributed Adam (ZeRO-1), micro-batch 1, selective recompute; Megatron-Bridge's
    gpt3_175b recipe keeps tp 4 · pp 8 · SP (vp 6). Every knob auto, the planner picks the same
    mesh and knobs, 12 virtual stages included (the exact search certifies tp 4 · pp 8 with 2; the
    deeper-interleaving step after it finds 12), and is no slower than the recipe under the cost
    model. Without the overlap tax (hardware.comm.exposed_s) it chose ZeRO-3 dp 512 · tp 2, whose
    gathers and scatters take as long as its backward."""
    spec, cluster, train = load_model("gpt3-175b"), load_cluster("a100-sxm-80gb:1024"), Training(2048, 2048)
    # The recipe's recompute options: with kept sets (planner/search/kept_options.py) the search
    # at 2 virtual stages ranks dp 64 · tp 2 · pp 8 ZeRO-2 first, and deeper interleaving (v 12)
    # then fits it with recompute none: 18.52 s against 19.06 s for this mesh.
    res = search(spec, cluster, train, Knobs({"recompute": RECOMPUTE_OPTIONS}), time_limit_s=60)
    cert = res.certificate
    assert cert["status"] in ("optimal", "within_gap")
    p = res.best.par
    assert (p.tp, p.pp, p.schedule, p.vpp, p.sequence_parallel, p.zero, p.micro_batch) == (4, 8, "interleaved", 12,
                                                                                           True, 1, 1)
    assert cert["deeper_interleaving"]["vpp"] == [2, 12]
    before, after = cert["deeper_interleaving"]["step_time_s"]
    assert after == res.best.predicted["step_time_s"] < before <= cert["best_bound_s"] * (1 + cert["gap_target"])
    assert cert["gap"] == pytest.approx((after - cert["best_bound_s"]) / after) and cert["gap"] < 0
    nemo = Parallel(dp=32, tp=4, pp=8, micro_batch=1, zero=1, recompute="selective", schedule="interleaved",
                    vpp=12, sequence_parallel=True)
    ref = estimate(spec, cluster, train, nemo)
    assert ref.fits
    assert res.best.predicted["step_time_s"] <= ref.predicted["step_time_s"]


def test_fixed_vpp_turns_deeper_interleaving_off():
    spec, cluster, train = load_model("gpt3-175b"), load_cluster("a100-sxm-80gb:1024"), Training(2048, 2048)
    res = search(spec, cluster, train, Knobs({"tp": (4,), "pp": (8,), "vpp": (2,)}), time_limit_s=60)
    assert res.best.par.vpp == 2 and "deeper_interleaving" not in res.certificate
    assert res.certificate["gap"] >= 0


# Narayanan et al. 2021, Fig. 13 (section 5.4.1): a 161B GPT with 32 layers, hidden 20,480 and 128
# heads on 64 A100s at batch 32 and 128; of the (tp, pp) splits 2·32, 4·16, 8·8, 16·4, 32·2,
# tp 8 · pp 8 was measured fastest at both batch sizes. 2021 Megatron-LM: no ZeRO, no sequence
# parallelism, eager attention, 1F1B. The spec (FIG13) lives in bench/known_answers.py.


@pytest.mark.parametrize("gbs", [32, 128])
def test_fig13_tensor_parallel_in_a_node_and_pipeline_across_nodes_is_fastest(gbs):
    spec, cluster = FIG13, load_cluster("a100-sxm-80gb:64")
    train = Training(gbs, 2048, "bf16", "eager", tp_overlap="none")
    knobs = Knobs({"dp": (1,), "tp": (2, 4, 8, 16, 32), "zero": (0,), "schedule": ("1f1b",),
                   "sequence_parallel": (False,)})
    res = search(spec, cluster, train, knobs, time_limit_s=60)
    assert res.certificate["status"] in ("optimal", "within_gap")
    assert (res.best.par.tp, res.best.par.pp) == (8, 8)
    # The same ranking with the paper's uniform settings (full recompute, micro-batch 1, even split).
    steps = {(t, 64 // t): estimate(spec, cluster, train, Parallel(dp=1, tp=t, pp=64 // t, micro_batch=1,
                                                                    recompute="full")).predicted["step_time_s"]
             for t in (2, 4, 8, 16, 32)}
    assert min(steps, key=steps.get) == (8, 8)


@pytest.mark.parametrize("model,cluster,gbs,seq,gap", [("gpt3-1.3b", "a100-sxm-40gb:8", 256, 2048, 0.01),
                                                        ("gpt3-1.3b", "a100-sxm-40gb:8", 256, 2048, 0.05),
                                                        ("llama3-8b", "h100-sxm-80gb:32", 256, 4096, 0.01)])
def test_alternatives_are_the_fastest_other_candidates(model, cluster, gbs, seq, gap):
    """The runner-ups are the k fastest other candidates, pruned ones included (brute force: each
    candidate's MILP plan if it was solved, else its even split with the least uniform recompute).
    With a loose gap a pruned candidate's even split can beat the incumbent: it becomes the plan."""
    from planner.search.heuristics import least_recompute_that_fits as _least_recompute_that_fits

    spec, cl, train = load_model(model), load_cluster(cluster), Training(gbs, seq)
    res = search(spec, cl, train, Knobs(), gap=gap, time_limit_s=30, top_k=3)
    same = res.best.par.with_(recompute="none", stage_layers=None)
    brute = []
    for r in res.candidates:
        e = r.best if r.best else _least_recompute_that_fits(spec, cl, train, r.par, OPTS)
        if r.par != same and e is not None:
            brute.append(e.predicted["step_time_s"])
    got = [a.best.predicted["step_time_s"] for a in res.alternatives]
    assert got == pytest.approx(sorted(brute)[:3], rel=1e-12)
    best = res.best.predicted["step_time_s"]
    assert best <= min(brute)
    for a in res.alternatives:
        assert a.par != same and a.best.predicted["step_time_s"] >= best
        assert a.best.predicted["step_time_s"] >= a.bound_s * (1 - 1e-9)  # the pruning bound was valid
    doc = plan_cli.alternatives_block(res)
    assert [d["placement"] for d in doc] == ["heuristic" if a.status == "heuristic" else "milp"
                                             for a in res.alternatives]


@pytest.mark.parametrize("case_id", ["narayanan21-t2-ptdp-174b-384gpu", "korthikanti22-22b-full-recompute",
                                     "tt24-8b-8gpu-fsdp", "mpt-7b-h100_80gb-8gpu-seq2048"])
def test_planner_is_never_slower_than_the_published_plan(case_id):
    c = next(x for x in load_cases() if x["id"] == case_id)
    ci = case_inputs(c)
    published = estimate(ci.model, ci.cluster, ci.train, ci.par).predicted["step_time_s"]
    # The search space must contain the published plan: add its micro-batch size to the list.
    knobs = Knobs({"cp": (ci.par.cp,), "micro_batch": tuple(sorted({1, 2, 4, 8, ci.par.micro_batch}))})
    res = search(ci.model, ci.cluster, ci.train, knobs, time_limit_s=20)
    assert res.best.predicted["step_time_s"] <= published * (1 + 1e-9)


def test_plan_json_matches_its_schema_and_rescores_identically(tmp_path):
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--out", str(out),
                            "--format", "json", "--time-limit", "30"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, plan_schema())
    for key in ("dp", "tp", "pp", "cp", "ep", "zero_stage", "micro_batch_size", "num_micro_batches", "schedule",
                "virtual_stages", "sequence_parallel"):
        assert key in doc["parallelism"]
    for key in ("backend", "status", "objective", "best_bound", "gap", "wall_time_s"):
        assert key in doc["solver"]
    assert doc["reproduce"].startswith("autopar plan")
    again = runner.invoke(app, ["estimate", "--plan", str(out), "--format", "json"])
    assert json.loads(again.stdout)["predicted"]["step_time_s"] == doc["predicted"]["step_time_s"]
    tampered = json.loads(out.read_text())
    tampered["inputs"]["model"]["num_layers"] = 8
    out.write_text(json.dumps(tampered))
    bad = runner.invoke(app, ["estimate", "--plan", str(out)])
    assert bad.exit_code == 2 and "sha256" in bad.stderr


def test_same_inputs_give_the_same_plan():
    args = ["plan", "-m", "debug", "-c", "cpu:8", "-b", "32", "-s", "64", "--format", "json"]
    a, b = (json.loads(runner.invoke(app, args).stdout) for _ in range(2))
    for doc in (a, b):
        doc["solver"].pop("wall_time_s"), doc["solver"].pop("phases_s")
        doc["solver"]["certificate"].pop("settled", None)
    assert a["parallelism"] == b["parallelism"] and a["stages"] == b["stages"] and a["predicted"] == b["predicted"]


def test_nothing_fits_is_exit_1_with_quantified_advice():
    r = runner.invoke(app, ["plan", "-m", "llama3-405b", "-c", "h100-sxm-80gb:8", "-b", "8", "-s", "4096"])
    assert r.exit_code == 1
    assert "binding constraint: memory" in r.stderr and "GiB" in r.stderr


def test_bad_knob_is_exit_2():
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--tp", "two"])
    assert r.exit_code == 2 and "--tp" in r.stderr


def test_schema_plan_prints_json_schema():
    r = runner.invoke(app, ["schema", "plan"])
    assert r.exit_code == 0 and json.loads(r.stdout)["title"] == "PlanFile"
