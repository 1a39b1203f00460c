"""Software-stack profiles (planner/stacks): data with sources, chosen with --stack, recorded in
plan files, and the behaviours each field prices, each against a hand computation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from models.errors import SpecError
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.cost.layer import graph_costs
from planner.stacks import PRESETS_DIR, StackProfile, list_stacks, load_stack, stack_overrides

runner = CliRunner()
LEAVES = ("name", "title", "description", "export_target", "sources", "compute_scale", "interval")


def _fields(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields") and name not in ("interval",):
            out += _fields(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


@pytest.mark.parametrize("name", list_stacks())
def test_every_field_of_every_preset_has_a_source(name):
    data = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
    sources = data["sources"]
    for path in _fields(StackProfile):
        if path.split(".")[0] in LEAVES:
            continue
        parts = path.split(".")
        covered = any(".".join(parts[:i]) in sources for i in range(1, len(parts) + 1))
        assert covered, f"{name}: no source for {path}"
    assert load_stack(name).name == name


def test_unknown_stack_and_bad_override_are_one_line_errors():
    with pytest.raises(SpecError, match="unknown stack 'torchtitn'; did you mean torchtitan"):
        load_stack("torchtitn")
    with pytest.raises(SpecError, match="unknown field"):
        load_stack("deepspeed", {"zero3.spam": 1})
    assert load_stack("deepspeed", {"zero3.span": "node"}).zero3.span == "node"


def test_overrides_round_trip():
    prof = load_stack("torchtitan", {"zero3.span": "gpu", "dp_grad_overlap": False})
    assert stack_overrides(prof) == {"zero3.span": "gpu", "dp_grad_overlap": False}
    assert stack_overrides(load_stack("torchtitan")) == {}


def _block(stack: str, recompute: str):
    spec = load_model("llama3-8b")
    train = Training(2, 4096, stack=load_stack(stack))
    par = Parallel(dp=8, micro_batch=1)
    graph = build_graph(spec, 4096, "flash", "fused")
    return graph, graph_costs(graph, load_cluster("h100-sxm-80gb:8"), train, par)[1]


def test_selective_recompute_means_what_each_stack_does():
    """Megatron (attention core) with flash attention keeps every tensor but the log-sum-exp;
    torchtitan's op policy drops wk, wo and w3's outputs (every second matmul output: k, the
    out-projection output and up) and recomputes them; autopar's runtime keeps all matmul outputs."""
    _, mega = _block("megatron-core", "selective")
    _, titan = _block("torchtitan-compile", "selective")
    _, ours = _block("autopar", "selective")
    tokens, h, kv, f = 4096, 4096, 1024, 14336
    assert mega.act_bytes["selective"] == pytest.approx(mega.act_bytes["none"])
    # op policy: block input, q, v, context, lse, gate, down_out kept
    kept = 2 * tokens * (h + h + kv + h + f + h) + 4 * tokens * 32
    assert titan.act_bytes["selective"] == pytest.approx(kept)
    # autopar keeps k, the out-projection output and up as well
    assert ours.act_bytes["selective"] == pytest.approx(kept + 2 * tokens * (kv + h + f))
    assert titan.recompute_s["selective"] > ours.recompute_s["selective"] > 0


def test_gradient_sync_after_the_backward_is_all_exposed():
    spec, cl = load_model("llama3-8b"), load_cluster("h100-sxm-80gb:16")
    par = Parallel(dp=16, micro_batch=1, zero=0)
    base = Training(32, 4096, stack=load_stack("megatron-core"))
    late = replace(base, stack=load_stack("megatron-core", {"dp_grad_overlap": False}))
    a = estimate(spec, cl, base, par).predicted["time_breakdown_s"]["dp_sync_exposed_s"]
    b = estimate(spec, cl, late, par).predicted["time_breakdown_s"]["dp_sync_exposed_s"]
    assert b > 2 * a > 0


def test_zero3_over_one_nic_per_gpu_is_slower_across_nodes():
    spec, cl = load_model("llama3-70b"), load_cluster("a100-sxm-80gb:64")
    par = Parallel(dp=64, micro_batch=1, zero=3, recompute="full")
    node = Training(64, 2048, stack=load_stack("deepspeed", {"zero3.span": "node"}))
    nic = replace(node, stack=load_stack("deepspeed"))
    tn, tg = (estimate(spec, cl, t, par).predicted["time_breakdown_s"]["zero_exposed_s"] for t in (node, nic))
    assert tg > 3 * tn


