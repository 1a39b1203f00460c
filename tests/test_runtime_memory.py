"""measure_saved_bytes_per_layer against the saved-tensor table of docs/runtime.md, row by row,
and the SavedTensorMeter's bookkeeping."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from runtime.measure import measure_saved_bytes_per_layer  # noqa: E402
from runtime.memory import SavedTensorMeter, state_tensors  # noqa: E402

LLAMA = load_model("debug")
GPT = load_model("debug-gpt", {"dropout": 0.0})
MOE = load_model("debug-moe")
B, S = 2, 16
FP32 = 4


def documented_rows(spec, mode: str, b: int, s: int, t: int = 1, sp: bool = False, e: int = FP32):
    """docs/runtime.md's table as (name, shape, bytes per element) rows."""
    h, d = spec.hidden_size, spec.dim_per_head
    a, g, f = spec.num_heads // t, spec.kv_heads // t, spec.ffn_hidden_size // t
    sn = s // t if sp else s  # the norm region's sequence length (S in the docs)
    if mode == "full":
        return [("x", (b, sn, h), e)]
    if mode == "selective":
        rows = [("x", (b, sn, h), e), ("wq out", (b, s, a * d), e), ("wk out", (b, s, g * d), e),
                ("wv out", (b, s, g * d), e), ("o", (b, s, a, d), e), ("lse", (b, a, s), FP32),
                ("wo out", (b, s, h), e), ("w1 out", (b, s, f), e)]
        if spec.gated:
            rows.append(("w3 out", (b, s, f), e))
        return rows + [("w2 out", (b, s, h), e)]
    rows = []
    for inp, normed in (("x", "n1"), ("h", "n2")):
        if spec.norm == "rmsnorm":
            rows += [(inp, (b, sn, h), FP32), ("rstd", (b, sn, 1), FP32), ("x_hat", (b, sn, h), FP32)]
        else:
            rows += [(inp, (b, sn, h), e), ("mean", (b, sn, 1), e), ("rstd", (b, sn, 1), e)]
        rows.append((normed, (b, s, h), e))
        if inp == "x":
            rows += [("q", (b, s, a, d), e), ("k", (b, s, g, d), e), ("v", (b, s, g, d), e),
                     ("o", (b, s, a, d), e), ("lse", (b, a, s), FP32)]
    ffn = ["w1 out", "silu", "w3 out", "product"] if spec.gated else ["w1 out", "gelu"]
    return rows + [(name, (b, s, f), e) for name in ffn]


def documented_bytes(*args, **kwargs) -> int:
    return sum(math.prod(shape) * size for _, shape, size in documented_rows(*args, **kwargs))


@pytest.mark.parametrize("spec", [LLAMA, GPT], ids=["llama", "gpt"])
@pytest.mark.parametrize("mode", ["none", "selective", "full"])
@pytest.mark.parametrize("tp,sp", [(1, False), (2, False), (2, True)], ids=["tp1", "tp2", "tp2-sp"])
def test_measured_bytes_match_the_documented_table(spec, mode, tp, sp) -> None:
    measured = measure_saved_bytes_per_layer(spec, mode, B, S, tp=tp, sp=sp)
    assert measured == documented_bytes(spec, mode, B, S, tp, sp)


@pytest.mark.parametrize("spec", [LLAMA, GPT], ids=["llama", "gpt"])
@pytest.mark.parametrize("mode", ["none", "selective", "full"])
def test_bf16_rows(spec, mode) -> None:
    """RMSNorm rows stay fp32 on CPU (it upcasts); everything else, LayerNorm stats included,
    takes the training dtype; logsumexp stays fp32."""
    measured = measure_saved_bytes_per_layer(spec, mode, B, S, dtype=torch.bfloat16)
    assert measured == documented_bytes(spec, mode, B, S, e=2)


def test_documented_examples() -> None:
    """The worked figures quoted in docs/runtime.md."""
    assert documented_bytes(LLAMA, "none", B, S) == 140_032
    assert documented_bytes(LLAMA, "none", B, S, e=2) == 86_784
    assert documented_bytes(GPT, "none", B, S) == 132_096
    assert documented_bytes(GPT, "none", B, S, e=2) == 66_304
    assert documented_bytes(LLAMA, "selective", B, S) == 82_432
    assert documented_bytes(GPT, "selective", B, S) == 90_624


@pytest.mark.parametrize("spec,layer", [(LLAMA, 0), (GPT, 0), (MOE, 1)], ids=["llama", "gpt", "moe-layer"])
def test_full_keeps_less_than_selective_less_than_none(spec, layer) -> None:
    full, selective, none = (
        measure_saved_bytes_per_layer(spec, mode, B, S, layer_index=layer) for mode in ("full", "selective", "none")
    )
    assert full < selective < none


def test_meter_counts_a_storage_once_and_forgets_it_after_backward() -> None:
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True) * 1.0  # an activation, not a leaf
    with SavedTensorMeter(state_tensors(torch.nn.ParameterList([w]))) as meter:
        y = (x @ w).sum() + (x.view(8, 4) ** 2).sum()  # x saved by matmul and, as a view, by pow
    x_bytes = 4 * 8 * 4
    assert meter.live_bytes() == x_bytes  # w excluded, the view of x counted once
    y.backward()
    assert meter.live_bytes() == 0
    assert meter.peak_bytes == x_bytes
