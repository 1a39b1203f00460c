"""Issue 19's export fixes, checked without the frameworks installed: torchtitan 0.3 vs 0.2 output,
its model sections and float8 converters; DeepSpeed's batch under AutoTP, its pipeline keys and
current notes; every export that changes the plan re-scored with the cost model.
(tests/test_export_frameworks.py loads the same exports with the frameworks themselves.)"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from hardware.cluster import load_cluster
from models.errors import SpecError
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.export import export_plan
from planner.export.rescore import percent
from planner.export.torchtitan import tt_version
from test_export import write_plan

MIXED = ("none",) * 51 + ("selective",) * 28 + ("full",)


def plan(tmp_path: Path, name: str, model: str, gpus: int, train: Training, par: Parallel) -> Path:
    return write_plan(tmp_path / f"{name}.json", load_model(model), load_cluster(f"h100-sxm-80gb:{gpus}"), train, par)


# --- DeepSpeed ---------------------------------------------------------------------------------------

def test_deepspeed_batch_counts_every_autotp_rank(tmp_path):
    path = plan(tmp_path, "autotp", "llama3-8b", 8, Training(64, 4096),
                Parallel(dp=2, tp=4, zero=3, sequence_parallel=True, recompute="full"))
    exp = export_plan(path, "deepspeed")
    cfg = exp.config
    # deepspeed.initialize without an mpu: DeepSpeedConfig's world is all 8 ranks (runtime/config.py)
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 8
    assert cfg["gradient_accumulation_steps"] == 32 and cfg["tensor_parallel"] == {"autotp_size": 4}
    assert any("counts all 8 AutoTP ranks" in n and "plan's 64 sequences" in n for n in exp.notes)
    assert any("ZeRO 0-3" in n for n in exp.notes) and not any("ZeRO 0-2" in n for n in exp.notes)


def test_deepspeed_pipeline_keys_are_ones_deepspeed_reads(tmp_path):
    path = plan(tmp_path, "pp", "llama3-70b", 64, Training(1024, 4096),
                Parallel(dp=2, tp=8, pp=4, vpp=2, schedule="interleaved", zero=2, sequence_parallel=True,
                         recompute=MIXED))
    exp = export_plan(path, "deepspeed")
    # 0 would defer to the PipelineModule's own interval (0: no recompute at all)
    assert exp.config["pipeline"] == {"activation_checkpoint_interval": 1}
    assert exp.config["zero_optimization"] == {"stage": 1}  # the pipeline engine asserts ZeRO < 2
    assert any("PipelineModule(layers, topology=PipeModelDataParallelTopology(num_pp=4, num_mp=8, num_dp=2)" in n
               for n in exp.notes)
    rescored = next(n for n in exp.notes if n.startswith("re-scored:"))
    for change in ("ZeRO-1 for ZeRO-2", "non-interleaved 1F1B", "recompute full for all 80 blocks"):
        assert change in rescored


def test_deepspeed_expert_and_sequence_parallel_notes_are_current(tmp_path):
    ep = export_plan(plan(tmp_path, "ep", "qwen3-30b-a3b", 16, Training(256, 4096),
                          Parallel(dp=16, ep=8, zero=3, recompute="full")), "deepspeed")
    assert ep.config["expert_parallel"] == {"enabled": True, "autoep_size": 8}
    assert not any("no key in DeepSpeed's config" in n for n in ep.notes)
    cp = export_plan(plan(tmp_path, "cp", "llama3-8b", 16, Training(32, 32768),
                          Parallel(dp=4, cp=4, zero=3, recompute="full")), "deepspeed")
    assert any("register_with_transformers(..., sequence_parallel_size=4)" in n for n in cp.notes)
    assert cp.config["train_batch_size"] == 32  # Ulysses' mpu: DeepSpeed counts world / sp = 4 ranks
    hsdp = export_plan(plan(tmp_path, "hsdp", "llama3-8b", 32, Training(256, 8192),
                            Parallel(dp=32, dp_replicate=4, zero=3, micro_batch=2)), "deepspeed")
    assert "mics_shard_size" not in hsdp.config["zero_optimization"]  # DeepSpeed 0.19.8 removed MiCS


# --- torchtitan --------------------------------------------------------------------------------------

def test_torchtitan_version_is_a_release_line(tmp_path):
    assert [tt_version(v) for v in ("0.3", "0.3.0", "v0.2.2", "0.2")] == ["0.3", "0.3", "0.2", "0.2"]
    path = plan(tmp_path, "v", "llama3-8b", 8, Training(64, 4096), Parallel(dp=8, zero=3))
    with pytest.raises(SpecError, match="0.3.x or 0.2.x"):
        export_plan(path, "torchtitan", "0.1.0")
    assert export_plan(path, "torchtitan").text.startswith('"""torchtitan 0.3 configuration')
    assert export_plan(path, "torchtitan", "0.2.2").text.startswith("# torchtitan 0.2.x job config")


