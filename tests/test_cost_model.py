"""The cost and memory model pinned to closed forms from the literature."""

from __future__ import annotations

import time

import pytest

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.chunks import split_layers
from planner.cost.estimate import estimate, fits_in_memory
from planner.cost.layer import graph_costs
from planner.cost.memory import model_state_bytes

GPT = ModelSpec(name="gpt-22b", num_layers=48, hidden_size=6144, num_heads=64, ffn_hidden_size=24576,
                vocab_size=51200, max_seq_len=2048, norm="layernorm", activation="gelu", position="learned",
                bias=True, tie_embeddings=True, dropout=0.1)
S, B = 2048, 4


def _block_act(tp=1, sp=False, recompute="none") -> float:
    cluster = load_cluster("a100-sxm-80gb:8")
    par = Parallel(dp=8 // tp, tp=tp, micro_batch=B, sequence_parallel=sp)
    g = build_graph(GPT, S, "eager")
    return graph_costs(g, cluster, Training(64, S, attention_impl="eager"), par)[1].act_bytes[recompute]


def _korthikanti(tp: int, sp: bool, recompute: str) -> float:
    """Korthikanti et al. 2022, Table 2: activation bytes per layer, s·b·h·(...)."""
    s, b, h, a, t = S, B, GPT.hidden_size, GPT.num_heads, tp
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    attn = 0 if recompute == "selective" else 5 * a * s / h
    if sp:
        return s * b * h * (34 / t + attn / t)
    return s * b * h * (10 + 24 / t + attn / t)


@pytest.mark.parametrize("tp,sp,recompute", [
    (1, False, "none"), (8, False, "none"), (8, True, "none"), (8, True, "selective"), (1, False, "selective"),
    (8, False, "full"), (8, True, "full"), (4, True, "none"), (2, False, "selective")])
def test_activation_memory_matches_korthikanti(tp, sp, recompute):
    # fp32 norm statistics (8 bytes/token/LayerNorm) are the only tensors the paper leaves out.
    assert _block_act(tp, sp, recompute) == pytest.approx(_korthikanti(tp, sp, recompute), rel=2e-3)


def _states(zero: int, dtype: str, reduce: str = "auto") -> float:
    train = Training(global_batch=8, seq_len=S, dtype=dtype, grad_reduce_dtype=reduce)
    st = model_state_bytes(1e9, 0.0, zero=zero, dp_dense=8, dp_expert=8, train=train)
    return st.weights + st.gradients + st.optimizer


def test_sixteen_bytes_per_parameter_mixed_precision_adam():
    """ZeRO §3: 16 bytes per parameter with fp16 gradients, sharded stage by stage."""
    assert _states(0, "fp16") == 16e9
    assert _states(1, "fp16") == pytest.approx(4e9 + 12e9 / 8)
    assert _states(2, "fp16") == pytest.approx(2e9 + 14e9 / 8)
    assert _states(3, "fp16") == pytest.approx(16e9 / 8)
    assert _states(0, "bf16", "bf16") == 16e9  # Megatron --grad-reduce-in-bf16


def test_eighteen_bytes_per_parameter_with_fp32_gradients():
    """Megatron-LM README (distributed optimizer): bf16 params with fp32 grads take 18 bytes per
    parameter, 6 + 12/d with the distributed optimizer (ZeRO-1). FSDP2 stays at 16/d."""
    assert _states(0, "bf16") == 18e9
    assert _states(1, "bf16") == pytest.approx(6e9 + 12e9 / 8)
    assert _states(1, "fp8") == pytest.approx(6e9 + 12e9 / 8)
    assert _states(2, "bf16") == pytest.approx(2e9 + 16e9 / 8)
    assert _states(3, "bf16") == pytest.approx(16e9 / 8)
    assert _states(0, "fp32") == 16e9


def test_flops_match_narayanan_eq3():
    """72·B·s·l·h²·(1 + s/6h + V/12hl) per iteration without recompute (Narayanan et al. 2021 eq. 3)."""
    for spec in (GPT, load_model("gpt3-175b")):
        g = build_graph(spec, S, "eager")
        l, h, v = spec.num_layers, spec.hidden_size, spec.vocab_size
        eq3 = 72 * S * l * h * h * (1 + S / (6 * h) + v / (12 * h * l))
        assert g.model_flops_per_token() * S == pytest.approx(eq3, rel=1e-9)


def test_flops_match_6n_plus_attention():
    """6N + 12·l·h·s per token (Kaplan et al. 2020; PaLM appendix B), N = non-embedding weights + head."""
    spec = load_model("mpt-7b")
    g = build_graph(spec, S)
    n_matmul = sum(x.params_dense for x in g.blocks) + spec.vocab_size * spec.hidden_size
    expected = 6 * n_matmul + 12 * spec.num_layers * spec.hidden_size * S
    assert g.model_flops_per_token() == pytest.approx(expected, rel=1e-9)


def test_hfu_counts_the_recompute_forward():
    c = load_cluster("a100-sxm-80gb:8")
    e = estimate(GPT, c, Training(64, S, attention_impl="eager"), Parallel(dp=1, tp=8, micro_batch=4, recompute="full"))
    head = 6 * GPT.vocab_size * GPT.hidden_size
    body = e.predicted["model_flops_per_step"] - head * 64 * S
    expected_ratio = (body * 4 / 3 + head * 64 * S) / e.predicted["model_flops_per_step"]
    assert e.predicted["hfu"] / e.predicted["mfu"] == pytest.approx(expected_ratio, rel=1e-6)


def test_default_stage_split_is_even_with_ends_lighter():
    assert split_layers(126, 16) == [7] + [8] * 14 + [7]
    assert split_layers(32, 4) == [8, 8, 8, 8]
    assert sum(split_layers(5, 4)) == 5 and min(split_layers(5, 4)) >= 0


def test_memory_breakdown_adds_up_and_first_stage_holds_most_microbatches():
    c = load_cluster("h100-sxm-80gb:64")
    e = estimate(load_model("llama3-70b"), c, Training(64, 4096),
                 Parallel(dp=2, tp=8, pp=4, micro_batch=1, recompute="full", zero=1))
    stages = e.predicted["stages"]
    assert [s["memory"]["inflight_microbatches"] for s in stages] == [4, 3, 2, 1]
    for s in stages:
        m = s["memory"]
        parts = sum(v for k, v in m.items() if k.endswith("_bytes") and k != "total_bytes")
        assert parts == pytest.approx(m["total_bytes"])
    assert e.predicted["peak_memory_bytes"] == max(s["memory"]["total_bytes"] for s in stages)


@pytest.mark.parametrize("gpus,par", [
    (64, Parallel(dp=8, tp=8, pp=1, micro_batch=1, zero=1)),
    (64, Parallel(dp=2, tp=8, pp=4, micro_batch=1, zero=1, recompute="selective", sequence_parallel=True)),
    (64, Parallel(dp=1, tp=4, pp=16, micro_batch=2, schedule="gpipe")),
    (128, Parallel(dp=2, tp=8, pp=8, micro_batch=1, schedule="interleaved", vpp=3, recompute="full")),
    (128, Parallel(dp=16, tp=8, pp=1, micro_batch=4, zero=3, recompute="selective")),
    (256, Parallel(dp=8, tp=4, pp=8, micro_batch=1, zero=2, schedule="interleaved", vpp=2))])
def test_memory_check_without_timing_agrees_with_estimate(gpus, par):
    """The planner's heuristics skip timing plans that do not fit; that check must be estimate's."""
    spec, cluster, train = load_model("gpt3-175b"), load_cluster(f"a100-sxm-80gb:{gpus}"), Training(256, 2048)
    e = estimate(spec, cluster, train, par)
    assert fits_in_memory(spec, cluster, train, par) == e.fits


def test_pipeline_bubble_shrinks_with_more_microbatches_and_interleaving():
    c = load_cluster("h100-sxm-80gb:64")
    spec, train = load_model("llama3-70b"), Training(64, 4096)
    par = Parallel(dp=2, tp=8, pp=4, micro_batch=1, recompute="full")
    few = estimate(spec, c, Training(16, 4096), par).predicted
    many = estimate(spec, c, train, par).predicted
    inter = estimate(spec, c, train, par.with_(schedule="interleaved", vpp=2)).predicted
    assert few["pipeline_bubble_s"] / few["step_time_s"] > many["pipeline_bubble_s"] / many["step_time_s"]
    assert inter["pipeline_bubble_s"] < many["pipeline_bubble_s"]


def test_llama3_405b_on_16k_gpus_answers_fast():
    t0 = time.perf_counter()
    e = estimate(load_model("llama3-405b"), load_cluster("h100-sxm-80gb:16384"), Training(2048, 8192),
                 Parallel(dp=128, tp=8, pp=16, micro_batch=1, recompute="full", zero=1))
    assert time.perf_counter() - t0 < 1.0
    assert e.predicted["stages"][0]["chunks"][0]["layers"] == [0, 7]
