"""`autopar export`: published plans exported to Megatron-LM, DeepSpeed and torchtitan and parsed
back field by field; per-block recompute reductions; CLI exit codes, stdout and stderr apart."""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cases import case_inputs, load_cases  # noqa: E402
from cli import app  # noqa: E402
from hardware.cluster import load_cluster  # noqa: E402
from models.load import load_model  # noqa: E402
from planner.config import Parallel, Training, grad_reduce_bytes  # noqa: E402
from planner.cost.estimate import estimate  # noqa: E402
from planner.export import export_plan  # noqa: E402
from planner.planfile import build_plan  # noqa: E402

runner = CliRunner()
PUBLISHED = ["narayanan21-t1-145.6b", "korthikanti22-22b-sp-selective", "tt24-70b-256gpu-2d",
             "automodel-qwen3-30b-8xh100-bf16"]


def write_plan(path: Path, model, cluster, train, par) -> Path:
    """A plan file for a given (not searched) plan: estimate + the plan writer."""
    est = estimate(model, cluster, train, par)
    solver = {"backend": "none", "status": "given", "objective": est.predicted["step_time_s"],
              "best_bound": None, "gap": None, "wall_time_s": 0.0}
    path.write_text(json.dumps(build_plan(est, solver, "given by hand", {})))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """case id -> (plan path, the plan's Parallel/Training/model, blocks per chunk, recompute per chunk)."""
    out, root = {}, tmp_path_factory.mktemp("plans")
    for c in load_cases():
        if c["id"] in PUBLISHED:
            ci = case_inputs(c)
            path = write_plan(root / f"{ci.id}.json", ci.model, ci.cluster, ci.train, ci.par)
            doc = json.loads(path.read_text())
            out[ci.id] = (path, ci, [s["layers"][1] - s["layers"][0] for s in doc["stages"]],
                          [s["recompute"] for s in doc["stages"]])
    return out


# --- parsers of the exported files (independent of the exporter) -------------------------------

def megatron_argv(text: str) -> list[str]:
    body = text.split("MEGATRON_ARGS=(", 1)[1].split("\n)", 1)[0]
    return shlex.split(body)


def megatron_namespace(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    for flag in ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
                 "--expert-model-parallel-size", "--micro-batch-size", "--global-batch-size", "--seq-length",
                 "--num-virtual-stages-per-pipeline-rank", "--decoder-first-pipeline-num-layers",
                 "--decoder-last-pipeline-num-layers", "--recompute-num-layers", "--num-layers"):
        ap.add_argument(flag, type=int)
    for flag in ("--pipeline-model-parallel-layout", "--recompute-granularity", "--recompute-method",
                 "--data-parallel-sharding-strategy"):
        ap.add_argument(flag)
    for flag in ("--sequence-parallel", "--use-distributed-optimizer", "--use-megatron-fsdp"):
        ap.add_argument(flag, action="store_true")
    ns, _ = ap.parse_known_args(argv)
    return ns


