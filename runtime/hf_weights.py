"""Initial weights from a local Hugging Face checkpoint directory (``--init-weights DIR``).

The directory holds ``config.json`` and ``model.safetensors``, or shards listed by
``model.safetensors.index.json`` (its ``weight_map``). :func:`check_checkpoint` runs once, before
any rank starts, and reads only the safetensors headers: the config must import (``import-hf``)
to the plan's model, the family must be one whose architecture the runtime implements, every
parameter of the runtime's model must find its tensor with the same shape, and every tensor of
the checkpoint must find its parameter. :func:`load_part` then fills one pipeline chunk's
parameters in place (``apply_plan``'s ``load=`` hook runs it on each chunk after the split, before
TP and FSDP shard it), reading only the tensors that chunk holds.

Names (HF -> runtime, torchtitan's): ``model.embed_tokens`` -> ``tok_embeddings``,
``model.layers.i.self_attn.{q,k,v,o}_proj`` -> ``layers.i.attention.w{q,k,v,o}``,
``input_layernorm`` -> ``attention_norm``, ``post_attention_layernorm`` -> ``ffn_norm``,
``mlp.{gate,down,up}_proj`` -> ``feed_forward.w{1,2,3}``, ``model.norm`` -> ``norm``,
``lm_head`` -> ``output`` (``model.embed_tokens`` when the embeddings are tied). Phi-3's fused
``qkv_proj`` and ``gate_up_proj`` are split by rows (q, k, v; gate, up: its forward's order).
Mixtral: ``block_sparse_moe.gate`` -> ``feed_forward.router``, ``experts.j.w{1,2,3}`` -> ``experts.j.w{1,2,3}``,
or transformers 5's fused ``mlp.experts.gate_up_proj [E, 2f, h]`` / ``down_proj [E, h, f]``.

No q/k permutation: HF checkpoints of Llama are stored for ``rotate_half`` (the conversion script
permutes Meta's interleaved layout), and :func:`runtime.model.apply_rope` uses the same half-split
rotation; tests/test_init_weights.py checks the logits against transformers'.

Memory: each rank reads the full tensors of the chunks it holds (one at a time, memory-mapped)
into full-shaped parameters before TP/FSDP shard them, so a rank briefly holds its whole pipeline
stage unsharded: fine for models whose stage fits a rank, not for a stage larger than one device.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.errors import SpecError
from models.hf_import import from_hf_config
from models.spec import ModelSpec
from runtime.model import Transformer, build_model, rope_table

# model_type -> how its tensors are named; families whose layers the runtime's Block reproduces.
FAMILIES = {"llama": "split", "mistral": "split", "mixtral": "split", "phi3": "fused"}
GATED_SILU = ("silu", "swish")  # the runtime's swiglu; its geglu is tanh-GELU, unlike HF's "gelu"
# Fields that may differ between config.json's model and the plan's: run settings, not weights.
NOT_COMPARED = {"name", "source", "dropout", "max_seq_len"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved; recomputed here


@dataclass(frozen=True)
class Source:
    """Where one runtime parameter comes from: ``key``, then ``index`` along dim 0 (one expert of
    a fused 3-D tensor), then rows ``[lo, hi)`` (one projection of a fused matrix)."""

    key: str
    index: int | None = None
    rows: tuple[int, int] | None = None

    def shape(self, stored: list[int]) -> list[int]:
        shape = stored[1:] if self.index is not None else list(stored)
        if self.rows is not None:
            shape = [self.rows[1] - self.rows[0], *shape[1:]]
        return shape


class Checkpoint:
    """A checkpoint directory: its config, its tensor -> file map, open files read lazily."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        config = self.dir / "config.json"
        if not config.is_file():
            raise ValueError(f"--init-weights {self.dir}: no config.json there")
        self.config = json.loads(config.read_text())
        self._handles: dict[Path, Any] = {}  # safetensors' safe_open objects, opened on first read
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            self.files = {k: self.dir / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (self.dir / "model.safetensors").is_file():
            self.files = {k: self.dir / "model.safetensors" for k in self._open(self.dir / "model.safetensors").keys()}
        else:
            raise ValueError(f"--init-weights {self.dir}: neither model.safetensors nor model.safetensors.index.json")

    def _open(self, path: Path):
        from safetensors import safe_open

        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def stored_shape(self, key: str) -> list[int]:
        return list(self._open(self.files[key]).get_slice(key).get_shape())

    def read(self, src: Source) -> torch.Tensor:
        sl = self._open(self.files[src.key]).get_slice(src.key)
        if src.index is not None:
            t = sl[src.index]
            return t[src.rows[0] : src.rows[1]] if src.rows is not None else t
        return sl[src.rows[0] : src.rows[1]] if src.rows is not None else sl[:]


def _block_sources(spec: ModelSpec, i: int, fused: bool, ckpt_keys: set[str]) -> Iterator[tuple[str, Source]]:
    hf, ours = f"model.layers.{i}.", f"layers.{i}."
    yield ours + "attention_norm.weight", Source(hf + "input_layernorm.weight")
    yield ours + "ffn_norm.weight", Source(hf + "post_attention_layernorm.weight")
    q, kv = spec.num_heads * spec.dim_per_head, spec.kv_heads * spec.dim_per_head
    suffixes = ("weight", "bias") if spec.bias else ("weight",)
    for suffix in suffixes:
        yield ours + f"attention.wo.{suffix}", Source(hf + f"self_attn.o_proj.{suffix}")
        if fused:
            bounds = {"wq": (0, q), "wk": (q, q + kv), "wv": (q + kv, q + 2 * kv)}
            for name, rows in bounds.items():
                yield ours + f"attention.{name}.{suffix}", Source(hf + f"self_attn.qkv_proj.{suffix}", rows=rows)
        else:
            for name, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj")):
                yield ours + f"attention.{name}.{suffix}", Source(hf + f"self_attn.{theirs}.{suffix}")
    if spec.is_moe_layer(i):
        yield from _expert_sources(spec, hf, ours + "feed_forward.", ckpt_keys)
        return
    f = spec.ffn_hidden_size
    for suffix in suffixes:
        yield ours + f"feed_forward.w2.{suffix}", Source(hf + f"mlp.down_proj.{suffix}")
        if fused:
            yield ours + f"feed_forward.w1.{suffix}", Source(hf + f"mlp.gate_up_proj.{suffix}", rows=(0, f))
            yield ours + f"feed_forward.w3.{suffix}", Source(hf + f"mlp.gate_up_proj.{suffix}", rows=(f, 2 * f))
        else:
            yield ours + f"feed_forward.w1.{suffix}", Source(hf + f"mlp.gate_proj.{suffix}")
            yield ours + f"feed_forward.w3.{suffix}", Source(hf + f"mlp.up_proj.{suffix}")


def _expert_sources(spec: ModelSpec, hf: str, ours: str, ckpt_keys: set[str]) -> Iterator[tuple[str, Source]]:
    """Mixtral's experts, per expert (``block_sparse_moe``, how transformers saves them) or fused
    into 3-D tensors (``mlp.experts``, transformers 5's in-memory layout)."""
    assert spec.moe is not None  # only called for MoE layers
    f = spec.moe.expert_ffn_hidden_size
    fused = hf + "mlp.experts.gate_up_proj" in ckpt_keys
    yield ours + "router.weight", Source(hf + ("mlp.gate.weight" if fused else "block_sparse_moe.gate.weight"))
    for j in range(spec.moe.num_experts):
        e = f"{ours}experts.{j}."
        if fused:
            yield e + "w1.weight", Source(hf + "mlp.experts.gate_up_proj", index=j, rows=(0, f))
            yield e + "w3.weight", Source(hf + "mlp.experts.gate_up_proj", index=j, rows=(f, 2 * f))
            yield e + "w2.weight", Source(hf + "mlp.experts.down_proj", index=j)
        else:
            for w in ("w1", "w2", "w3"):
                yield e + f"{w}.weight", Source(hf + f"block_sparse_moe.experts.{j}.{w}.weight")


def parameter_sources(spec: ModelSpec, model_type: str, ckpt_keys: set[str]) -> dict[str, Source]:
    """Runtime parameter name -> its source in the checkpoint, for the whole model."""
    out = {"tok_embeddings.weight": Source("model.embed_tokens.weight"), "norm.weight": Source("model.norm.weight")}
    head = "model.embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"
    out["output.weight"] = Source(head)
    for i in range(spec.num_layers):
        out.update(_block_sources(spec, i, FAMILIES[model_type] == "fused", ckpt_keys))
    return out


def _compare_specs(theirs: ModelSpec, ours: ModelSpec, where: str) -> None:
    a, b = theirs.model_dump(exclude=NOT_COMPARED), ours.model_dump(exclude=NOT_COMPARED)
    diff = [f"{k} {a[k]} (plan: {b[k]})" for k in a if a[k] != b[k]]
    if diff:
        raise ValueError(f"--init-weights {where}: config.json is another model than the plan's: {'; '.join(diff[:3])}")


def _check_family(cfg: dict, where: str) -> str:
    model_type = str(cfg.get("model_type"))
    if model_type not in FAMILIES:
        raise ValueError(
            f"--init-weights {where}: model_type {model_type!r} is not one the runtime loads "
            f"({', '.join(sorted(FAMILIES))})"
        )
    act = cfg.get("hidden_act", "silu")
    if act not in GATED_SILU:
        raise ValueError(f"--init-weights {where}: hidden_act {act!r}; the runtime's gated FFN is SiLU (swiglu)")
    rope = cfg.get("rope_parameters") or {}
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"--init-weights {where}: partial_rotary_factor {partial}; the runtime rotates every dim")
    return model_type


