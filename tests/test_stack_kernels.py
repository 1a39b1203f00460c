"""What a stack's kernels keep for backward: a fused SwiGLU keeps no activation output, and
Transformer Engine's FP8 linears keep their inputs in FP8 (torchao's keep them in 16 bits); and
the exports carry tp_overlap full (Megatron: --tp-comm-overlap; torchtitan: a note)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hardware.cluster import load_cluster
from models.graph import build_graph
from models.load import load_model
from planner.config import Parallel, Training
from planner.cost.layer import layer_cost, saved_tensor_bytes
from planner.export import export_plan
from planner.stacks import load_stack
from test_export import megatron_argv, write_plan

SPEC = load_model("llama3-8b")
CLUSTER = load_cluster("h100-sxm-80gb:8")
PAR = Parallel(dp=2, tp=4, micro_batch=1, sequence_parallel=True)
TOKENS = 4096


def _kept(stack: str, **train) -> dict[str, float]:
    t = Training(8, TOKENS, stack=load_stack(stack), **train)
    graph = build_graph(SPEC, TOKENS)
    return dict(saved_tensor_bytes(graph.blocks[0], graph, CLUSTER, t, PAR)["none"])


def test_a_fused_swiglu_keeps_no_activation_output():
    eager, fused = _kept("torchtitan", norm_impl="unfused"), _kept("torchtitan", norm_impl="fused")
    act = SPEC.ffn_hidden_size / PAR.tp * TOKENS * 2  # silu(gate), bf16, tp-split
    assert eager["ffn.act_out"] == pytest.approx(act)
    assert "ffn.act_out" not in fused
    assert sum(eager.values()) - sum(fused.values()) == pytest.approx(act)


@pytest.mark.parametrize("stack,inputs_bytes", [("megatron-core", 1), ("torchtitan-compile", 2)])
def test_fp8_linears_keep_their_inputs_in_fp8_only_under_transformer_engine(stack, inputs_bytes):
    bf16, fp8 = _kept(stack, dtype="bf16"), _kept(stack, dtype="fp8")
    for name in ("attn.qkv_in", "ffn.in", "ffn.down_in"):
        assert fp8[name] == pytest.approx(bf16[name] * inputs_bytes / 2), name
    for name in ("attn.q", "attn.context", "ffn.gate", "attn.norm_in"):  # not GEMM inputs only
        assert fp8[name] == pytest.approx(bf16[name]), name


def test_exports_carry_full_tp_overlap(tmp_path):
    train = replace(Training(64, 4096, stack=load_stack("megatron-core")), tp_overlap="full")
    path = write_plan(tmp_path / "full.json", SPEC, CLUSTER, train, PAR)
    assert "--tp-comm-overlap" in megatron_argv(export_plan(path, "megatron").text)
    tt = export_plan(path, "torchtitan")
    assert any("tp_overlap full" in n and "tp_overlap=none" in n for n in tt.notes)
    back = write_plan(tmp_path / "back.json", SPEC, CLUSTER, replace(train, tp_overlap="backward"), PAR)
    assert "--tp-comm-overlap" not in megatron_argv(export_plan(back, "megatron").text)


def test_a_vocab_parallel_loss_holds_one_more_fp32_copy_of_the_logits():
    """torchtitan with tp > 1 runs DTensor's loss_parallel: zeros_like(x), exp(x) and their sum
    beside the saved log-softmax output (4 fp32 copies) where the fused ATen loss holds 3;
    Megatron-Core's fused vocab-parallel loss is the same with and without tp."""
    from planner.cost.memory import loss_transient_bytes

    tokens, vocab = 8192.0, 128256
    tt = Training(8, 8192, stack=load_stack("torchtitan-compile"))
    assert loss_transient_bytes(tokens, vocab, 1, tt) == pytest.approx(2 * tokens * vocab * 4)
    assert loss_transient_bytes(tokens, vocab, 8, tt) == pytest.approx(3 * tokens * vocab / 8 * 4)
    mc = Training(8, 8192, stack=load_stack("megatron-core"))
    assert loss_transient_bytes(tokens, vocab, 8, mc) == loss_transient_bytes(tokens, vocab, 1, mc) == 0.0


def test_k_v_gradients_cross_the_cp_group_in_fp32_where_torch_context_parallel_runs():
    """torch's context_parallel (torchtitan, NeMo Automodel) and autopar's runtime accumulate the
    K/V gradients in fp32; Transformer Engine's ring sends them in bf16. Over 16 cp ranks on two
    nodes the backward exchange is exposed, so it costs more with fp32; forward is unchanged."""
    graph, par = build_graph(SPEC, 65536), Parallel(tp=2, cp=16, micro_batch=1, sequence_parallel=True)
    cluster = load_cluster("h100-sxm-80gb:32")
    assert load_stack("torchtitan").cp_grad_fp32 and load_stack("autopar").cp_grad_fp32
    assert not load_stack("megatron-core").cp_grad_fp32
    costs = []
    for fp32 in (False, True):
        stack = load_stack("torchtitan").model_copy(update={"cp_grad_fp32": fp32})
        costs.append(layer_cost(graph.blocks[0], graph, cluster, Training(8, 65536, stack=stack), par))
    assert costs[1].comm_fwd_s == costs[0].comm_fwd_s
    assert costs[1].comm_s > costs[0].comm_s
