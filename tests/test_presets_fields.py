"""The spec fields the exports need (RoPE, norm epsilon, qk norm, window pattern, DeepSeek's
router): their defaults keep older specs as they were, presets carry their configs' values, and
their invariants fail with one line that shows the arithmetic."""

from __future__ import annotations

import pytest

from models.errors import SpecError
from models.load import load_model


def test_defaults_keep_older_specs_unchanged():
    m = load_model("debug")
    assert (m.rope_theta, m.rope_scaling, m.norm_eps, m.qk_norm, m.full_attention_every) == (
        None, None, None, False, None)
    mistral = load_model("mistral-7b")
    assert [mistral.attention_window(i) for i in range(3)] == [4096] * 3, "null = the window on every block"
    assert load_model("debug-moe").moe.router_score_function == "softmax"


def test_presets_carry_their_configs_values():
    assert (load_model("llama3-8b").rope_theta, load_model("llama3-8b").norm_eps) == (500000.0, 1e-5)
    r = load_model("llama3-405b").rope_scaling
    assert (r.type, r.factor, r.original_max_seq_len, r.low_freq_factor, r.high_freq_factor) == (
        "llama3", 8.0, 8192, 1.0, 4.0)
    assert load_model("qwen3-30b-a3b").qk_norm and load_model("bert-large").norm_eps == 1e-12
    ds = load_model("deepseek-v3")
    e = ds.moe
    assert (e.router_score_function, e.router_expert_bias, e.router_topk_scaling_factor) == ("sigmoid", True, 2.5)
    assert (e.router_num_groups, e.router_group_topk) == (8, 4)
    assert (ds.rope_scaling.type, ds.rope_scaling.factor, ds.rope_scaling.original_max_seq_len) == ("yarn", 40.0, 4096)


def test_full_attention_every():
    m = load_model("mistral-7b", {"full_attention_every": 3})
    assert [m.attention_window(i) for i in range(6)] == [4096, 4096, None, 4096, 4096, None]
    with pytest.raises(SpecError, match=r"full_attention_every \(2\) needs a sliding_window"):
        load_model("debug", {"full_attention_every": 2})


@pytest.mark.parametrize("overrides, needle", [
    ({"moe.router_num_groups": 2}, r"router_num_groups \(2\) and moe.router_group_topk \(None\) are set together"),
    ({"moe.router_num_groups": 3, "moe.router_group_topk": 1}, r"num_experts \(4\) must be divisible by "
                                                              r"moe.router_num_groups \(3\): 4 % 3 = 1"),
    ({"moe.router_num_groups": 2, "moe.router_group_topk": 3}, r"router_group_topk \(3\) exceeds"),
    ({"moe.router_num_groups": 4, "moe.router_group_topk": 1}, r"moe.top_k \(2\) exceeds the experts in "
                                                              r"router_group_topk groups: 1 \* 4 / 4 = 1"),
    ({"moe.router_score_function": "tanh"}, "router_score_function"),
    ({"rope_scaling": {"type": "ntk"}}, "rope_scaling.type"),
])
def test_invariants_are_one_line(overrides, needle):
    with pytest.raises(SpecError, match=needle) as e:
        load_model("debug-moe", overrides)
    assert "\n" not in str(e.value)
