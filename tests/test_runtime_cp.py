"""Context parallelism (runtime.context) reproduces the single-process reference on gloo: every
step's loss and every final parameter within 1e-5, alone and with dp, ZeRO, HSDP, tp+sp and pp."""

from __future__ import annotations

import pytest
from conftest import run_python

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from runtime.context import attention_mask, chunk_positions, shard_sequence  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import PlanError, make_plan  # noqa: E402

LLAMA = load_model("debug")  # rope, GQA, causal
GPT = load_model("debug-gpt", {"dropout": 0.0})  # learned positions, tied embeddings, bias
WINDOW = LLAMA.model_copy(update=dict(sliding_window=5, name="debug-window"))
BIDIRECTIONAL = LLAMA.model_copy(update=dict(attention_mask="bidirectional", sliding_window=5, name="debug-bidir"))
SEQ = 16

CONFIGS = {
    "cp2": (LLAMA, dict(cp=2)),
    "cp4": (LLAMA, dict(cp=4)),
    "cp2-sliding-window": (WINDOW, dict(cp=2, num_micro_batches=2)),
    "cp2-bidirectional-window": (BIDIRECTIONAL, dict(cp=2)),
    "dp2xcp2-zero1": (LLAMA, dict(dp=2, cp=2, zero_stage=1)),
    "dp2xcp2-hsdp-zero3": (LLAMA, dict(dp=2, cp=2, zero_stage=3, dp_replicate=2)),
    "cp2xtp2-sp-gpt": (GPT, dict(cp=2, tp=2, sequence_parallel=True)),
    "pp2xcp2-1f1b-gpt": (GPT, dict(pp=2, cp=2, num_micro_batches=2, schedule="1f1b")),
    "pp2xcp2xtp2-sp-zero1": (
        LLAMA, dict(pp=2, cp=2, tp=2, num_micro_batches=2, sequence_parallel=True, zero_stage=1)
    ),
}


def test_each_rank_holds_chunk_i_and_its_mirror() -> None:
    """S = 16, cp = 2: four chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2."""
    assert chunk_positions(8, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert chunk_positions(8, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    x = torch.arange(16)[None, :] * 10
    assert shard_sequence(x, 4, 3).tolist() == [[60, 70, 80, 90]]  # chunks 3 and 4 of 8
    covered = torch.cat([chunk_positions(4, 4, r) for r in range(4)]).sort().values
    assert covered.tolist() == list(range(16))
    with pytest.raises(ValueError, match=r"seq_len \(12\) % 2\*cp \(8\) = 4"):
        shard_sequence(torch.zeros(1, 12), 4, 0)


def test_mask_from_positions_is_the_causal_band() -> None:
    pos = torch.arange(6)
    assert torch.equal(attention_mask(pos, pos, True, None), torch.ones(6, 6, dtype=torch.bool).tril())
    band = attention_mask(pos, pos, True, 2)
    assert band[5].tolist() == [False, False, False, False, True, True]
    assert attention_mask(pos, pos, False, None) is None
    assert attention_mask(pos, pos, False, 2)[2].tolist() == [False, True, True, True, False, False]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_context_parallel_parity(name: str) -> None:
    spec, kwargs = CONFIGS[name]
    result = check_parity(make_plan(spec, seq_len=SEQ, **kwargs), steps=3)
    assert not result.missing_params
    assert result.max_loss_rel_err <= 1e-5, (result.losses, result.reference_losses)
    assert result.max_param_err <= 1e-5, result.worst_param


def test_sequence_parallel_needs_the_local_sequence_to_split_over_tp() -> None:
    with pytest.raises(PlanError, match=r"seq_len/cp \(12/2 = 6\) % tp \(4\) = 2"):
        make_plan(LLAMA, cp=2, tp=4, sequence_parallel=True, seq_len=12)


def test_parity_check_catches_a_mask_that_ignores_the_chunk_order() -> None:
    """The oracle is sharp for cp: attending to every gathered key (the mask of the reordered
    chunks dropped) changes the losses. In a fresh interpreter, so the patch reaches forked ranks."""
    code = (
        "import runtime.context as c\n"
        "from models.load import load_model\n"
        "from runtime.parity import check_parity\n"
        "from runtime.plan_io import make_plan\n"
        "c.attention_mask = lambda q, k, causal, window: None\n"
        f"r = check_parity(make_plan(load_model('debug'), cp=2, seq_len={SEQ}), steps=2, start_method='fork')\n"
        "print(r.max_loss_rel_err)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) > 1e-4
