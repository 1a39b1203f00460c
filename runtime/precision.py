"""Mixed precision as the planner prices it: fp32 parameters (the master copy), 16-bit compute.

Parameters, their gradients and the optimizer states are fp32 whatever the compute dtype; forward
and backward run on 16-bit copies of the parameters, every op in 16 bits as in a model built in
that dtype (FSDP2's ``MixedPrecisionPolicy`` semantics, torchtitan's ``mixed_precision_param``):

* sharded (ZeRO-2/3 with dp > 1): FSDP2's ``MixedPrecisionPolicy(param_dtype=compute,
  reduce_dtype=reduce)``: FSDP all-gathers 16-bit copies of the fp32 shards, each backward's
  16-bit gradients are cast to the reduce dtype for the reduce-scatter and accumulated into the
  fp32 sharded gradient;
* otherwise: :func:`cast_parameters`: each module holding parameters runs its forward on 16-bit
  casts of them, made at its first forward of a step and kept in a :class:`CastCache` until the
  optimizer step (FSDP's ZeRO-2 holds its gathered copies the same way). The casts are
  differentiable, so each micro-batch's 16-bit gradients reach the fp32 parameters and
  accumulate there in fp32; the by-hand all-reduce runs in the reduce dtype
  (:meth:`runtime.step.ParallelModel.sync_gradients`).

Not ``torch.autocast``, which torchtitan uses under DDP: autocast keeps the embedding, norms and
the residual stream in fp32 and saves a 16-bit copy of each weight per micro-batch, so the
numerics would depend on the ZeRO stage and a bf16 ZeRO-0 run held 2.8x the planner's activation
bytes (measured on the debug model: 553,060 B against 200,256 B; with the casts, 0.3% off).
The reference (runtime.train.run_reference) applies :func:`cast_parameters` to its model.
Buffers (RoPE's table) are held in the compute dtype, as a model built in that dtype holds them.

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


def fsdp_shards(plan: dict) -> bool:
    """Whether the plan runs FSDP2 (ZeRO-2/3 over dp·cp > 1 ranks: runtime.parallelize), whose
    policy casts the parameters; otherwise :func:`cast_parameters` does."""
    p = plan["parallelism"]
    return p["zero_stage"] >= 2 and p["dp"] * p["cp"] > 1


def cast_buffers(module: nn.Module, dtype: torch.dtype) -> None:
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_floating_point():
                sub._buffers[name] = buf.to(dtype)


class CastCache:
    """The 16-bit copies of the fp32 parameters for the current step (:func:`cast_parameters`).
    ``clear()`` after the optimizer step: the next forward casts the updated parameters."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self._copies: dict[int, torch.Tensor] = {}

    def get(self, p: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # e.g. pipeline shape inference: no graph to keep
            return p.to(self.dtype)
        copy = self._copies.get(id(p))
        if copy is None:
            copy = self._copies[id(p)] = p.to(self.dtype)
            copy._autopar_parameter_copy = True  # type: ignore[attr-defined]  # not an activation: runtime.memory
        return copy

    def clear(self) -> None:
        self._copies.clear()

    def nbytes(self) -> int:
        from torch.distributed.tensor import DTensor

        local = [c._local_tensor if isinstance(c, DTensor) else c for c in self._copies.values()]
        return sum(t.numel() * t.element_size() for t in local)


def cast_parameters(module: nn.Module, cache: CastCache, skip: nn.Module | None = None) -> None:
    """Run the forward of every submodule that holds parameters on ``cache``'s 16-bit copies of
    them (swapped in for the call, the fp32 parameters put back after): recompute in backward
    finds the same copies, and the optimizer, pipeline stages and checkpoints see the fp32
    parameters under their own names. ``skip``: a submodule left alone (to cast with another
    cache: runtime.reference), as is one that casts its parameters itself
    (``casts_own_parameters``: runtime.reference_tp's sequence-parallel norms)."""
    for sub in module.modules():
        names = [name for name, p in sub._parameters.items() if p is not None]
        if names and sub is not skip and not getattr(sub, "casts_own_parameters", False):
            _cast_forward(sub, names, cache)


def _cast_forward(sub: nn.Module, names: list[str], cache: CastCache) -> None:
    forward = sub.forward

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        masters = {name: sub._parameters[name] for name in names}
        for name, p in masters.items():
            sub._parameters[name] = cache.get(p)
        try:
            return forward(*args, **kwargs)
        finally:
            sub._parameters.update(masters)

    sub.forward = wrapped


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
