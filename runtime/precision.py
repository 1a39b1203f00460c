"""Mixed precision as the planner prices it: fp32 parameters (the master copy), 16-bit compute.

Parameters, their gradients and the optimizer states are fp32 whatever the compute dtype; the
forward and backward run in bf16/fp16 (torchtitan's ``mixed_precision_param``):

* sharded (ZeRO-2/3 with dp > 1): FSDP2's ``MixedPrecisionPolicy(param_dtype=compute,
  reduce_dtype=reduce)``: FSDP all-gathers 16-bit copies of the fp32 shards, each backward's
  16-bit gradients are cast to the reduce dtype for the reduce-scatter and accumulated into the
  fp32 sharded gradient;
* otherwise: ``torch.autocast`` around each chunk's forward (torchtitan's ``maybe_enable_amp``
  for DDP / one device): matmuls and attention run in 16 bits on 16-bit copies of the weights,
  gradients reach the fp32 parameters through the cast and accumulate there in fp32; the by-hand
  data-parallel all-reduce runs in the reduce dtype (:meth:`runtime.step.ParallelModel.sync_gradients`).

The two differ inside an op (autocast keeps the embedding, norms and residual additions in fp32;
FSDP casts every parameter), so :func:`casts_parameters` tells the single-process reference
which of the two a plan runs, and it does the same. Buffers (RoPE's table) are held in the compute
dtype either way, as a model built in that dtype holds them.

fp16 adds dynamic loss scaling (:class:`LossScaler`; Micikevicius et al. 2018, "Mixed Precision
Training", §3.2), shared by every rank so a step is skipped everywhere or nowhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from runtime.model import DTYPES
from runtime.recipe import Recipe


@dataclass(frozen=True)
class Precision:
    compute: torch.dtype  # forward/backward
    reduce: torch.dtype  # gradients on the wire

    @property
    def mixed(self) -> bool:
        return self.compute != torch.float32


FP32 = Precision(torch.float32, torch.float32)


def precision_for(plan: dict, recipe: Recipe) -> Precision:
    return Precision(DTYPES[recipe.compute_dtype(plan)], DTYPES[recipe.reduce_dtype(plan)])


def casts_parameters(plan: dict) -> bool:
    """Whether the plan runs FSDP2 (ZeRO-2/3 with dp > 1), whose policy casts parameters;
    otherwise compute is under ``torch.autocast``."""
    p = plan["parallelism"]
    return p["zero_stage"] >= 2 and p["dp"] > 1


def cast_buffers(module: nn.Module, dtype: torch.dtype) -> None:
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_floating_point():
                sub._buffers[name] = buf.to(dtype)


def autocast_forward(module: nn.Module, dtype: torch.dtype) -> None:
    """Run ``module``'s forward (and so the recompute of its checkpointed blocks, which replays the
    autocast state) under ``torch.autocast``; its backward runs outside, as autocast's docs advise.
    Wrapping the instance's forward reaches the pipeline stages too, which call the module."""
    forward = module.forward
    device_type = next(module.parameters()).device.type

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    module.forward = wrapped


def mp_policy(precision: Precision):
    """FSDP2's policy for a mixed run, None for fp32 (FSDP's default: no casts)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not precision.mixed:
        return None
    return MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=precision.reduce)


class LossScaler:
    """Dynamic loss scaling for fp16 (torch.amp.GradScaler's defaults: initial scale 2**16, x2
    after 2000 finite steps, x0.5 and skip the step on an inf/NaN gradient). Own, not GradScaler,
    because the gradients it unscales are DTensor shards, by-hand all-reduced buffers and pipeline
    stages' gradients, and the inf check must agree over every rank (one all-reduce)."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled, self.scale, self.growth_interval = enabled, init_scale if enabled else 1.0, growth_interval
        self._good_steps = 0

    def unscale(self, grads: list[torch.Tensor]) -> bool:
        """Divide the local gradient tensors by the scale; True when any rank saw inf/NaN."""
        if not self.enabled:
            return False
        found = torch.zeros((), device=grads[0].device if grads else "cpu")
        for g in grads:
            g.mul_(1.0 / self.scale)
            found = torch.maximum(found, (~torch.isfinite(g)).any().float())
        if dist.is_initialized():
            dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return bool(found)

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        if found_inf:
            self.scale, self._good_steps = self.scale * 0.5, 0
            return
        self._good_steps += 1
        if self._good_steps == self.growth_interval:
            self.scale, self._good_steps = self.scale * 2.0, 0
