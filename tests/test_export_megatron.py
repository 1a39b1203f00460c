"""The Megatron-LM export against the rules of Megatron-LM's own argument checks.

Megatron-LM's parser does not install from PyPI on Python 3.11, so the rules the export relies on
are restated here, each with its source at Megatron-LM tag core_v0.19.0 (commit 5be9626709af), and
every export of the framework test matrix and the published plans must pass them."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from planner.export import export_plan
from test_export import megatron_argv
from test_export_frameworks import CASES, facts, plans  # noqa: F401  (the plans fixture)

INT_FLAGS = ("--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
             "--expert-model-parallel-size", "--micro-batch-size", "--global-batch-size", "--seq-length",
             "--num-virtual-stages-per-pipeline-rank", "--decoder-first-pipeline-num-layers",
             "--decoder-last-pipeline-num-layers", "--recompute-num-layers", "--num-layers", "--num-experts",
             "--num-distributed-optimizer-instances", "--rotary-base", "--moe-router-num-groups",
             "--moe-router-group-topk", "--yarn-original-max-position-embeddings")
# arguments.py:2335 --rotary-base is an int; transformer_config.py / arguments.py:3391-3395 floats
FLOAT_FLAGS = ("--norm-epsilon", "--moe-router-topk-scaling-factor", "--rotary-scaling-factor", "--mscale",
               "--mscale-all-dim", "--yarn-beta-fast", "--yarn-beta-slow")
STR_FLAGS = ("--pipeline-model-parallel-layout", "--recompute-granularity", "--recompute-method",
             "--data-parallel-sharding-strategy", "--ckpt-format", "--fp8-format", "--moe-router-score-function",
             "--position-embedding-type")
BOOL_FLAGS = ("--sequence-parallel", "--use-distributed-optimizer", "--use-megatron-fsdp", "--bf16", "--fp16",
              "--moe-router-enable-expert-bias", "--qk-layernorm", "--tp-comm-overlap")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    for flag in INT_FLAGS:
        ap.add_argument(flag, type=int)
    for flag in FLOAT_FLAGS:
        ap.add_argument(flag, type=float)
    for flag in STR_FLAGS:
        ap.add_argument(flag)
    for flag in BOOL_FLAGS:
        ap.add_argument(flag, action="store_true")
    ns, _ = ap.parse_known_args(argv)
    ns.tensor_model_parallel_size = ns.tensor_model_parallel_size or 1
    ns.expert_model_parallel_size = ns.expert_model_parallel_size or 1
    return ns


def validate(ns: argparse.Namespace, world: int, env: dict[str, str]) -> int:
    """Megatron-LM core_v0.19.0's rules the export relies on; returns its data-parallel size."""
    tp, pp, cp = ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size, ns.context_parallel_size
    # megatron/training/arguments.py:430 world % (tp*pp*cp) == 0; :446 dp = world // (tp*pp*cp)
    assert world % (tp * pp * cp) == 0
    dp = world // (tp * pp * cp)
    # megatron/core/num_microbatches_calculator.py:381 global % (micro * dp) == 0
    assert ns.global_batch_size % (ns.micro_batch_size * dp) == 0
    _validate_split(ns, pp)
    # arguments.py:1296 seq_length % (2 * cp) == 0 with cp > 1
    assert cp == 1 or ns.seq_length % (2 * cp) == 0
    # arguments.py:1386 selective granularity takes no method; transformer_config.py:1739/:1745 full
    # granularity needs method block|uniform and recompute_num_layers
    if ns.recompute_granularity == "selective":
        assert ns.recompute_method is None and ns.recompute_num_layers is None
    elif ns.recompute_granularity == "full":
        assert ns.recompute_method in ("block", "uniform") and ns.recompute_num_layers is not None
    fsdp = ns.use_megatron_fsdp
    # arguments.py:1143/:1146 Megatron-FSDP: CUDA_DEVICE_MAX_CONNECTIONS != 1, ckpt format fsdp_dtensor;
    # :1621 fsdp_dtensor only with Megatron-FSDP
    assert not fsdp or (env.get("CUDA_DEVICE_MAX_CONNECTIONS") != "1" and ns.ckpt_format == "fsdp_dtensor")
    assert ns.ckpt_format != "fsdp_dtensor" or fsdp
    # arguments.py:1437 tp or cp > 1 without FSDP (before Blackwell): CUDA_DEVICE_MAX_CONNECTIONS == 1
    assert fsdp or (tp == cp == 1) or env.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1"
    # arguments.py:1602 num_experts % ep == 0; model_parallel_config.py:564 ep > 1 with tp > 1 wants
    # sequence parallelism (a warning there; the plan's rule too)
    ep = ns.expert_model_parallel_size
    assert ep == 1 or (ns.num_experts is not None and ns.num_experts % ep == 0)
    assert not (ep > 1 and tp > 1) or ns.sequence_parallel
    # arguments.py validate_args: "Tensor parallel communication/GEMM overlap can happen only when
    # sequence parallelism is enabled"
    assert not ns.tp_comm_overlap or ns.sequence_parallel
    # transformer_config.py:2284 expert bias only with sigmoid / sqrtsoftplus scores;
    # arguments.py:2314 position embedding choices
    assert not ns.moe_router_enable_expert_bias or ns.moe_router_score_function in ("sigmoid", "sqrtsoftplus")
    assert ns.position_embedding_type in (None, "learned_absolute", "rope", "yarn", "mrope", "relative", "none")
    return dp


