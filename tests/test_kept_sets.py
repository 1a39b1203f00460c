"""A recompute value that names a kept set (planner/kept_sets.py): its spelling, its price in the
cost model without a solver (planner/cost/kept_set.py), the plan file that carries it, and the
exports, which express it as full recompute with a note, never silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import write_plan
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from models.errors import SpecError
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.cost.kept_set import block_graph, priced_costs
from planner.cost.layer import saved_tensor_bytes
from planner.export import export_plan
from planner.kept_sets import check_kept_value, kept_value
from planner.knobs import BY_NAME
from planner.planfile.accept import PlanRejected, accept_plan, runtime_limits
from planner.planfile.load import load_plan, plan_inputs
from planner.planfile.schema import SCHEMA_VERSION
from planner.search.milp.recompute import solve

runner = CliRunner()
KEEP = "keep:attn.context+attn.k+attn.lse+attn.q+attn.v+ffn.gate+ffn.up"
SETTING = ("llama3-8b", "h100-sxm-80gb:8", Training(32, 8192), Parallel(dp=2, pp=4, micro_batch=2))


def _costs(recompute: str, model: str = "llama3-8b", par: Parallel = SETTING[3]):
    spec, cluster, train = load_model(model), load_cluster(SETTING[1]), SETTING[2]
    graph = build_graph(spec, train.seq_len, train.attention_impl, train.norm_impl)
    par = par.with_(recompute=recompute)
    return graph, cluster, train, par, priced_costs(graph, cluster, train, par)[1]


def test_one_spelling_sorted_without_duplicates_or_the_block_input() -> None:
    assert kept_value(["attn.v", "attn.q", "attn.v", "attn.norm_in"]) == "keep:attn.q+attn.v"
    assert BY_NAME["recompute"].parse_space("none,keep:attn.q+attn.v") == ("none", "keep:attn.q+attn.v")
    with pytest.raises(SpecError, match="sorted"):
        check_kept_value("keep:attn.v+attn.q")
    with pytest.raises(SpecError, match="not a tensor name"):
        BY_NAME["recompute"].parse_space("keep:q")


def test_the_price_spans_none_to_the_block_input() -> None:
    """Keeping every tensor the backward reads costs no recompute and none's bytes; keeping
    nothing holds full's bytes (the block input) and re-runs less than full, which also re-runs
    the last projection and residual add, whose outputs no backward reads."""
    graph, *_, cost = _costs("none")
    none = saved_tensor_bytes(graph.blocks[0], graph, *_costs("none")[1:4])["none"]
    everything = kept_value(name for name, _ in none)
    *_, c = _costs(everything)
    assert c.recompute_s[everything] == 0.0 and c.act_bytes[everything] == cost.act_bytes["none"]
    *_, c = _costs("keep:")
    assert c.act_bytes["keep:"] == cost.act_bytes["full"]
    assert 0.5 * cost.recompute_s["full"] < c.recompute_s["keep:"] < cost.recompute_s["full"]
    assert c.hw_flops["keep:"] < cost.hw_flops["full"]


def test_the_price_is_the_recomputation_programs_for_that_set() -> None:
    """At tp 1 (no collective re-runs) the closure price equals the two-phase program solved with
    the kept set fixed (CP-SAT), to its nanosecond rounding."""
    graph, cluster, train, par, c = _costs(KEEP)
    g = block_graph(graph.blocks[0], graph, cluster, train, par)
    kept = frozenset(KEEP[len("keep:") :].split("+"))
    opt = solve(g, sum(t.size for t in g.tensors), kept=kept | {"attn.norm_in"})
    assert opt is not None
    assert c.recompute_s[KEEP] == pytest.approx(opt.time * g.unit_s, rel=1e-6)
    assert c.act_bytes[KEEP] == pytest.approx(opt.memory, abs=len(kept) + 1)


def test_estimate_takes_a_kept_set_and_refuses_an_unknown_tensor() -> None:
    args = ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "32", "-s", "8192"]
    args += ["--pp", "4", "--micro-batch", "2"]
    r = runner.invoke(app, [*args, "--recompute", KEEP])
    assert r.exit_code == 0, r.stderr
    assert "keep(a.context,a.k,a.lse,a.q,a.v,f.gate,f.up)" in r.stdout
    r = runner.invoke(app, [*args, "--recompute", "keep:attn.q+ffn.fc1_out"])
    assert r.exit_code == 2
    assert "['ffn.fc1_out'] are not saved tensors of block" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _kept_plan(tmp_path: Path) -> Path:
    model, cluster, train, par = SETTING
    rc = ("none",) * 8 + (KEEP,) * 20 + ("full",) * 4
    return write_plan(tmp_path / "kept.json", load_model(model), load_cluster(cluster), train, par.with_(recompute=rc))


def test_the_plan_file_carries_a_kept_set(tmp_path) -> None:
    path = _kept_plan(tmp_path)
    doc = load_plan(path)
    assert doc["schema_version"] == SCHEMA_VERSION == "1.3"
    model, cluster, train, par = plan_inputs(doc)
    assert par.recompute.count(KEEP) == 20
    assert estimate(model, cluster, train, par).predicted.step_time_s == doc["predicted"]["step_time_s"]
    assert runtime_limits(doc) == []
    doc["stages"][1]["recompute"][0] = "keep:attn.v+attn.q"  # not the one spelling
    with pytest.raises(PlanRejected, match=r"stages\[1\].recompute"):
        accept_plan(doc)
    doc["stages"][1]["recompute"][0] = "keep:attn.qkv_in"  # priced, but the runtime cannot keep it
    [(field, why)] = runtime_limits(doc)
    assert field == "stages[1].recompute" and "keeps matmul and attention outputs" in why


@pytest.mark.parametrize("target", ["torchtitan", "megatron", "deepspeed"])
def test_exports_say_how_they_run_a_kept_set(tmp_path, target) -> None:
    """No target names a kept set: each recomputes those blocks fully (less memory than any kept
    set) and says so, with the re-scored step time; nothing is dropped silently."""
    exp = export_plan(_kept_plan(tmp_path), target)
    notes = " ".join(exp.notes)
    assert "kept set" in notes, exp.notes
    assert "keep:" not in exp.text and "selective" not in json.dumps(exp.config)
    assert "full" in exp.text or "checkpoint" in exp.text