def megatron_chunks(ns: argparse.Namespace) -> list[int]:
    """Blocks per chunk in chunk order, as Megatron-LM reads the split arguments."""
    pp, layers = ns.pipeline_model_parallel_size, ns.num_layers
    if ns.pipeline_model_parallel_layout:
        s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), ns.pipeline_model_parallel_layout)
        return [stage.count("t") for stage in s.split("|")]
    if ns.decoder_first_pipeline_num_layers is not None:
        first = ns.decoder_first_pipeline_num_layers
        last = ns.decoder_last_pipeline_num_layers if ns.decoder_last_pipeline_num_layers is not None \
            else layers - first if pp == 2 else None
        mid = (layers - first - last) // (pp - 2) if pp > 2 else None
        return [first] + [mid] * (pp - 2) + [last]
    chunks = pp * (ns.num_virtual_stages_per_pipeline_rank or 1)
    return [layers // chunks] * chunks


def megatron_recompute(ns: argparse.Namespace, sizes: list[int]) -> list[list[str]]:
    if ns.recompute_granularity is None:
        return [["none"] * n for n in sizes]
    if ns.recompute_granularity == "selective":
        return [["selective"] * n for n in sizes]
    if ns.recompute_method == "uniform":
        assert ns.recompute_num_layers == 1
        return [["full"] * n for n in sizes]
    k = ns.recompute_num_layers
    return [["full"] * min(k, n) + ["none"] * max(n - k, 0) for n in sizes]


def megatron_zero(ns: argparse.Namespace) -> int:
    if ns.use_megatron_fsdp:
        return {"optim": 1, "optim_grads": 2, "optim_grads_params": 3}[ns.data_parallel_sharding_strategy]
    return 1 if ns.use_distributed_optimizer else 0


# --- field-by-field checks against three published plans and one MoE plan ------------------------

@pytest.mark.parametrize("case_id", PUBLISHED)
def test_megatron_arguments_carry_the_published_plan(published, case_id):
    path, ci, sizes, recompute = published[case_id]
    p, exp = ci.par, export_plan(path, "megatron")
    ns = megatron_namespace(megatron_argv(exp.text))
    assert megatron_argv(exp.text) == exp.config
    world = ci.cluster.num_gpus
    dp = world // (ns.tensor_model_parallel_size * ns.pipeline_model_parallel_size * ns.context_parallel_size)
    assert (dp, ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size, ns.context_parallel_size) \
        == (p.dp, p.tp, p.pp, p.cp)
    assert (ns.expert_model_parallel_size or 1) == p.ep
    assert ns.sequence_parallel == p.sequence_parallel
    assert (ns.micro_batch_size, ns.global_batch_size, ns.seq_length) == (p.micro_batch, ci.train.global_batch,
                                                                          ci.train.seq_len)
    got_sizes = megatron_chunks(ns)
    assert got_sizes == sizes and len(got_sizes) == p.pp * p.vpp  # the virtual stages and the split
    assert megatron_recompute(ns, got_sizes) == recompute
    assert megatron_zero(ns) == p.zero
    assert ns.num_layers == ci.model.num_layers
    pred = json.loads(path.read_text())["predicted"]
    over = pred["peak_memory_bytes"] > pred["memory_capacity_bytes"]
    assert any("predicted NOT to fit" in n for n in exp.notes) == over


@pytest.mark.parametrize("case_id", PUBLISHED)
def test_deepspeed_json_carries_the_published_plan(published, case_id):
    path, ci, sizes, recompute = published[case_id]
    p, exp = ci.par, export_plan(path, "deepspeed")
    cfg = json.loads(exp.text)
    assert cfg == exp.config
    micro, gas = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    # DeepSpeed's batch check counts a PipelineModule's dp ranks, else every rank (AutoTP's too)
    ranks = p.dp if p.pp > 1 else p.dp * p.tp
    assert (micro, gas * p.dp * micro) == (p.micro_batch, ci.train.global_batch)
    assert cfg["train_batch_size"] == micro * gas * ranks
    assert cfg["zero_optimization"]["stage"] == (min(p.zero, 1) if p.pp > 1 else p.zero)
    assert cfg.get("tensor_parallel", {}).get("autotp_size", 1) == (p.tp if p.pp == 1 else 1)
    assert set(cfg.get("pipeline", {})) <= {"activation_checkpoint_interval"}  # DeepSpeed reads no stages here
    per_rank = [sum(o != "none" for j, r in enumerate(recompute) if j % p.pp == k for o in r) for k in range(p.pp)]
    if max(per_rank) == 0:
        assert "activation_checkpointing" not in cfg
    else:
        assert cfg["activation_checkpointing"]["number_checkpoints"] == max(per_rank)
    if p.pp > 1:
        any_full = any(o == "full" for r in recompute for o in r)
        assert cfg.get("pipeline", {}).get("activation_checkpoint_interval", 0) == (1 if any_full else 0)
    if p.vpp > 1:  # DeepSpeed has no virtual stages: a note must say so
        assert any(f"vpp {p.vpp}" in n for n in exp.notes)
    if any(o == "selective" for r in recompute for o in r):
        assert any("selective" in n for n in exp.notes)
    dt = "fp16" if ci.train.dtype == "fp16" else "bf16"  # 2021 Megatron-LM runs are fp16 (bench/cases.py)
    assert cfg[dt] == {"enabled": True}
    # the gradient dtype the plan was priced with: fp32 for bf16 (and for fp16 under ZeRO-3), else fp16
    assert cfg["communication_data_type"] == ("fp32" if grad_reduce_bytes(ci.train, p.zero) == 4 else dt)


def torchtitan_sections(exp) -> dict:
    """A torchtitan export as {section: {key: value}}: the 0.2 TOML, or what the 0.3 module's
    function assigns (``config.<section>.<key> = <literal>``), read with ast."""
    if exp.text.startswith("#"):
        return tomllib.loads(exp.text)
    fn = next(n for n in ast.parse(exp.text).body if isinstance(n, ast.FunctionDef))
    out: dict = {}
    for node in fn.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            path = ast.unparse(node.targets[0]).split(".")
            if len(path) == 3 and path[0] == "config" and path[1] != "model_spec":
                out.setdefault(path[1], {})[path[2]] = ast.literal_eval(node.value)
    return out


@pytest.mark.parametrize("version", ["0.3", "0.2"])
@pytest.mark.parametrize("case_id", PUBLISHED)
def test_torchtitan_export_carries_the_published_degrees(published, case_id, version):
    path, ci, sizes, recompute = published[case_id]
    p, exp = ci.par, export_plan(path, "torchtitan", version)
    cfg = torchtitan_sections(exp)
    if version == "0.2":
        assert cfg == exp.config
    else:
        assert {f"{s}.{k}": v for s, body in cfg.items() for k, v in body.items()} == exp.config["set"]
    par, tr = cfg["parallelism"], cfg["training"]
    assert par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] == p.dp
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"], par["context_parallel_degree"],
            par["expert_parallel_degree"]) == (p.tp, p.pp, p.cp, p.ep)
    async_tp = par if version == "0.2" else cfg["compile"]
    assert async_tp["enable_async_tensor_parallel"] is False
    assert (tr["global_batch_size"], tr["seq_len"]) == (ci.train.global_batch, ci.train.seq_len)
    m = ci.train.global_batch // (p.dp * p.micro_batch)
    if p.pp > 1:  # one local batch of m micro-batches, cut by the pipeline
        assert tr["local_batch_size"] == m * p.micro_batch and par["pipeline_parallel_microbatch_size"] == p.micro_batch
        assert par["pipeline_parallel_schedule"] == {"1f1b": "1F1B", "interleaved": "Interleaved1F1B"}[p.schedule]
        parts = par["module_fqns_per_model_part"]
        assert [sum(n.startswith("layers.") for n in part) for part in parts] == sizes
        head = "output" if version == "0.2" else "lm_head"
        assert parts[0][0] == "tok_embeddings" and parts[-1][-2:] == ["norm", head]
    else:  # torchtitan accumulates global / (local * dp) local batches
        assert tr["local_batch_size"] == p.micro_batch
        assert tr["global_batch_size"] // (tr["local_batch_size"] * p.dp) == m
    if p.zero == 3:
        assert par["data_parallel_shard_degree"] == p.dp and par["fsdp_reshard_after_forward"] == "default"
    if version == "0.2":
        assert cfg["activation_checkpoint"]["mode"] == recompute[0][0]
    else:
        assert exp.config["activation_checkpoint"] == recompute[0][0]


