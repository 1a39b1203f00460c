"""`autopar run --init-weights DIR` (issue 20, item 5): a tiny model built with transformers' own
classes and saved with ``save_pretrained`` loads into the runtime with transformers' logits
(within 1e-5, fp32, eager attention), and a 2-rank pipeline run starts from those weights (its
first loss equals the single-process one); a checkpoint that does not fit the plan exits 2
with one line before any rank starts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models.hf_import import from_hf_config  # noqa: E402
from runtime.hf_weights import Checkpoint, check_checkpoint, load_part  # noqa: E402
from runtime.model import build_model  # noqa: E402
from runtime.plan_io import make_plan  # noqa: E402

runner = CliRunner()
TINY = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,  # not the runtime's default 1e-5: the spec's norm_eps must be honoured
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# Llama 3.1's RoPE: a base of 500,000 and llama3 scaling (original length 16 < 64 positions, so
# every band of the scaling formula is used).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj and gate_up_proj
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 16}),  # 16 < 48 tokens: the band counts
}


def _save(tmp_path, family: str):
    config_cls, model_cls, extra = FAMILIES[family]
    cfg = getattr(transformers, config_cls)(**TINY, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).float().eval()
    model.config._attn_implementation = "eager"
    path = tmp_path / family
    # Mixtral in shards (model.safetensors.index.json), the others in one file.
    model.save_pretrained(path, max_shard_size="100KB" if family == "mixtral" else "5GB")
    return model, path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_equal_transformers(tmp_path, family):
    hf, path = _save(tmp_path, family)
    spec = from_hf_config(json.loads((path / "config.json").read_text()))
    check_checkpoint(path, spec)
    assert (path / "model.safetensors.index.json").is_file() == (family == "mixtral")
    model = build_model(spec, seed=123)
    load_part(model, Checkpoint(path))
    ids = torch.randint(0, TINY["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
    diff = (got - want).abs().max().item()
    assert diff <= 1e-5, f"{family}: max |logits - transformers'| = {diff:.2e}"


def _plan(tmp_path, path, pp: int):
    spec_file = tmp_path / "spec.json"
    r = runner.invoke(app, ["import-hf", str(path), "-o", str(spec_file)])
    assert r.exit_code == 0, r.stderr
    plan = tmp_path / f"plan{pp}.json"
    r = runner.invoke(app, ["plan", "-m", str(spec_file), "-c", f"cpu:{pp}", "-b", "2", "-s", "16", "--dtype",
                            "fp32", "--tp", "1", "--pp", str(pp), "--out", str(plan)])
    assert r.exit_code == 0, r.stderr
    return plan


def test_a_pipeline_run_starts_from_the_checkpoint(tmp_path):
    from runtime.launch import run
    from runtime.plan_io import load_plan
    from runtime.train import run_reference

    _, path = _save(tmp_path, "mixtral")
    plan = _plan(tmp_path, path, pp=2)
    rep = run(plan, steps=1, out=tmp_path / "r.json", init_weights=path, metrics=tmp_path / "m.jsonl")
    ref = run_reference(load_plan(plan), steps=1, init_weights=str(path))
    seeded = run_reference(load_plan(plan), steps=1)
    assert rep["steps"][0]["loss"] == pytest.approx(ref["losses"][0], rel=1e-6)
    assert abs(ref["losses"][0] - seeded["losses"][0]) > 1e-3, "the seeded model would give another loss"


def test_a_checkpoint_of_another_model_exits_2_with_one_line(tmp_path):
    _, path = _save(tmp_path, "llama")
    cfg = json.loads((path / "config.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**cfg, "hidden_size": 128}))
    spec_file = tmp_path / "spec.json"
    assert runner.invoke(app, ["import-hf", str(other), "-o", str(spec_file)]).exit_code == 0
    plan = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "-m", str(spec_file), "-c", "cpu:1", "-b", "2", "-s", "16", "--out", str(plan)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["run", str(plan), "--init-weights", str(path), "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 2 and "config.json is another model than the plan's: hidden_size 64 (plan: 128)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_and_extra_tensors_and_unknown_families_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = _save(tmp_path, "llama")
    spec = from_hf_config(json.loads((path / "config.json").read_text()))
    tensors = load_file(path / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "model.norm.weight"}, path / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensor model.norm.weight"):
        check_checkpoint(path, spec)
    save_file({**tensors, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, path / "model.safetensors")
    with pytest.raises(ValueError, match="1 tensors the runtime's model has no place for, e.g. .*q_proj.bias"):
        check_checkpoint(path, spec)
    save_file({**tensors, "model.norm.weight": torch.ones(65)}, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.norm.weight gives norm.weight shape \[65\]"):
        check_checkpoint(path, spec)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3"}))
    with pytest.raises(ValueError, match="model_type 'qwen3' is not one the runtime loads"):
        check_checkpoint(path, spec)


def test_mixtral_experts_fused_as_transformers_5_holds_them(tmp_path):
    """transformers 5 keeps Mixtral's experts as 3-D ``gate_up_proj`` / ``down_proj`` in memory
    (save_pretrained converts them back); a checkpoint written from that state dict loads too."""
    import shutil

    from safetensors.torch import save_file

    hf, path = _save(tmp_path, "mixtral")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    fused = tmp_path / "fused"
    fused.mkdir()
    shutil.copy(path / "config.json", fused / "config.json")
    save_file(state, fused / "model.safetensors")
    spec = from_hf_config(json.loads((fused / "config.json").read_text()))
    model = build_model(spec, seed=123)
    load_part(model, check_checkpoint(fused, spec))
    ids = torch.randint(0, TINY["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5
