"""`autopar presets show` on a spec file or a config.json shows it like a preset."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli import app
from models.graph import build_graph
from models.load import load_model

runner = CliRunner()
HF = Path(__file__).parent / "data" / "hf"


def _params(arg: str) -> float:
    spec = load_model(arg)
    return build_graph(spec, min(spec.max_seq_len, 2048)).num_params


def test_spec_file_shows_its_fields_and_parameter_count(tmp_path):
    path = tmp_path / "my-model.yaml"
    path.write_text("extends: llama3-8b\nnum_layers: 16\n")
    r = runner.invoke(app, ["presets", "show", str(path)])
    assert r.exit_code == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert (data["name"], data["num_layers"], data["hidden_size"]) == ("my-model", 16, 4096)
    assert data["derived"]["params"] == _params(str(path)) and data["derived"]["params"] < _params("llama3-8b")
    r = runner.invoke(app, ["presets", "show", str(path), "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["derived"]["params_b"] == round(_params(str(path)) / 1e9, 3)


def test_spec_file_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my-model.yaml").write_text("extends: debug\nname: mine\nhidden_size: 128\n")
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["presets", "show", "my-model.yaml"])
    assert r.exit_code == 0, r.stderr
    assert yaml.safe_load(r.stdout)["hidden_size"] == 128


def test_config_json_shows_the_imported_spec():
    r = runner.invoke(app, ["presets", "show", str(HF / "meta-llama-3-8b")])
    assert r.exit_code == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["name"] == "meta-llama-3-8b" and data["derived"]["params"] == 8_030_261_248


def test_presets_and_errors_are_unchanged(tmp_path):
    assert yaml.safe_load(runner.invoke(app, ["presets", "show", "debug"]).stdout)["name"] == "debug"
    gpu = runner.invoke(app, ["presets", "show", "h100-sxm-80gb"])
    assert gpu.exit_code == 0 and "hbm" in gpu.stdout
    for arg, needle in ((str(tmp_path / "nope.yaml"), "model spec file not found"),
                        ("lama3-8b", "did you mean: llama3-8b")):
        r = runner.invoke(app, ["presets", "show", arg])
        assert r.exit_code == 2 and needle in r.stderr and r.stdout == "", arg