def _validate_split(ns: argparse.Namespace, pp: int) -> None:
    layers = ns.num_layers
    if ns.pipeline_model_parallel_layout:
        stages = ns.pipeline_model_parallel_layout.split("|")
        # arguments.py:911 len(layout) % pp == 0; pipeline_parallel_layer_layout.py:94-110 E first,
        # L last, once each, and as many t as num_layers
        assert len(stages) % pp == 0
        flat = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), "".join(stages))
        assert flat[0] == "E" and flat[-1] == "L" and flat.count("E") == flat.count("L") == 1
        assert flat.count("t") == layers
    elif ns.decoder_first_pipeline_num_layers or ns.decoder_last_pipeline_num_layers:
        # transformer_config.py:1998/:2017 end stages > 0; :2038/:2045 the rest divides over the middle
        first, last = ns.decoder_first_pipeline_num_layers, ns.decoder_last_pipeline_num_layers
        middle, rest = pp - (first is not None) - (last is not None), layers - (first or 0) - (last or 0)
        assert (first is None or first > 0) and (last is None or last > 0)
        assert bool(middle) == bool(rest) and (not middle or rest % middle == 0)
    else:
        # arguments.py:964 num_layers % pp == 0; :968 interleaving needs pp > 1 (p2p overlap on by default)
        vpp = ns.num_virtual_stages_per_pipeline_rank or 1
        assert layers % (pp * vpp) == 0 and (vpp == 1 or pp > 1)


def script_env(text: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)", text, flags=re.M))


@pytest.mark.parametrize("case", CASES)
def test_megatron_export_passes_megatron_checks(plans, case):  # noqa: F811
    path, doc = plans[case]
    f, exp = facts(doc), export_plan(path, "megatron")
    argv = megatron_argv(exp.text)
    ns = parse(argv)
    assert validate(ns, f["world"], script_env(exp.text)) == f["dp"]
    assert (ns.tensor_model_parallel_size, ns.pipeline_model_parallel_size, ns.context_parallel_size,
            ns.expert_model_parallel_size) == (f["tp"], f["pp"], f["cp"], f["ep"])
    assert (ns.micro_batch_size, ns.global_batch_size, ns.seq_length) == (f["micro_batch_size"], f["global"],
                                                                          f["seq_len"])
    assert ns.global_batch_size // (ns.micro_batch_size * f["dp"]) == f["m"]
    assert ns.sequence_parallel == (f["sequence_parallel"] and f["tp"] > 1)
    assert argv == shlex.split(" ".join(shlex.quote(a) for a in exp.config))


def test_the_rules_reject_what_megatron_rejects():
    good = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--context-parallel-size",
            "1", "--micro-batch-size", "1", "--global-batch-size", "8", "--seq-length", "4096", "--num-layers", "8",
            "--sequence-parallel"]
    env = {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    assert validate(parse(good), 8, env) == 2
    for argv, world, env_ in ((good, 12, env), (good, 8, {}), (good + ["--global-batch-size", "3"], 8, env),
                              (good + ["--recompute-granularity", "full"], 8, env),
                              (good + ["--pipeline-model-parallel-layout", "Et*4|t*3L"], 8, env)):
        with pytest.raises(AssertionError):
            validate(parse(argv), world, env_)