MODELS = {  # model -> GPUs, plan, 0.3 recipe line, 0.2 [model] name/flavor (None: no 0.2 flavor)
    "deepseek-v3": (64, Parallel(dp=8, pp=8, ep=8, zero=1, recompute="full", stage_layers=(7, 8, 8, 8, 8, 8, 8, 6)),
                    "config = deepseek_v3_671b()", ("deepseek_v3", "671B")),
    "qwen3-30b-a3b": (8, Parallel(dp=8, ep=8, zero=3, recompute="full"), "config = qwen3_30b_a3b()", ("qwen3", "30B-A3B")),
    "llama3.2-1b": (8, Parallel(dp=8, zero=3), 'config.model_spec = model_registry("1B")', None),
    "mixtral-8x7b": (16, Parallel(dp=16, ep=8, zero=3, recompute="full"), "config = Trainer.Config()", None),
}


@pytest.mark.parametrize("model", MODELS)
def test_torchtitan_names_the_model_or_says_it_cannot(tmp_path, model):
    gpus, par, recipe, flavor = MODELS[model]
    path = plan(tmp_path, model, model, gpus, Training(64 * gpus, 4096), par)
    new, old = export_plan(path, "torchtitan", "0.3"), export_plan(path, "torchtitan", "0.2")
    assert recipe in new.text and "debugmodel" not in new.text + old.text
    section = tomllib.loads(old.text)["model"]
    if flavor:
        assert (section["name"], section["flavor"]) == flavor and section["hf_assets_path"].startswith("./assets/hf/")
    else:  # a name torchtitan 0.2 does not register: it stops instead of building llama3's debug model
        assert section == {"name": model} and any(f"model {model}:" in n for n in old.notes)
    assert any(f"model {model}:" in n for n in new.notes) == (model == "mixtral-8x7b")


@pytest.mark.parametrize("model,gpus", [("llama3-8b", 8), ("qwen3-30b-a3b", 8)])
def test_torchtitan_fp8_uses_the_registered_converters(tmp_path, model, gpus):
    par = Parallel(dp=8, ep=8 if "qwen" in model else 1, zero=3, recompute="full")
    path = plan(tmp_path, model, model, gpus, Training(64, 4096, dtype="fp8"), par)
    moe = "qwen" in model
    old = tomllib.loads(export_plan(path, "torchtitan", "0.2").text)
    assert old["model"]["converters"] == ["quantize.linear.float8"] + (["quantize.grouped_mm.float8"] if moe else [])
    assert old["quantize"]["linear"]["float8"]["recipe_name"] == "rowwise"
    assert ("grouped_mm" in old["quantize"]) == moe
    new = export_plan(path, "torchtitan", "0.3")
    ast.parse(new.text)
    assert "Float8LinearConverter.Config(" in new.text
    assert ("Float8GroupedExpertsConverter.Config(" in new.text) == moe
    assert new.config["converters"] == ["Float8LinearConverter"] + (["Float8GroupedExpertsConverter"] if moe else [])


# --- re-scoring (item 8) -----------------------------------------------------------------------------