# --- recompute and split forms beyond the published plans --------------------------------------

def llama_plan(tmp_path: Path, name: str, **kw) -> Path:
    par = Parallel(**{"dp": 4, "pp": 2, **kw})
    return write_plan(tmp_path / name, load_model("llama3-8b"), load_cluster("h100-sxm-80gb:8"),
                      Training(64, 4096), par)


def test_first_k_blocks_per_chunk_map_to_megatron_block_recompute(tmp_path):
    rc = (("full",) * 4 + ("none",) * 12) * 2
    path = llama_plan(tmp_path, "block.json", stage_layers=(16, 16), recompute=rc)
    exp = export_plan(path, "megatron")
    ns = megatron_namespace(exp.config)
    assert (ns.recompute_granularity, ns.recompute_method, ns.recompute_num_layers) == ("full", "block", 4)
    assert megatron_recompute(ns, megatron_chunks(ns)) == [list(rc[:16]), list(rc[16:])]
    assert not any("recompute" in n for n in exp.notes)  # exact: no note
    tt = export_plan(path, "torchtitan", "0.2")
    assert tomllib.loads(tt.text)["activation_checkpoint"]["mode"] == "full"
    assert any(n.startswith("recompute: the plan mixes") for n in tt.notes) and "# note: recompute" in tt.text
    ds = json.loads(export_plan(path, "deepspeed").text)
    assert ds["activation_checkpointing"]["number_checkpoints"] == 4
    # 0 would leave the PipelineModule's own interval (0: no recompute); 1 checkpoints every block
    assert ds["pipeline"] == {"activation_checkpoint_interval": 1}


def test_unequal_mix_recomputes_at_least_the_plan_and_says_so(tmp_path):
    rc = ("full",) * 2 + ("selective",) * 3 + ("none",) * 11 + ("full",) * 1 + ("none",) * 15
    path = llama_plan(tmp_path, "mix.json", stage_layers=(16, 16), recompute=rc)
    exp = export_plan(path, "megatron")
    ns = megatron_namespace(exp.config)
    got = megatron_recompute(ns, megatron_chunks(ns))
    strength = {"none": 0, "selective": 1, "full": 2}
    for chunk_got, chunk_plan in zip(got, (rc[:16], rc[16:])):
        assert sum(strength[o] for o in chunk_got) >= sum(strength[o] for o in chunk_plan)
    assert ns.recompute_num_layers == 5
    assert any("3 full" in n and "3 selective" in n and "5/1" in n for n in exp.notes)
    assert "# note: recompute" in exp.text


