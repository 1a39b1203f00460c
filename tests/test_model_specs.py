"""Model presets and spec loading: presets validate, files extend presets, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.errors import SpecError
from models.load import list_presets, load_model, preset_path
from models.spec import MLASpec, ModelSpec, MoESpec

# (num_layers, hidden_size, num_heads, kv_heads, ffn_hidden_size, vocab_size) from the sources
# each preset cites (papers / official config.json files).
KEY_DIMS = {
    "gpt3-175b": (96, 12288, 96, 96, 49152, 51200),
    "gpt3-13b": (40, 5120, 40, 40, 20480, 51200),
    "gpt3-6.7b": (32, 4096, 32, 32, 16384, 51200),
    "gpt3-2.7b": (32, 2560, 32, 32, 10240, 51200),
    "gpt3-1.3b": (24, 2048, 16, 16, 8192, 51200),
    "llama2-7b": (32, 4096, 32, 32, 11008, 32000),
    "llama2-70b": (80, 8192, 64, 8, 28672, 32000),
    "llama3-8b": (32, 4096, 32, 8, 14336, 128256),
    "llama3.2-1b": (16, 2048, 32, 8, 8192, 128256),
    "llama3-70b": (80, 8192, 64, 8, 28672, 128256),
    "llama3-405b": (126, 16384, 128, 8, 53248, 128256),
    "mixtral-8x7b": (32, 4096, 32, 8, 14336, 32000),
    "deepseek-v3": (61, 7168, 128, 128, 18432, 129280),
    "qwen3-30b-a3b": (48, 2048, 32, 4, 6144, 151936),
    "qwen2-7b": (28, 3584, 28, 4, 18944, 152064),
    "mistral-7b": (32, 4096, 32, 8, 14336, 32000),
    "mpt-7b": (32, 4096, 32, 32, 16384, 50432),
    "bert-large": (24, 1024, 16, 16, 4096, 30522),
    "debug": (4, 64, 4, 2, 128, 256),
    "debug-gpt": (4, 64, 4, 4, 256, 256),
    "debug-moe": (4, 64, 4, 2, 128, 256),
}


def test_every_preset_is_listed_and_pinned():
    assert set(list_presets()) == set(KEY_DIMS)


@pytest.mark.parametrize("name", sorted(KEY_DIMS))
def test_preset_loads_with_key_dims(name):
    m = load_model(name)
    assert m.name == name
    assert m.source, "every preset cites where its numbers come from"
    assert (m.num_layers, m.hidden_size, m.num_heads, m.kv_heads, m.ffn_hidden_size, m.vocab_size) == KEY_DIMS[name]
    assert preset_path(name).stem == name


def test_gpt3_architecture():
    m = load_model("gpt3-175b")
    assert (m.norm, m.activation, m.position, m.bias, m.tie_embeddings) == ("layernorm", "gelu", "learned", True, True)
    assert (m.dropout, m.max_seq_len, m.dim_per_head) == (0.1, 2048, 128)


def test_moe_presets():
    mix = load_model("mixtral-8x7b").moe
    assert (mix.num_experts, mix.top_k, mix.expert_ffn_hidden_size) == (8, 2, 14336)
    ds = load_model("deepseek-v3")
    assert (ds.moe.num_experts, ds.moe.top_k, ds.moe.num_shared_experts, ds.moe.first_k_dense) == (256, 8, 1, 3)
    assert ds.moe.expert_ffn_hidden_size == 2048 and ds.num_moe_layers == 58
    assert (ds.mla.q_lora_rank, ds.mla.kv_lora_rank, ds.mla.qk_nope_head_dim) == (1536, 512, 128)
    assert (ds.mla.qk_rope_head_dim, ds.mla.v_head_dim) == (64, 128)
    qw = load_model("qwen3-30b-a3b")
    assert (qw.moe.num_experts, qw.moe.top_k, qw.moe.expert_ffn_hidden_size, qw.head_dim) == (128, 8, 768, 128)
    assert not qw.tie_embeddings and qw.num_moe_layers == 48


def test_encoder_and_alibi_presets():
    bert = load_model("bert-large")
    assert (bert.attention_mask, bert.position, bert.max_seq_len) == ("bidirectional", "learned", 512)
    assert bert.dropout == 0.1
    mpt = load_model("mpt-7b")
    assert (mpt.position, mpt.bias, mpt.tie_embeddings, mpt.norm) == ("alibi", False, True, "layernorm")


def test_preset_name_is_case_insensitive():
    assert load_model("Llama3-8B").name == "llama3-8b"


# --- spec files --------------------------------------------------------------------------------
def test_yaml_extends_overrides_only_given_fields(tmp_path):
    f = tmp_path / "short.yaml"
    f.write_text("extends: llama3-8b\nnum_layers: 2\n")
    m = load_model(str(f))
    assert (m.num_layers, m.hidden_size, m.num_kv_heads) == (2, 4096, 8)
    assert m.name == "short", "a modified preset is named after its file"
    assert "extends llama3-8b" in m.source


def test_extends_merges_nested_moe(tmp_path):
    f = tmp_path / "mix.yaml"
    f.write_text("extends: mixtral-8x7b\nname: mix-top1\nmoe:\n  top_k: 1\n")
    m = load_model(str(f))
    assert (m.name, m.moe.top_k, m.moe.num_experts, m.moe.expert_ffn_hidden_size) == ("mix-top1", 1, 8, 14336)


def test_extends_null_section_removes_moe(tmp_path):
    f = tmp_path / "dense.yaml"
    f.write_text("extends: debug-moe\nmoe: null\n")
    assert load_model(str(f)).moe is None


def test_json_and_toml_spec_files(tmp_path):
    full = load_model("debug").model_dump()
    j = tmp_path / "tiny.json"
    j.write_text(json.dumps(full))
    assert load_model(str(j)) == load_model("debug")
    t = tmp_path / "tiny.toml"
    t.write_text('extends = "debug-moe"\nname = "tiny-moe"\n[moe]\nnum_experts = 8\n')
    m = load_model(str(t))
    assert (m.name, m.moe.num_experts, m.moe.top_k) == ("tiny-moe", 8, 2)


def test_overrides_take_precedence_over_file_and_preset(tmp_path):
    f = tmp_path / "a.yml"
    f.write_text("extends: debug-moe\nnum_layers: 6\nmoe:\n  top_k: 1\n")
    m = load_model(str(f), {"num_layers": 8, "moe.top_k": 3})
    assert (m.num_layers, m.moe.top_k, m.moe.num_experts) == (8, 3, 4)
    assert load_model("debug", {"max_seq_len": 64}).max_seq_len == 64


def test_override_creates_section_and_reports_missing_fields():
    with pytest.raises(SpecError, match=r"moe\.num_experts: Field required"):
        load_model("debug", {"moe.top_k": 2})


def test_override_into_scalar_is_an_error():
    with pytest.raises(SpecError, match=r"num_layers is 4, not a section"):
        load_model("debug", {"num_layers.x": 1})


# --- errors ------------------------------------------------------------------------------------
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_unknown_preset_suggests_nearest():
    with pytest.raises(SpecError) as e:
        load_model("llama3-7b")
    msg = _one_line(e)
    assert "unknown model preset 'llama3-7b'" in msg and "llama3-8b" in msg


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_model(str(tmp_path / "nope.yaml"))


def _write(tmp_path, text: str) -> str:
    f = tmp_path / "m.yaml"
    f.write_text(text)
    return str(f)


def test_unknown_key(tmp_path):
    with pytest.raises(SpecError) as e:
        load_model(_write(tmp_path, "extends: debug\nnum_layer: 3\n"))
    assert "num_layer: unknown key" in _one_line(e)


def test_unknown_nested_key(tmp_path):
    with pytest.raises(SpecError, match=r"moe\.topk: unknown key"):
        load_model(_write(tmp_path, "extends: debug-moe\nmoe:\n  topk: 3\n"))


def test_wrong_type_is_not_coerced(tmp_path):
    with pytest.raises(SpecError) as e:
        load_model(_write(tmp_path, "extends: debug\nnum_layers: '4'\n"))
    assert "num_layers" in _one_line(e) and "'4'" in str(e.value)


@pytest.mark.parametrize("field", ["num_layers", "hidden_size", "vocab_size", "ffn_hidden_size"])
@pytest.mark.parametrize("value", [0, -8])
def test_zero_and_negative_sizes(tmp_path, field, value):
    with pytest.raises(SpecError, match=field):
        load_model(_write(tmp_path, f"extends: debug\n{field}: {value}\n"))


def test_heads_not_divisible_by_kv_heads_shows_arithmetic():
    with pytest.raises(SpecError) as e:
        load_model("debug", {"num_kv_heads": 3})
    assert "4 % 3 = 1" in _one_line(e)


def test_top_k_above_experts():
    with pytest.raises(SpecError, match="top_k"):
        load_model("debug-moe", {"moe.top_k": 5})


def test_unparsable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_model(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_model(_write(tmp_path, "- 1\n- 2\n"))
    bad = tmp_path / "m.ini"
    bad.write_text("x")
    with pytest.raises(SpecError, match="unsupported spec file type"):
        load_model(str(bad))


def test_extends_unknown_preset(tmp_path):
    with pytest.raises(SpecError, match="unknown model preset 'lama3-8b'.*llama3-8b"):
        load_model(_write(tmp_path, "extends: lama3-8b\n"))


def test_spec_file_without_name_is_named_after_file(tmp_path):
    data = load_model("debug").model_dump()
    del data["name"]
    f = tmp_path / "My-Model.json"
    f.write_text(json.dumps(data))
    assert load_model(str(f)).name == "my-model"


def test_specs_are_frozen():
    m = load_model("debug")
    assert isinstance(m, ModelSpec)
    with pytest.raises(Exception):
        m.num_layers = 2  # type: ignore[misc]


def test_docs_list_every_field_and_preset():
    doc = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    fields = [f"`{n}`" for n in ModelSpec.model_fields]
    fields += [f"`moe.{n}`" for n in MoESpec.model_fields] + [f"`mla.{n}`" for n in MLASpec.model_fields]
    missing = [f for f in fields + [f"`{p}`" for p in list_presets()] if f not in doc]
    assert not missing, f"docs/models.md lacks {missing}"
