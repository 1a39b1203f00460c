"""`autopar schema model|cluster`: valid JSON Schemas that accept what the loaders accept."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from hardware.gpu import PRESETS_DIR as GPU_PRESETS
from models.errors import SpecError
from models.load import PRESETS_DIR as MODEL_PRESETS
from models.load import load_model

runner = CliRunner()
HF = Path(__file__).parent / "data" / "hf"


def _schema(kind: str) -> dict:
    r = runner.invoke(app, ["schema", kind])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _valid(schema: dict, doc: dict) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(doc)


def test_model_schema_accepts_every_preset_and_imported_spec(tmp_path):
    schema = _schema("model")
    for path in sorted(MODEL_PRESETS.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    out = tmp_path / "m.yaml"
    assert runner.invoke(app, ["import-hf", str(HF / "deepseek-v3"), "-o", str(out)]).exit_code == 0
    jsonschema.validate(yaml.safe_load(out.read_text()), schema)


LLAMA = yaml.safe_load((MODEL_PRESETS / "llama3-8b.yaml").read_text())
MODEL_DOCS = [
    ({"extends": "llama3-8b", "num_layers": 4}, True),
    ({"extends": "mixtral-8x7b", "moe": {"top_k": 1}}, True),  # nested sections merge: partial is fine
    ({k: v for k, v in LLAMA.items() if k != "name"}, True),  # name defaults to the file's stem
    ({**LLAMA, "rope_base": 5e5}, False),
    ({"extends": "llama3-8b", "rope_theta": -1.0}, False),
    ({**LLAMA, "num_layers": "32"}, False),
    ({**LLAMA, "norm": "batchnorm"}, False),
    ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, False),
    ({**LLAMA, "moe": {"num_experts": 8, "top_k": 2}}, False),
    ({"extends": "llama3-8b", "dropout": 1.5}, False),
]


H100 = yaml.safe_load((GPU_PRESETS / "h100-sxm-80gb.yaml").read_text())
CLUSTER_DOCS = [
    ({"gpu": "h100-sxm-80gb", "num_nodes": 4}, True),
    ({"name": "selene-slice", "gpu": {"extends": "a100-sxm-80gb", "hbm_TBps": 2.039,
                                      "efficiency": {"matmul": {"bf16": 0.75}}},
      "num_nodes": 48, "gpus_per_node": 8, "inter_node_bw_GBps": 25.0}, True),  # the docs/hardware.md example
    ({"gpu": {**H100, "name": "my-h100"}, "num_nodes": 2, "inter_node_latency_us": 0.0}, True),
    ({"gpu": "h100-sxm-80gb"}, False),
    ({"gpu": "h100-sxm-80gb", "num_nodes": 4, "nics": 2}, False),
    ({"gpu": "h100-sxm-80gb", "num_nodes": 0}, False),
    ({"gpu": "h100-sxm-80gb", "num_nodes": 2, "inter_node_bw_GBps": -1.0}, False),
    ({"gpu": {"hbm_TBps": 2.0}, "num_nodes": 1}, False),  # inline GPU without extends: every field
    ({"gpu": {"extends": "h100-sxm-80gb", "hbm_TBps": "fast"}, "num_nodes": 1}, False),
    ({"gpu": 7, "num_nodes": 1}, False),
]


@pytest.mark.parametrize("kind, doc, ok", [("model", d, ok) for d, ok in MODEL_DOCS]
                         + [("cluster", d, ok) for d, ok in CLUSTER_DOCS])
def test_schema_agrees_with_the_loader(tmp_path, kind, doc, ok):
    """The JSON Schema and the real loader give the same verdict on every document."""
    load = {"model": load_model, "cluster": load_cluster}[kind]
    assert _valid(_schema(kind), doc) is ok
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(doc))
    if ok:
        load(str(path))
    else:
        with pytest.raises(SpecError):
            load(str(path))


def test_cluster_schema_accepts_every_gpu_preset_inline():
    schema = _schema("cluster")
    for path in sorted(GPU_PRESETS.glob("*.yaml")):
        gpu = yaml.safe_load(path.read_text())
        jsonschema.validate({"gpu": gpu, "num_nodes": 1}, schema)
        jsonschema.validate({"gpu": path.stem, "num_nodes": 1}, schema)


def test_schema_group_lists_all_three():
    r = runner.invoke(app, ["schema", "--help"])
    assert r.exit_code == 0
    for kind in ("plan", "model", "cluster"):
        assert kind in r.stdout
