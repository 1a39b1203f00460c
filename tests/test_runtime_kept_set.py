"""A kept-set recompute value in the runtime (runtime/recompute.py): selective activation
checkpointing keeps exactly the listed tensors, gradients equal the run without recompute, and
2 gloo processes keep loss and parameter parity (1e-5) with one process."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from runtime.measure import measure_saved_bytes_per_layer  # noqa: E402
from runtime.memory import SavedTensorMeter  # noqa: E402
from runtime.model import Block, rope_table  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import make_plan  # noqa: E402
from runtime.recompute import checkpoint_block, kept_set_policy  # noqa: E402

LLAMA = load_model("debug")  # gated FFN: wq wk wv wo w1 w3 w2
GPT = load_model("debug-gpt", {"dropout": 0.0})  # fc1 / fc2, biases (addmm)


def _grads(block, spec, x):
    rope = rope_table(spec, torch.float32) if spec.position == "rope" else None
    xi = x.clone().requires_grad_(True)
    block(xi, rope).square().sum().backward()
    return [xi.grad] + [p.grad for p in block.parameters()]


def _held_after_forward(block, spec, x) -> int:
    """Bytes held for backward once the forward has run (saved tensors and SAC's cache)."""
    rope = rope_table(spec, torch.float32) if spec.position == "rope" else None
    with SavedTensorMeter() as meter:
        out = block(x.clone().requires_grad_(True), rope)
        held = meter.live_bytes()
    del out
    return held


def _output_bytes(spec, name: str, b: int = 2, s: int = 16) -> int:
    """fp32 bytes of one block output the policy keeps (attention: its output and log-sum-exp)."""
    d, heads, kv = spec.dim_per_head, spec.num_heads, spec.kv_heads
    width = {"attn.q": heads * d, "attn.k": kv * d, "attn.v": kv * d, "attn.out_proj_out": spec.hidden_size}
    width |= {"ffn.down_out": spec.hidden_size, "attn.context+attn.lse": heads * d + heads}
    width |= {n: spec.ffn_hidden_size for n in ("ffn.gate", "ffn.up", "ffn.fc1_out")}
    return b * s * width[name] * 4


@pytest.mark.parametrize(
    "spec, value, expected",
    [
        (LLAMA, "keep:attn.q+attn.v+ffn.down_out", ["attn.q", "attn.v", "ffn.down_out"]),
        (LLAMA, "keep:attn.context+attn.lse+ffn.gate+ffn.up", ["attn.context+attn.lse", "ffn.gate", "ffn.up"]),
        (GPT, "keep:attn.k+attn.out_proj_out+ffn.fc1_out", ["attn.k", "attn.out_proj_out", "ffn.fc1_out"]),
        (LLAMA, "keep:", []),
    ],
)
def test_the_saved_set_is_the_listed_one(spec, value, expected) -> None:
    """The policy keeps the listed ops' outputs and nothing else: their bytes are what the block
    holds beyond ``keep:`` (its input only), and the gradients equal those without recompute."""
    torch.manual_seed(0)
    block = Block(spec, 0)
    x = torch.randn(2, 16, spec.hidden_size)
    wrapped = checkpoint_block(copy.deepcopy(block), value)
    held = _held_after_forward(wrapped, spec, x)
    assert kept_set_policy(wrapped).saved == expected
    assert held - _held_after_forward(checkpoint_block(copy.deepcopy(block), "keep:"), spec, x) == sum(
        _output_bytes(spec, n) for n in expected
    )
    for a, b in zip(_grads(wrapped, spec, x), _grads(copy.deepcopy(block), spec, x)):
        assert torch.equal(a, b)


def test_under_tensor_parallel_the_saved_set_is_still_the_listed_one() -> None:
    """tp 2 on a fake process group (runtime.measure): beyond ``keep:``, each kept set holds its
    listed outputs' per-rank bytes — q and up split by heads / columns, the out-projection's
    partial sum whole (the output before the all-reduce)."""
    b, s = 2, 16
    base = measure_saved_bytes_per_layer(LLAMA, "keep:", b, s, tp=2)
    heads, d = LLAMA.num_heads // 2, LLAMA.dim_per_head
    expected = {
        "keep:attn.q": b * s * heads * d * 4,
        "keep:attn.context+attn.lse": b * s * heads * d * 4 + b * heads * s * 4,
        "keep:ffn.up": b * s * LLAMA.ffn_hidden_size // 2 * 4,
        "keep:attn.out_proj_out": b * s * LLAMA.hidden_size * 4,
    }
    for value, nbytes in expected.items():
        assert measure_saved_bytes_per_layer(LLAMA, value, b, s, tp=2) - base == nbytes, value


@pytest.mark.parametrize(
    "value, message",
    [
        ("keep:attn.qkv_in", "keeps matmul and attention outputs"),
        ("keep:attn.context", "keep both or neither"),
        ("keep:ffn.fc1_out", "not ffn.fc1_out"),
    ],
)
def test_a_kept_set_the_runtime_cannot_keep_is_refused(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        checkpoint_block(Block(LLAMA, 0), value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dp=2, recompute="keep:attn.k+attn.out_proj_out+ffn.up"),
        # Under TP + SP the policy sees DTensor ops: each linear is still one mm, in the same order.
        dict(tp=2, sequence_parallel=True, recompute="keep:attn.context+attn.lse+attn.q+ffn.down_out"),
    ],
    ids=["dp", "tp-sp"],
)
def test_two_rank_parity_with_a_kept_set(kwargs) -> None:
    """2 ranks, 3 steps, one kept set on every block, against one process."""
    plan = make_plan(LLAMA, num_micro_batches=2, seq_len=16, **kwargs)
    result = check_parity(plan, steps=3)
    assert not result.missing_params
    assert result.max_loss_rel_err <= 1e-5, (result.losses, result.reference_losses)
    assert result.max_param_err <= 1e-5, result.worst_param
