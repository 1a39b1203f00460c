"""GPU presets and cluster loading (hardware/gpu.py, hardware/cluster.py). No GPU needed."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hardware.cluster import ClusterSpec, load_cluster
from hardware.gpu import GPUSpec, list_gpus, load_gpu, preset_data
from models.errors import SpecError

EXPECTED_PRESETS = {
    "v100-sxm-32gb", "a100-sxm-40gb", "a100-sxm-80gb", "h100-sxm-80gb", "h100-sxm-96gb", "h800-sxm-80gb",
    "h200-sxm-141gb", "b200-sxm-180gb", "gb200", "mi250x", "mi300x", "cpu",
}  # fmt: skip


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- GPU presets ---------------------------------------------------------------------------------


def test_every_preset_loads_and_is_named_after_its_file():
    assert EXPECTED_PRESETS <= set(list_gpus())
    for name in list_gpus():
        gpu = load_gpu(name)
        assert gpu.name == name
        assert gpu.source and gpu.description
        assert gpu.matmul_flops("fp32") > 0 and gpu.hbm_effective_Bps > 0


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        # Dense datasheet figures (published_cases.json "hardware"), never the sparsity ones.
        ("h100-sxm-80gb", "bf16", 989.0),
        ("h100-sxm-80gb", "fp8", 1979.0),
        ("h100-sxm-96gb", "bf16", 989.0),
        ("h800-sxm-80gb", "bf16", 989.0),
        ("h200-sxm-141gb", "bf16", 989.0),
        ("a100-sxm-40gb", "bf16", 312.0),
        ("a100-sxm-80gb", "bf16", 312.0),
        ("v100-sxm-32gb", "fp16", 125.0),
        ("b200-sxm-180gb", "bf16", 2250.0),
        ("gb200", "bf16", 2500.0),
        ("mi300x", "bf16", 1307.4),
        ("mi250x", "bf16", 383.0 / 2),  # one GCD = half a package
    ],
)
def test_peak_flops_pinned_to_datasheets(name, dtype, tflops):
    assert load_gpu(name).peak_flops(dtype) == pytest.approx(tflops * 1e12, rel=1e-9)


@pytest.mark.parametrize(
    ("name", "gib", "tbps", "nvlink", "nic", "per_node"),
    [
        ("h100-sxm-80gb", 80, 3.35, 450, 50, 8),
        ("h100-sxm-96gb", 96, 2.4, 450, 50, 8),
        ("h800-sxm-80gb", 80, 3.35, 200, 50, 8),
        ("a100-sxm-80gb", 80, 2.0, 300, 25, 8),
        ("a100-sxm-40gb", 40, 1.555, 300, 25, 8),
        ("h200-sxm-141gb", 141, 4.8, 450, 50, 8),
        ("b200-sxm-180gb", 180, 8.0, 900, 50, 8),
        ("gb200", 186, 8.0, 900, 50, 72),
        ("mi300x", 192, 5.3, 448, 50, 8),
        ("v100-sxm-32gb", 32, 0.9, 150, 6.25, 8),
    ],
)
def test_memory_and_links_pinned(name, gib, tbps, nvlink, nic, per_node):
    gpu = load_gpu(name)
    assert gpu.hbm_bytes == gib * 2**30
    assert (gpu.hbm_TBps, gpu.intra_node_bw_GBps, gpu.inter_node_bw_GBps) == (tbps, nvlink, nic)
    assert gpu.gpus_per_node == per_node


def test_derived_rates_are_peak_times_efficiency():
    gpu = load_gpu("h100-sxm-80gb")
    eff = gpu.efficiency
    assert gpu.matmul_flops("bf16") == pytest.approx(989e12 * eff.matmul["bf16"])
    assert gpu.attention_flops("bf16") == pytest.approx(989e12 * eff.attention["bf16"])
    assert gpu.hbm_effective_Bps == pytest.approx(3.35e12 * eff.memory_bw)


def test_missing_efficiency_falls_back_to_bf16():
    data = preset_data("h100-sxm-80gb")
    data["efficiency"] = {**data["efficiency"], "matmul": {"bf16": 0.7}, "attention": {"bf16": 0.5}}
    gpu = GPUSpec.model_validate(data)
    assert gpu.matmul_flops("fp8") == pytest.approx(1979e12 * 0.7)
    assert gpu.attention_flops("tf32") == pytest.approx(494.5e12 * 0.5)


def test_missing_dtype_raises_spec_error():
    message = _one_line_error(load_gpu("v100-sxm-32gb").peak_flops, "bf16")
    assert "v100-sxm-32gb has no bf16" in message and "fp16" in message
    assert "unknown dtype" in _one_line_error(load_gpu("h100-sxm-80gb").peak_flops, "fp64")
    with pytest.raises(SpecError):
        load_gpu("a100-sxm-80gb").matmul_flops("fp8")


def test_efficiency_for_a_dtype_without_peak_is_rejected():
    data = preset_data("v100-sxm-32gb")
    data["efficiency"] = {**data["efficiency"], "matmul": {"fp16": 0.7, "bf16": 0.7}}
    with pytest.raises(ValidationError, match="peak_bf16_tflops is null"):
        GPUSpec.model_validate(data)


def test_efficiency_must_be_a_fraction():
    data = preset_data("h100-sxm-80gb")
    data["efficiency"] = {**data["efficiency"], "memory_bw": 1.5}
    with pytest.raises(ValidationError):
        GPUSpec.model_validate(data)


def test_unknown_gpu_suggests_nearest_names():
    assert "did you mean h100-sxm-80gb, h100-sxm-96gb" in _one_line_error(load_gpu, "h100")
    assert "h100-sxm-80gb" in _one_line_error(load_gpu, "h100-sxm-80g")
    assert "known: " in _one_line_error(load_gpu, "tpu-v5p")


def test_preset_names_are_case_insensitive():
    assert load_gpu(" H100-SXM-80GB ").name == "h100-sxm-80gb"


# --- NAME and NAME:N --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "nodes", "per_node"),
    [
        ("h100-sxm-80gb", 1, 8),
        ("h100-sxm-80gb:8", 1, 8),
        ("h100-sxm-80gb:64", 8, 8),
        ("h100-sxm-80gb:4", 1, 4),
        ("a100-sxm-80gb:1536", 192, 8),
        ("gb200:144", 2, 72),
        ("cpu:2", 1, 2),
    ],
)
def test_shorthand(arg, nodes, per_node):
    cluster = load_cluster(arg)
    assert (cluster.num_nodes, cluster.gpus_per_node) == (nodes, per_node)
    assert cluster.num_gpus == nodes * per_node
    assert cluster.intra_node_bw_GBps == cluster.gpu.intra_node_bw_GBps
    assert cluster.inter_node_bw_GBps == cluster.gpu.inter_node_bw_GBps
    assert cluster.inter_node_latency_us == cluster.gpu.inter_node_latency_us


def test_shorthand_non_multiple_shows_arithmetic():
    message = _one_line_error(load_cluster, "h100-sxm-80gb:100")
    assert "100 GPUs is not a multiple of 8 GPUs per node (100 % 8 = 4)" in message


@pytest.mark.parametrize("count", ["0", "-8", "abc", ""])
def test_shorthand_bad_counts(count):
    assert "positive integer" in _one_line_error(load_cluster, f"h100-sxm-80gb:{count}")


def test_shorthand_unknown_preset_suggests():
    assert "did you mean h100-sxm-80gb" in _one_line_error(load_cluster, "h100:64")


def test_overrides_apply_last_and_accept_dotted_keys():
    cluster = load_cluster(
        "h100-sxm-80gb:16", {"inter_node_bw_GBps": 25.0, "gpu.efficiency.memory_bw": 0.5, "gpu": {"hbm_TBps": 3.0}}
    )
    assert cluster.inter_node_bw_GBps == 25.0
    assert cluster.gpu.efficiency.memory_bw == 0.5 and cluster.gpu.hbm_TBps == 3.0
    assert cluster.gpu.name == "h100-sxm-80gb-custom"  # a changed preset does not pass for the preset
    assert cluster.gpu.efficiency.matmul == load_gpu("h100-sxm-80gb").efficiency.matmul
    assert "unknown key" in _one_line_error(load_cluster, "h100-sxm-80gb:16", {"nic_GBps": 1.0})


def test_cluster_spec_is_frozen():
    cluster = load_cluster("h100-sxm-80gb:16")
    with pytest.raises(ValidationError):
        cluster.num_nodes = 4


# --- cluster files -------------------------------------------------------------------------------


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_file_with_defaults(tmp_path):
    path = _write(tmp_path, "selene.yaml", "gpu: a100-sxm-80gb\nnum_nodes: 4\n")
    cluster = load_cluster(path)
    assert isinstance(cluster, ClusterSpec)
    assert (cluster.name, cluster.num_gpus, cluster.gpus_per_node) == ("selene", 32, 8)
    assert (cluster.intra_node_bw_GBps, cluster.inter_node_bw_GBps) == (300.0, 25.0)


def test_json_and_toml_files(tmp_path):
    body = {"name": "mine", "gpu": "h100-sxm-80gb", "num_nodes": 2, "gpus_per_node": 8, "inter_node_bw_GBps": 25.0}
    from_json = load_cluster(_write(tmp_path, "c.json", json.dumps(body)))
    toml = 'name = "mine"\ngpu = "h100-sxm-80gb"\nnum_nodes = 2\ngpus_per_node = 8\ninter_node_bw_GBps = 25.0\n'
    from_toml = load_cluster(_write(tmp_path, "c.toml", toml))
    assert from_json == from_toml
    assert (from_json.name, from_json.num_gpus, from_json.inter_node_bw_GBps) == ("mine", 16, 25.0)


def test_inline_gpu_extends_a_preset(tmp_path):
    text = """