def test_torchtitan_under_pp_holds_unsharded_weights_and_gradients():
    """reshard_after_forward = not pp_enabled: 2 + 4 bytes per local parameter more, no per
    micro-batch gathers."""
    spec, cl = load_model("llama3-8b"), load_cluster("h100-sxm-80gb:16")
    par = Parallel(dp=8, pp=2, micro_batch=1, zero=3)
    titan = Training(64, 4096, stack=load_stack("torchtitan"))
    flat = replace(titan, stack=load_stack("torchtitan", {"zero3.reshard_after_forward_with_pp": True}))
    a, b = (estimate(spec, cl, t, par).predicted for t in (titan, flat))
    wa, wb = a["stages"][0]["memory"]["weights_bytes"], b["stages"][0]["memory"]["weights_bytes"]
    costs = graph_costs(build_graph(spec, 4096, "flash", "unfused"), cl, titan, par)
    rank0 = costs[0].params_local + 16 * costs[1].params_local  # embedding + 16 of 32 blocks
    assert wa - wb == pytest.approx(6 * rank0)
    assert a["time_breakdown_s"]["zero_exposed_s"] == 0 and b["time_breakdown_s"]["zero_exposed_s"] > 0


def test_cli_stack_changes_the_prediction_and_is_recorded(tmp_path):
    base = ["-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "16", "-s", "8192", "--zero", "3"]
    out = {}
    for stack in ("torchtitan", "torchtitan-compile"):
        r = runner.invoke(app, ["estimate", *base, "--stack", stack, "--format", "json"])
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["inputs"]["training"]["stack"] == stack and doc["predicted"]["stack"] == stack
        lo, hi = doc["predicted"]["step_time_interval_s"]
        assert lo < doc["predicted"]["step_time_s"] < hi
        out[stack] = doc["predicted"]["step_time_s"]
    assert out["torchtitan"] > out["torchtitan-compile"]  # eager norms cost more passes
    plan = tmp_path / "p.json"
    r = runner.invoke(app, ["plan", *base[:8], "--stack", "torchtitan", "--set", "stack.zero3.span=gpu",
                            "--tp", "1", "--pp", "1", "--time-limit", "5", "--out", str(plan)])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(plan.read_text())
    assert doc["inputs"]["training"]["stack"] == "torchtitan"
    assert doc["inputs"]["training"]["stack_overrides"] == {"zero3.span": "gpu"}
    assert "--stack torchtitan" in doc["reproduce"] and "stack.zero3.span=gpu" in doc["reproduce"]
    again = runner.invoke(app, ["estimate", "--plan", str(plan), "--format", "json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["predicted"]["step_time_s"] == pytest.approx(doc["predicted"]["step_time_s"])
    warn = runner.invoke(app, ["export", str(plan), "--to", "megatron", "--format", "json"])
    assert any("priced for the torchtitan stack" in n for n in json.loads(warn.stdout)["notes"])
    ok = runner.invoke(app, ["export", str(plan), "--to", "torchtitan", "--format", "json"])
    assert not any("priced for" in n for n in json.loads(ok.stdout)["notes"])


def test_estimate_lists_defaults_and_rejects_plan_with_flags(tmp_path):
    r = runner.invoke(app, ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "16", "-s", "4096",
                            "--tp", "2", "--stack", "torchtitan", "--format", "json"])
    doc = json.loads(r.stdout)
    assert doc["defaulted"]["zero"] == 3 and doc["defaulted"]["recompute"] == "selective"
    assert doc["defaulted"]["sequence_parallel"] is True and "tp" not in doc["defaulted"]
    bad = runner.invoke(app, ["estimate", "--plan", str(tmp_path / "x.json"), "--tp", "2"])
    assert bad.exit_code == 2 and "drop --tp" in bad.stderr


def test_a_plan_that_does_not_fit_names_the_smallest_change_that_does():
    args = ["estimate", "-m", "llama3-70b", "-c", "h100-sxm-80gb:16", "-b", "16", "-s", "4096", "--tp", "8"]
    r = runner.invoke(app, args + ["--format", "json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert not doc["fits"] and doc["predicted"]["step_time_s"] > 0
    fix = doc["smallest_fitting_change"]
    assert fix["predicted"]["peak_memory_bytes"] <= fix["predicted"]["memory_capacity_bytes"]
    assert "smallest change that fits: " + fix["flags"] in r.stderr


def test_headroom_is_kept_free_by_estimate_and_plan():
    base = ["-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "16", "-s", "4096", "--format", "json"]
    caps = {}
    for h in ("0%", "10%", "8GiB"):
        r = runner.invoke(app, ["estimate", *base, "--memory-headroom", h])
        caps[h] = json.loads(r.stdout)["predicted"]["memory_capacity_bytes"]
    gib = 2**30
    assert caps["0%"] - caps["10%"] == pytest.approx(0.1 * 80 * gib)
    assert caps["0%"] - caps["8GiB"] == pytest.approx(8 * gib)
    bad = runner.invoke(app, ["estimate", *base, "--memory-headroom", "lots"])
    assert bad.exit_code == 2 and "--memory-headroom 'lots'" in bad.stderr
