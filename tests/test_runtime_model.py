"""The runtime's model (single process) and the plan reader."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from models.spec import MLASpec  # noqa: E402
from runtime.model import Transformer, build_model, next_token_loss  # noqa: E402
from runtime.pipeline import split_model  # noqa: E402
from runtime.plan_io import PlanError, make_plan, validate_plan  # noqa: E402

LLAMA = load_model("debug")
GPT = load_model("debug-gpt", {"dropout": 0.0})
MOE = load_model("debug-moe")


def closed_form_params(spec) -> int:
    """Dense, no bias: V*h embedding + per block (2 norms, q/o: h*a*d, k/v: h*g*d, FFN) + norm + head."""
    h, ad, gd = spec.hidden_size, spec.num_heads * spec.dim_per_head, spec.kv_heads * spec.dim_per_head
    ffn = (3 if spec.gated else 2) * h * spec.ffn_hidden_size
    block = 2 * h + 2 * h * ad + 2 * h * gd + ffn
    head = 0 if spec.tie_embeddings else spec.vocab_size * h
    return spec.vocab_size * h + spec.num_layers * block + h + head


def test_parameter_count_matches_the_closed_form() -> None:
    model = build_model(LLAMA)
    assert sum(p.numel() for p in model.parameters()) == closed_form_params(LLAMA) == 180_800


def test_names_follow_torchtitan() -> None:
    names = {n for n, _ in build_model(LLAMA).named_parameters()}
    for expected in ("tok_embeddings.weight", "layers.3.attention.wq.weight", "layers.0.attention.wk.weight",
                     "layers.0.feed_forward.w3.weight", "norm.weight", "output.weight"):
        assert expected in names


def test_tied_head_shares_the_embedding_and_init_loss_is_near_log_vocab() -> None:
    model = build_model(GPT)
    assert model.output.weight is model.tok_embeddings.weight
    tokens = torch.randint(0, GPT.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    loss = next_token_loss(model(tokens[:, :-1]), tokens[:, 1:])
    assert abs(loss.item() - math.log(GPT.vocab_size)) < 0.1  # std-0.02 init: near-uniform logits


def test_a_stage_gets_the_full_models_weights_whatever_the_split() -> None:
    """Per-component seeding: a pipeline chunk materialised alone equals the full model there,
    and a tied head's copy equals the embedding."""
    full = dict(build_model(GPT, seed=3).named_parameters())
    plan = make_plan(GPT, pp=2, num_micro_batches=2, schedule="1f1b")
    (last,), _ = split_model(build_model(GPT, device="meta"), plan, pp_rank=1)
    last = last.to_empty(device="cpu")
    last.init_weights(3)
    for name, p in last.named_parameters():
        expected = full["tok_embeddings.weight"] if name == "output.weight" else full[name]
        assert torch.equal(p, expected), name
    assert last.tok_embeddings is None and "0" not in last.layers and "3" in last.layers


def test_moe_layers_route_and_every_expert_gets_a_gradient() -> None:
    model = build_model(MOE)
    tokens = torch.randint(0, MOE.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).backward()
    moe = model.layers["1"].feed_forward
    assert len(moe.experts) == MOE.moe.num_experts and not hasattr(model.layers["0"].feed_forward, "experts")
    assert all(p.grad is not None for e in moe.experts.values() for p in e.parameters())


def test_unimplemented_architectures_are_refused_by_name() -> None:
    mla = LLAMA.model_copy(update={"mla": MLASpec(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16)})
    with pytest.raises(ValueError, match="MLA"):
        Transformer(mla)
    with pytest.raises(ValueError, match="ALiBi"):
        Transformer(LLAMA.model_copy(update={"position": "alibi"}))


def test_make_plan_splits_layers_evenly_earlier_chunks_first() -> None:
    five = LLAMA.model_copy(update={"num_layers": 5})
    plan = make_plan(five, pp=2, num_micro_batches=2)
    assert [st["layers"] for st in plan["stages"]] == [[0, 3], [3, 5]]
    inter = make_plan(LLAMA, pp=2, virtual_stages=2, schedule="interleaved", num_micro_batches=4)
    assert [(st["pp_rank"], st["virtual_index"]) for st in inter["stages"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert plan["inputs"]["training"]["global_batch_size"] == 2


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda p: p["parallelism"].pop("zero_stage"), "parallelism.zero_stage"),
        (lambda p: p["parallelism"].update(tp="2"), "parallelism.tp"),
        (lambda p: p["parallelism"].update(dp=2), "inputs.training.global_batch_size"),
        (lambda p: p["stages"][1].update(pp_rank=0), "stages[1].pp_rank"),
        (lambda p: p["stages"][0].update(layers=[0, 1], recompute=["none"]), "stages[1].layers"),
        (lambda p: p["stages"][0]["recompute"].append("none"), "stages[0].recompute"),
        (lambda p: (p["parallelism"].update(schedule="1f1b", num_micro_batches=1),
                    p["inputs"]["training"].update(global_batch_size=1)), "parallelism.num_micro_batches"),
        (lambda p: p["inputs"]["training"].update(seq_len=4096), "inputs.training.seq_len"),
        (lambda p: p.update(schema_version="2.0"), "schema_version"),
        (lambda p: p["inputs"]["model"].update(num_heads=3), "inputs.model"),
    ],
)
def test_invalid_plans_name_the_field(edit, field) -> None:
    plan = copy.deepcopy(make_plan(LLAMA, pp=2, num_micro_batches=2))
    edit(plan)
    with pytest.raises(PlanError) as err:
        validate_plan(plan)
    assert field in str(err.value)


def test_batch_arithmetic_is_shown() -> None:
    plan = make_plan(LLAMA, dp=2, num_micro_batches=2)
    plan["inputs"]["training"]["global_batch_size"] = 6
    with pytest.raises(PlanError, match=r"\(6\) != dp\(2\) \* micro_batch_size\(1\) \* num_micro_batches\(2\) = 4"):
        validate_plan(plan)