def rescored(notes: list[str]) -> tuple[float, str]:
    note = next(n for n in notes if n.startswith("re-scored:"))
    m = re.search(r"step time (\S+) s vs the plan's (\S+) s \(([+-]\d+%)\)", note)
    assert m, note
    return float(m.group(1)), m.group(3)


def test_a_changed_plan_is_rescored_with_the_cost_model(tmp_path):
    model, cluster = load_model("llama3-70b"), load_cluster("h100-sxm-80gb:64")
    train, par = Training(1024, 4096), Parallel(dp=2, tp=8, pp=4, zero=1, sequence_parallel=True, recompute=MIXED)
    path = write_plan(tmp_path / "mixed.json", model, cluster, train, par)
    exp = export_plan(path, "torchtitan")
    base = estimate(model, cluster, train, par).predicted.step_time_s
    # torchtitan runs full recompute everywhere, FSDP2 ZeRO-2 for ZeRO-1, eager (exposed) TP collectives
    ran = estimate(model, cluster, replace(train, tp_overlap="none"), par.with_(recompute="full", zero=2))
    got, pct = rescored(exp.notes)
    assert got == pytest.approx(ran.predicted.step_time_s, rel=1e-2)
    assert pct == percent(ran.predicted.step_time_s, base) and pct.startswith("+") and pct != "+0%"
    mega = export_plan(path, "megatron")  # block recompute: first 20 blocks of every chunk in full
    blocks = tuple("full" if i < 20 else "none" for _ in range(4) for i in range(20))
    want = estimate(model, cluster, train, par.with_(recompute=blocks)).predicted.step_time_s
    assert rescored(mega.notes)[0] == pytest.approx(want, rel=1e-2)


def test_gpipe_becomes_1f1b_in_megatron_and_is_rescored(tmp_path):
    path = plan(tmp_path, "gpipe", "llama3-8b", 8, Training(64, 4096),
                Parallel(dp=2, pp=4, schedule="gpipe", zero=1, recompute="full"))
    notes = export_plan(path, "megatron").notes
    assert any(n.startswith("re-scored:") and "1F1B for GPipe" in n for n in notes)


def test_an_export_that_runs_the_plan_is_not_rescored(tmp_path):
    train = Training(64, 4096, tp_overlap="none", norm_impl="unfused")
    path = plan(tmp_path, "exact", "llama3-8b", 8, train, Parallel(dp=4, tp=2, zero=3, sequence_parallel=True,
                                                                    recompute="full"))
    for target in ("torchtitan", "megatron"):
        assert not any(n.startswith("re-scored:") for n in export_plan(path, target).notes), target
    doc = json.loads(path.read_text())
    assert doc["parallelism"]["zero_stage"] == 3


def test_megatron_carries_rope_norm_and_deepseek_routing(tmp_path):
    path = plan(tmp_path, "dsv3", "deepseek-v3", 64, Training(256, 4096),
                Parallel(dp=8, pp=8, ep=8, zero=1, recompute="full", stage_layers=(7, 8, 8, 8, 8, 8, 8, 6)))
    args = export_plan(path, "megatron").config
    pairs = dict(zip(args, args[1:] + [""]))
    assert pairs["--position-embedding-type"] == "yarn" and pairs["--rotary-scaling-factor"] == "40"
    assert (pairs["--rotary-base"], pairs["--norm-epsilon"]) == ("10000", "1e-06")
    assert pairs["--yarn-original-max-position-embeddings"] == "4096"
    assert pairs["--moe-router-score-function"] == "sigmoid" and "--moe-router-enable-expert-bias" in args
    assert (pairs["--moe-router-topk-scaling-factor"], pairs["--moe-router-num-groups"],
            pairs["--moe-router-group-topk"]) == ("2.5", "8", "4")
    llama = export_plan(plan(tmp_path, "l8", "llama3-8b", 8, Training(64, 4096), Parallel(dp=8)), "megatron").config
    assert llama[llama.index("--rotary-base") + 1] == "500000" and "--moe-router-score-function" not in llama
