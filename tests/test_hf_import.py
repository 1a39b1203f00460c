"""Hugging Face config.json import: each family's alias table maps official configs correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.errors import SpecError
from models.hf_import import FAMILIES, from_hf_config
from models.load import load_model

HF = Path(__file__).parent / "data" / "hf"


def _cfg(name: str) -> dict:
    return json.loads((HF / name / "config.json").read_text())


def _dims(m) -> tuple:
    return (m.num_layers, m.hidden_size, m.num_heads, m.kv_heads, m.ffn_hidden_size, m.vocab_size, m.max_seq_len)


@pytest.mark.parametrize(
    "sample, preset",
    [("meta-llama-3-8b", "llama3-8b"), ("mixtral-8x7b-v0.1", "mixtral-8x7b"),
     ("qwen3-30b-a3b", "qwen3-30b-a3b"), ("deepseek-v3", "deepseek-v3")],
)
def test_official_configs_match_presets(sample, preset):
    """The presets and the official config.json files describe the same model."""
    imported = from_hf_config(_cfg(sample)).model_dump(exclude={"name", "source"})
    assert imported == load_model(preset).model_dump(exclude={"name", "source"})


def test_llama3_8b():
    m = from_hf_config(_cfg("meta-llama-3-8b"))
    assert m.name == "meta-llama-3-8b", "named after _name_or_path's basename, lowercased"
    assert _dims(m) == (32, 4096, 32, 8, 14336, 128256, 8192)
    assert (m.norm, m.activation, m.position, m.bias, m.tie_embeddings) == ("rmsnorm", "swiglu", "rope", False, False)
    assert "meta-llama/Meta-Llama-3-8B" in m.source


def test_mixtral():
    m = from_hf_config(_cfg("mixtral-8x7b-v0.1"))
    assert (m.moe.num_experts, m.moe.top_k, m.moe.expert_ffn_hidden_size) == (8, 2, 14336)
    assert m.sliding_window is None and m.num_moe_layers == 32


def test_qwen3_moe():
    m = from_hf_config(_cfg("qwen3-30b-a3b"), name="q")
    assert m.name == "q"
    assert (m.head_dim, m.num_kv_heads, m.moe.num_experts, m.moe.top_k, m.moe.expert_ffn_hidden_size) == (
        128, 4, 128, 8, 768)
    assert m.sliding_window is None, "use_sliding_window false"


def test_qwen_sparse_step_and_mlp_only_layers():
    cfg = {**_cfg("qwen3-30b-a3b"), "num_hidden_layers": 8, "decoder_sparse_step": 2}
    m = from_hf_config(cfg)  # MoE at (i + 1) % 2 == 0: 1, 3, 5, 7
    assert (m.moe.first_k_dense, m.moe.layer_freq) == (1, 2)
    assert [i for i in range(8) if m.is_moe_layer(i)] == [1, 3, 5, 7]
    m = from_hf_config({**cfg, "decoder_sparse_step": 1, "mlp_only_layers": [0, 1]})
    assert [i for i in range(8) if m.is_moe_layer(i)] == list(range(2, 8))
    with pytest.raises(SpecError, match=r"MoE layers \[0, 1, 2, 4, 5, 6, 7\] are not representable"):
        from_hf_config({**cfg, "decoder_sparse_step": 1, "mlp_only_layers": [3]})


def test_qwen2_moe_shared_expert():
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
           "num_key_value_heads": 16, "intermediate_size": 5632, "vocab_size": 151936,
           "max_position_embeddings": 8192, "num_experts": 60, "num_experts_per_tok": 4,
           "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "hidden_act": "silu"}
    m = from_hf_config(cfg)
    assert (m.moe.num_experts, m.moe.top_k, m.moe.num_shared_experts, m.moe.shared_expert_ffn_hidden_size) == (
        60, 4, 1, 5632)


def test_deepseek_v3():
    m = from_hf_config(_cfg("deepseek-v3"))
    assert m.name == "deepseek_v3", "no _name_or_path: named after model_type"
    assert (m.moe.num_experts, m.moe.top_k, m.moe.num_shared_experts, m.moe.first_k_dense) == (256, 8, 1, 3)
    assert (m.mla.q_lora_rank, m.mla.kv_lora_rank, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim,
            m.mla.v_head_dim) == (1536, 512, 128, 64, 128)
    assert m.head_dim is None and m.num_moe_layers == 58


def test_deepseek_v2_lite_full_rank_q_and_layer_freq():
    cfg = {**_cfg("deepseek-v3"), "model_type": "deepseek_v2", "q_lora_rank": None, "num_hidden_layers": 27,
           "first_k_dense_replace": 1, "moe_layer_freq": 2, "n_shared_experts": 2}
    m = from_hf_config(cfg)  # idx >= 1 and idx % 2 == 0: 2, 4, ..., 26
    assert m.mla.q_lora_rank is None and m.moe.num_shared_experts == 2
    assert [i for i in range(27) if m.is_moe_layer(i)] == list(range(2, 27, 2))


def test_gpt2_n_inner_default():
    m = from_hf_config(_cfg("gpt2"))
    assert _dims(m) == (12, 768, 12, 12, 3072, 50257, 1024), "n_inner null -> 4 * n_embd (GPT2Config docs)"
    assert (m.norm, m.activation, m.position, m.bias, m.tie_embeddings, m.dropout) == (
        "layernorm", "gelu", "learned", True, True, 0.1)


def test_bert():
    m = from_hf_config(_cfg("bert-base-uncased"))
    assert _dims(m) == (12, 768, 12, 12, 3072, 30522, 512)
    assert (m.attention_mask, m.position, m.activation, m.tie_embeddings, m.dropout) == (
        "bidirectional", "learned", "gelu", True, 0.1)
    with pytest.raises(SpecError, match="position_embedding_type 'relative_key'"):
        from_hf_config({**_cfg("bert-base-uncased"), "position_embedding_type": "relative_key"})


def test_gpt_oss():
    m = from_hf_config(_cfg("gpt-oss-20b"))
    assert _dims(m) == (24, 2880, 64, 8, 2880, 201088, 131072)
    assert (m.head_dim, m.moe.num_experts, m.moe.top_k, m.moe.expert_ffn_hidden_size) == (64, 32, 4, 2880)
    assert (m.sliding_window, m.bias, m.activation) == (128, True, "swiglu")


def test_nemotron():
    m = from_hf_config(_cfg("nemotron-mini-4b-instruct"))
    assert _dims(m) == (32, 3072, 24, 8, 9216, 256000, 4096)
    assert (m.activation, m.norm, m.position, m.head_dim, m.bias) == ("relu2", "layernorm", "rope", 128, False)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({"model_type": "gpt_neox", "num_hidden_layers": 44, "hidden_size": 6144, "num_attention_heads": 64,
          "intermediate_size": 24576, "vocab_size": 50432, "max_position_embeddings": 2048, "hidden_act": "gelu"},
         {"parallel_residual": True, "position": "rope", "norm": "layernorm", "ffn_hidden_size": 24576,
          "tie_embeddings": False}),
        ({"model_type": "gptj", "n_layer": 28, "n_embd": 4096, "n_head": 16, "n_inner": None, "vocab_size": 50400,
          "n_positions": 2048, "activation_function": "gelu_new", "rotary_dim": 64},
         {"parallel_residual": True, "position": "rope", "ffn_hidden_size": 16384, "tie_embeddings": False}),
        ({"model_type": "opt", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
          "ffn_dim": 16384, "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 4096,
          "activation_function": "relu", "dropout": 0.1, "enable_bias": True},
         {"activation": "relu", "position": "learned", "ffn_hidden_size": 16384, "tie_embeddings": True, "bias": True}),
        ({"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
          "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
          "max_position_embeddings": 32768, "sliding_window": 4096, "hidden_act": "silu"},
         {"sliding_window": 4096, "activation": "swiglu", "num_kv_heads": 8}),
        ({"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
          "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
          "max_position_embeddings": 131072, "sliding_window": 131072, "use_sliding_window": False},
         {"sliding_window": None, "num_kv_heads": 4, "tie_embeddings": False}),
        ({"model_type": "qwen3", "num_hidden_layers": 36, "hidden_size": 4096, "num_attention_heads": 32,
          "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
          "max_position_embeddings": 40960},
         {"head_dim": 128, "activation": "swiglu", "moe": None}),
    ],
    ids=["gpt_neox", "gptj", "opt", "mistral", "qwen2", "qwen3"],
)
def test_other_families(cfg, expected):
    m = from_hf_config(cfg)
    assert {k: getattr(m, k) for k in expected} == expected


def test_every_family_has_a_test():
    tested = {"llama", "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3", "deepseek_v2", "gpt2", "bert",
              "gpt_oss", "nemotron", "gpt_neox", "gptj", "opt", "mistral", "qwen2", "qwen3",
              # compared with transformers in tests/test_hf_families.py
              "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo2", "starcoder2", "falcon", "bloom", "mpt",
              "granitemoe", "granitemoeshared"}
    assert set(FAMILIES) == tested


# --- errors ------------------------------------------------------------------------------------
def test_missing_keys_are_listed():
    cfg = {k: v for k, v in _cfg("meta-llama-3-8b").items() if k not in ("num_hidden_layers", "hidden_size")}
    with pytest.raises(SpecError) as e:
        from_hf_config(cfg)
    assert str(e.value) == "config.json (model_type 'llama'): missing keys: num_hidden_layers, hidden_size"


def test_missing_alias_keys_name_every_spelling():
    cfg = {k: v for k, v in _cfg("gpt-oss-20b").items() if k not in ("experts_per_token", "num_experts_per_tok")}
    with pytest.raises(SpecError, match="missing keys: experts_per_token or num_experts_per_tok"):
        from_hf_config(cfg)


def test_unknown_family():
    with pytest.raises(SpecError) as e:
        from_hf_config({"model_type": "foo"})
    assert str(e.value).startswith("unknown config.json family 'foo'; supported: bert, bloom, deepseek_v2,")


def test_unknown_activation_and_opt_projection():
    with pytest.raises(SpecError, match="activation 'tanh'"):
        from_hf_config({**_cfg("meta-llama-3-8b"), "hidden_act": "tanh"})
    opt350m = {"model_type": "opt", "num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16,
               "ffn_dim": 4096, "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 512}
    with pytest.raises(SpecError, match=r"word_embed_proj_dim \(512\) != hidden_size \(1024\)"):
        from_hf_config(opt350m)


def test_invalid_values_go_through_spec_validation():
    with pytest.raises(SpecError, match="num_heads.*divisible"):
        from_hf_config({**_cfg("meta-llama-3-8b"), "num_key_value_heads": 5})


# --- through load_model ------------------------------------------------------------------------
def test_load_model_detects_config_file_and_directory():
    by_file = load_model(str(HF / "gpt2" / "config.json"))
    by_dir = load_model(str(HF / "gpt2"))
    assert by_file.name == "gpt2" and by_dir == by_file.model_copy(update={"source": by_dir.source})
    assert load_model(str(HF / "deepseek-v3")).name == "deepseek-v3", "directory name when no _name_or_path"


def test_load_model_hf_with_overrides():
    m = load_model(str(HF / "meta-llama-3-8b"), {"num_layers": 2, "max_seq_len": 1024})
    assert (m.num_layers, m.max_seq_len, m.hidden_size) == (2, 1024, 4096)


def test_load_model_hf_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(SpecError, match=r"config\.json \(model_type 'llama'\): missing keys: num_hidden_layers"):
        load_model(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="has no config.json"):
        load_model(str(empty))