def test_uneven_end_stages_use_first_last_flags_and_gpipe_is_noted(tmp_path):
    path = llama_plan(tmp_path, "uneven.json", dp=1, pp=8, schedule="gpipe", stage_layers=(3, 4, 4, 4, 4, 4, 4, 5))
    exp = export_plan(path, "megatron")
    ns = megatron_namespace(exp.config)
    assert (ns.decoder_first_pipeline_num_layers, ns.decoder_last_pipeline_num_layers) == (3, 5)
    assert ns.pipeline_model_parallel_layout is None and megatron_chunks(ns) == [3, 4, 4, 4, 4, 4, 4, 5]
    assert any("GPipe" in n for n in exp.notes)
    for version in ("0.3", "0.2"):
        tt = torchtitan_sections(export_plan(path, "torchtitan", version))["parallelism"]
        assert tt["pipeline_parallel_schedule"] == "GPipe"


def test_zero_stages_map_per_target(tmp_path):
    for zero, strategy in ((1, None), (2, "optim_grads")):
        path = llama_plan(tmp_path, f"z{zero}.json", dp=8, pp=1, zero=zero)
        ns = megatron_namespace(export_plan(path, "megatron").config)
        assert megatron_zero(ns) == zero and ns.data_parallel_sharding_strategy == strategy
        tt = export_plan(path, "torchtitan")
        assert torchtitan_sections(tt)["parallelism"]["fsdp_reshard_after_forward"] == "never"
        assert any(f"ZeRO-{zero}" in n for n in tt.notes) == (zero == 1)
    ddp = torchtitan_sections(export_plan(llama_plan(tmp_path, "z0.json", dp=8, pp=1), "torchtitan", "0.2"))
    assert ddp["parallelism"]["data_parallel_replicate_degree"] == 8


def test_torchtitan_notes_the_backward_tp_overlap_it_does_not_do(tmp_path):
    def notes(overlap: str) -> list[str]:
        path = write_plan(tmp_path / f"{overlap}.json", load_model("llama3-8b"), load_cluster("h100-sxm-80gb:8"),
                          Training(64, 4096, tp_overlap=overlap), Parallel(dp=2, tp=4, sequence_parallel=True))
        return export_plan(path, "torchtitan").notes
    assert any("tp_overlap=none" in n for n in notes("backward"))
    assert not any("tp_overlap" in n for n in notes("none"))


# --- the command line ---------------------------------------------------------------------------

def test_cli_text_goes_to_stdout_and_notes_to_stderr(published):
    path = published["tt24-70b-256gpu-2d"][0]
    r = runner.invoke(app, ["export", str(path), "--to", "torchtitan"])
    assert r.exit_code == 0, r.stderr
    assert "config.parallelism.data_parallel_shard_degree = 32" in r.stdout
    assert "Float8LinearConverter" in r.stdout  # the plan's fp8, in torchtitan 0.3's own terms
    assert r.stderr == ""  # FSDP2 + TP + SP, full recompute, compile, float8: torchtitan 0.3 runs it as planned


def test_cli_out_writes_the_file_and_says_so(published, tmp_path):
    path, out = published["narayanan21-t1-145.6b"][0], tmp_path / "args.sh"
    r = runner.invoke(app, ["export", str(path), "--to", "megatron", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "" and f"wrote {out}" in r.stderr
    assert megatron_namespace(megatron_argv(out.read_text())).tensor_model_parallel_size == 8


def test_cli_json_has_config_and_notes(published):
    path = published["korthikanti22-22b-sp-selective"][0]
    r = runner.invoke(app, ["export", str(path), "--to", "deepspeed", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "export" and doc["target"] == "deepspeed"
    assert doc["config"]["tensor_parallel"]["autotp_size"] == 8 and json.loads(doc["text"]) == doc["config"]
    assert doc["notes"] and all(f"note: {n}" in r.stderr for n in doc["notes"])


@pytest.mark.parametrize("args,needle", [
    (["--to", "jax"], "--to must be one of torchtitan, megatron, deepspeed (got 'jax')"),
    (["--to", "megatron", "--format", "yaml"], "--format must be one of text, json"),
])
def test_cli_bad_input_exits_2(published, args, needle):
    r = runner.invoke(app, ["export", str(published["tt24-70b-256gpu-2d"][0])] + args)
    assert r.exit_code == 2 and r.stdout == ""
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_or_edited_plan_exits_2(published, tmp_path):
    r = runner.invoke(app, ["export", str(tmp_path / "none.json"), "--to", "megatron"])
    assert r.exit_code == 2 and "plan file not found" in r.stderr and r.stdout == ""
    doc = json.loads(published["tt24-70b-256gpu-2d"][0].read_text())
    doc["parallelism"]["dp"] = 16  # hand-edited: no longer 256 GPUs
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(doc))
    r = runner.invoke(app, ["export", str(bad), "--to", "deepspeed"])
    assert r.exit_code == 2 and "!= 256 GPUs" in r.stderr and r.stdout == ""
