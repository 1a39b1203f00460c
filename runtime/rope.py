"""RoPE inverse frequencies from a spec: its base ``rope_theta`` and its ``rope_scaling``.

Base: RoFormer (Su et al. 2021) eq. 15, ``theta_i = base^(-2i/d)``, base 10,000 when the spec
leaves ``rope_theta`` null. Scaling, as Hugging Face's ``modeling_rope_utils`` computes it (so a
checkpoint loaded with ``--init-weights`` gives transformers' logits):

- ``linear`` (position interpolation, Chen et al. 2023): every frequency divided by ``factor``;
- ``llama3`` (Llama 3.1's ``apply_scaling``): wavelengths longer than
  ``original_max_seq_len / low_freq_factor`` divided by ``factor``, shorter than
  ``original_max_seq_len / high_freq_factor`` kept, those between interpolated smoothly.

``dynamic``, ``yarn`` and ``longrope`` change the table with the sequence length or scale the
attention logits; the runtime refuses them (ValueError) rather than train a different model.
"""

from __future__ import annotations

import math

import torch

from models.spec import ModelSpec, RopeScalingSpec

DEFAULT_ROPE_THETA = 10_000.0  # RoFormer eq. 15; transformers' default rope_theta too
SUPPORTED_SCALING = ("linear", "llama3")


def inv_frequencies(spec: ModelSpec, device=None) -> torch.Tensor:
    """``[d / 2]`` fp32 inverse frequencies of the spec's RoPE (d = per-head dims)."""
    d = spec.dim_per_head
    base = spec.rope_theta or DEFAULT_ROPE_THETA
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    s = spec.rope_scaling
    if s is None:
        return inv_freq
    if s.type not in SUPPORTED_SCALING:
        raise ValueError(
            f"model {spec.name!r}: the runtime implements rope_scaling {' and '.join(SUPPORTED_SCALING)}, "
            f"not {s.type!r}"
        )
    factor = _need(s, "factor", spec.name)
    if s.type == "linear":
        return inv_freq / factor
    return _llama3(inv_freq, s, spec.name)


def _need(s: RopeScalingSpec, field: str, name: str) -> float:
    value = getattr(s, field)
    if value is None:
        raise ValueError(f"model {name!r}: rope_scaling {s.type} needs {field}")
    return float(value)


def _llama3(inv_freq: torch.Tensor, s: RopeScalingSpec, name: str) -> torch.Tensor:
    factor, low, high = (_need(s, f, name) for f in ("factor", "low_freq_factor", "high_freq_factor"))
    old_len = _need(s, "original_max_seq_len", name)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)
