"""2-D (4 processes) and 3-D (8 processes) plans reproduce the single-process reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import make_plan  # noqa: E402

LLAMA = load_model("debug")
GPT = load_model("debug-gpt", {"dropout": 0.0})
MOE = load_model("debug-moe")  # layer 0 dense, layers 1-3: 4 experts, top-2
SEQ = 16

CONFIGS = {
    "dp2xtp2": (LLAMA, dict(dp=2, tp=2, num_micro_batches=2)),
    "dp2xtp2-zero1-moe": (MOE, dict(dp=2, tp=2, zero_stage=1, sequence_parallel=True)),
    "pp2xtp2-sp-selective-gpt": (
        GPT, dict(pp=2, tp=2, num_micro_batches=2, schedule="1f1b", sequence_parallel=True, recompute="selective")
    ),
    "pp2xdp2": (LLAMA, dict(pp=2, dp=2, num_micro_batches=2)),
    "pp2xdp2xtp2-fsdp-sp-full": (
        LLAMA, dict(pp=2, dp=2, tp=2, num_micro_batches=2, zero_stage=3, sequence_parallel=True, recompute="full")
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_multi_dim_parity(name: str) -> None:
    spec, kwargs = CONFIGS[name]
    result = check_parity(make_plan(spec, seq_len=SEQ, **kwargs), steps=3)
    assert not result.missing_params
    assert result.max_loss_rel_err <= 1e-5, (result.losses, result.reference_losses)
    assert result.max_param_err <= 1e-5, result.worst_param
