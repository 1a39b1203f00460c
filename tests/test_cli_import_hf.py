"""`autopar import-hf`: round trip through --model, what the summary says, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from models.hf_import import from_hf_config
from models.hf_report import import_report
from models.load import load_model
from models.spec import ModelSpec

runner = CliRunner()
HF = Path(__file__).parent / "data" / "hf"
SAMPLES = sorted(p.name for p in HF.iterdir() if (p / "config.json").is_file())


def _cfg(name: str) -> dict:
    return json.loads((HF / name / "config.json").read_text())


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_model_option(tmp_path, sample, suffix):
    """The written file loads with --model into the very spec --model gives for the config."""
    out = tmp_path / f"model{suffix}"
    r = runner.invoke(app, ["import-hf", str(HF / sample), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "", "the spec went to the file; stdout stays empty"
    assert f"wrote {out}" in r.stderr and "params" in r.stderr
    assert load_model(str(out)) == load_model(str(HF / sample))


def test_stdout_yaml_is_the_spec_and_the_summary_goes_to_stderr():
    r = runner.invoke(app, ["import-hf", str(HF / "meta-llama-3-8b" / "config.json")])
    assert r.exit_code == 0, r.stderr
    spec = ModelSpec.model_validate(yaml.safe_load(r.stdout))
    assert spec == from_hf_config(_cfg("meta-llama-3-8b"), origin=str(HF / "meta-llama-3-8b" / "config.json"))
    assert r.stdout.startswith("# autopar model spec, imported by `autopar import-hf`")
    err = r.stderr
    assert "model_type 'llama'" in err and "as meta-llama-3-8b" in err
    assert "layers 32 · hidden 4096 · heads 32 / kv 8 (head dim 128) · ffn 14336 · vocab 128256" in err
    assert "8,030,261,248 (8.03 B)" in err, "Llama 3 8B has 8.03 B parameters"
    assert "num_key_value_heads -> num_kv_heads" in err
    assert "ignored    9 keys:" in err and "rope_theta -> rope_theta" in err and "rms_norm_eps -> norm_eps" in err
    assert "{" not in r.stdout.splitlines()[1], "YAML by default"


def test_moe_mla_and_defaults_are_reported():
    r = runner.invoke(app, ["import-hf", str(HF / "deepseek-v3"), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["moe"]["num_experts"] == 256
    assert "256 experts, top-8, expert ffn 2048, 1 shared; 58 of 61 layers" in r.stderr
    assert "kv_lora_rank 512" in r.stderr and "num_nextn_predict_layers" in r.stderr  # MTP is not modelled
    r = runner.invoke(app, ["import-hf", str(HF / "gpt2"), "--name", "my-gpt2"])
    assert r.exit_code == 0, r.stderr
    assert yaml.safe_load(r.stdout)["name"] == "my-gpt2"
    assert "n_inner (not given) = 4 * n_embd = 3072" in r.stderr
    assert "tie_word_embeddings (not given) = True" in r.stderr


@pytest.mark.parametrize("sample", SAMPLES)
def test_report_partitions_the_keys_and_ignored_keys_change_nothing(sample):
    """Every config key is read, defaulted or ignored; perturbing an ignored key leaves the spec
    unchanged, so the report does not call a key ignored that the importer uses."""
    cfg = _cfg(sample)
    rep = import_report(cfg)
    assert set(rep.read).isdisjoint(rep.ignored)
    assert set(cfg) <= set(rep.read) | set(rep.ignored) | set(rep.defaulted)
    spec = from_hf_config(cfg)
    for key in rep.ignored:
        assert from_hf_config({**cfg, key: 12345}) == spec, key
    verbatim = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                "max_seq_len", "moe.num_experts", "moe.top_k", "moe.expert_ffn_hidden_size")
    for key, fields in rep.read.items():  # fields copied verbatim must carry the config's value
        for field in (f for f in fields.split(" & ") if f in verbatim):
            section, _, leaf = field.rpartition(".")
            holder = getattr(spec, section) if section else spec
            assert getattr(holder, leaf) == cfg[key], (key, field)


def test_one_key_feeding_two_fields_is_reported_for_both():
    read = import_report(_cfg("gpt-oss-20b")).read
    assert read["intermediate_size"] == "ffn_hidden_size & moe.expert_ffn_hidden_size"
    assert read["experts_per_token"] == "moe.top_k"
    assert "num_experts_per_tok" in import_report(_cfg("gpt-oss-20b")).ignored, "shadowed by experts_per_token"


@pytest.mark.parametrize("args, needle", [
    (["/nonexistent/config.json"], "no such file or directory"),
    ([str(HF)], "directory has no config.json"),
    ([str(HF / "gpt2"), "-o", "model.toml"], "use a .yaml, .yml or .json file name"),
    ([str(HF / "gpt2"), "-o", "model.json", "--format", "yaml"], "--format yaml does not match -o model.json"),
    ([str(HF / "gpt2"), "--format", "xml"], "--format must be one of yaml, json"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = runner.invoke(app, ["import-hf", *args])
    assert r.exit_code == 2, r.stdout
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == "" and "Traceback" not in r.stderr


@pytest.mark.parametrize("text, needle", [
    ('{"model_type": "t5", "num_layers": 6}', "unknown"),
    ('{"model_type": "llama", "hidden_size": 8}', "missing keys: num_hidden_layers"),
    ("not json", "cannot read a JSON config"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_configs_are_one_line_exit_2(tmp_path, text, needle):
    path = tmp_path / "config.json"
    path.write_text(text)
    r = runner.invoke(app, ["import-hf", str(path)])
    assert r.exit_code == 2 and needle in r.stderr and r.stdout == ""


def test_set_overrides_apply_as_they_do_for_model(tmp_path):
    """`import-hf DIR --set model.X=Y` writes what `--model DIR --set model.X=Y` loads."""
    out = tmp_path / "m.yaml"
    r = runner.invoke(app, ["import-hf", str(HF / "mixtral-8x7b-v0.1"), "-o", str(out),
                            "--set", "model.num_layers=4", "--set", "model.moe.top_k=1"])
    assert r.exit_code == 0, r.stderr
    assert "--set      model.num_layers = 4, model.moe.top_k = 1" in r.stderr
    expected = load_model(str(HF / "mixtral-8x7b-v0.1"), {"num_layers": 4, "moe.top_k": 1})
    assert load_model(str(out)) == expected and expected.num_layers == 4 and expected.moe.top_k == 1
    for bad, needle in (("cluster.num_nodes=2", "imports a model only"),
                        ("training.grad_reduce_dtype=bf16", "imports a model only"),
                        ("model.rope_base=1", "unknown key"), ("model.num_kv_heads=3", "divisible by num_kv_heads")):
        r = runner.invoke(app, ["import-hf", str(HF / "meta-llama-3-8b"), "--set", bad])
        assert r.exit_code == 2 and needle in r.stderr and r.stdout == "", bad