def check_checkpoint(directory: str | Path, spec: ModelSpec) -> Checkpoint:
    """The checkpoint, after checking it holds exactly the plan's model (headers only); ValueError
    with one line otherwise."""
    ckpt, where = Checkpoint(directory), str(directory)
    model_type = _check_family(ckpt.config, where)
    try:
        theirs = from_hf_config(ckpt.config, origin=f"{where}/config.json")
    except SpecError as exc:
        raise ValueError(str(exc)) from None
    _compare_specs(theirs, spec, where)
    keys = set(ckpt.files)
    sources = parameter_sources(spec, model_type, keys)
    model = build_model(spec, device="meta")
    for name, p in model.named_parameters():
        src = sources[name]
        if src.key not in keys:
            raise ValueError(f"--init-weights {where}: missing tensor {src.key} (for the runtime's {name})")
        got = src.shape(ckpt.stored_shape(src.key))
        if got != list(p.shape):
            raise ValueError(
                f"--init-weights {where}: {src.key} gives {name} shape {got}, the model needs {list(p.shape)}"
            )
    used = {s.key for s in sources.values()}
    extra = sorted(k for k in keys - used if not k.endswith(IGNORED_SUFFIXES))
    if extra:
        raise ValueError(
            f"--init-weights {where}: {len(extra)} tensors the runtime's model has no place for, e.g. {extra[0]}"
        )
    return ckpt


@torch.no_grad()
def load_part(part: Transformer, ckpt: Checkpoint) -> None:
    """Fill every parameter of ``part`` (a model or a pipeline chunk: runtime names, not yet
    sharded) from the checkpoint, and recompute its RoPE table."""
    spec = part.spec
    sources = parameter_sources(spec, str(ckpt.config["model_type"]), set(ckpt.files))
    for name, p in part.named_parameters():
        p.copy_(ckpt.read(sources[name]))
    rope = getattr(part, "rope", None)
    if rope is not None:
        rope.copy_(rope_table(spec, torch.float32).to(rope.dtype))