gpu:
  extends: h100-sxm-80gb
  name: h100-capped
  peak_bf16_tflops: 800.0
  efficiency: {matmul: {bf16: 0.6}}
num_nodes: 2
inter_node_latency_us: 0.0
"""
    cluster = load_cluster(_write(tmp_path, "c.yaml", text))
    gpu = cluster.gpu
    assert (gpu.name, gpu.peak_bf16_tflops, gpu.efficiency.matmul["bf16"]) == ("h100-capped", 800.0, 0.6)
    assert gpu.efficiency.matmul["fp8"] == load_gpu("h100-sxm-80gb").efficiency.matmul["fp8"]
    assert gpu.hbm_bytes == 80 * 2**30 and "overridden" in gpu.source
    assert cluster.inter_node_latency_us == 0.0  # an explicit 0 is kept, not replaced by the default


def test_inline_gpu_object_without_extends(tmp_path):
    data = preset_data("mi300x")
    data["name"] = "my-mi300x"
    path = _write(tmp_path, "c.json", json.dumps({"gpu": data, "num_nodes": 1}))
    assert load_cluster(path).gpu.name == "my-mi300x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpu: h100-sxm-80gb\nnum_nodes: 2\nnics: 8\n", "nics: unknown key"),
        ("gpu: h100-sxm-80gb\nnum_nodes: '2'\n", "num_nodes: Input should be a valid integer (got '2')"),
        ("gpu: h100-sxm-80gb\nnum_nodes: 2.0\n", "num_nodes"),
        ("gpu: h100-sxm-80gb\nnum_nodes: true\n", "num_nodes"),
        ("gpu: h100-sxm-80gb\nnum_nodes: 0\n", "num_nodes: Input should be greater than 0"),
        ("gpu: h100-sxm-80gb\nnum_nodes: 2\ngpus_per_node: -8\n", "gpus_per_node"),
        ("gpu: h100-sxm-80gb\nnum_nodes: 2\ninter_node_bw_GBps: 0\n", "inter_node_bw_GBps"),
        ("gpu: 7\nnum_nodes: 2\n", "gpu: Value error, expected a GPU preset name or a GPU object"),
        ("num_nodes: 2\n", "gpu: Field required"),
        ("gpu: h100\nnum_nodes: 2\n", "did you mean h100-sxm-80gb"),
        ("gpu: {extends: nope}\nnum_nodes: 2\n", "unknown GPU preset 'nope'"),
        ("gpu: {extends: h100-sxm-80gb, hbm_gb: 80}\nnum_nodes: 2\n", "gpu: hbm_gb: unknown key"),
        ("gpu: {extends: h100-sxm-80gb, hbm_TBps: fast}\nnum_nodes: 2\n", "gpu: hbm_TBps"),
        ("gpu: {name: x}\nnum_nodes: 2\n", "Field required"),
        ("- gpu: h100-sxm-80gb\n", "expected a mapping"),
        ("gpu: [unclosed\n", "cannot parse"),
    ],
)
def test_bad_cluster_files(tmp_path, text, expected):
    message = _one_line_error(load_cluster, _write(tmp_path, "bad.yaml", text))
    assert expected in message
    assert "bad.yaml" in message or "preset" in message


def test_missing_cluster_file():
    assert "no such file" in _one_line_error(load_cluster, "/nonexistent/cluster.yaml")


def test_docs_table_lists_every_preset():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "hardware.md").read_text(encoding="utf-8")
    for name in list_gpus():
        assert f"| `{name}`" in docs, f"docs/hardware.md GPU table lacks {name}"
