"""Model-state bytes one rank holds, measured from the tensors themselves, by the planner's categories.

The planner (planner/cost/memory.py ``model_state_bytes``, the plan's
``predicted.stages[i].memory``) counts per rank: weights, gradients, optimizer states. Measured
here, per rank, on any device:

* ``weights_bytes``: the parameters at rest (fp32 masters; FSDP's shards) plus the 16-bit
  compute copies held from forward to backward (``compute_copy_bytes``): those a chunk still
  holds when its forward returns (FSDP2 under ZeRO-2 keeps every gathered weight), or the
  step's :class:`runtime.precision.CastCache` without FSDP;
* ``gradients_bytes``: every ``.grad`` once the step's gradients are complete (reduced);
* ``optimizer_bytes``: the optimizer's per-element states after a step (AdamW's exp_avg and
  exp_avg_sq; ZeRO-1: this rank's share). AdamW's one-element ``step`` counter per tensor is
  not a per-parameter state and is left out, as the planner leaves it out.

Bytes are ``numel x element size`` of each local tensor (a DTensor's shard), so FSDP's padding of
a shard to a whole number of rows (none on the debug models) is not counted, as the planner
does not count it; tensors are counted once (a tied embedding is one parameter with pp = 1).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.optim import local_shard, torch_optimizers


def tensor_bytes(t: torch.Tensor) -> int:
    local = local_shard(t)
    return local.numel() * local.element_size()


class ModelStateMeter:
    """Counts a rank's model states (module doc): construct after apply_plan, then call
    :meth:`gradients` before the optimizer step and :meth:`optimizer` after it."""

    def __init__(self, parts: list[nn.Module], params: list[nn.Parameter], cast_cache=None):
        self._at_rest, self._cast_cache, self._cast_bytes = {id(p) for p in params}, cast_cache, 0
        self.params_bytes = sum(tensor_bytes(p) for p in params)
        self._copies: dict[int, int] = {}  # chunk -> compute-copy bytes after its forward (max)
        self.gradients_bytes = 0
        self.optimizer_bytes = 0
        for i, part in enumerate(parts):
            part.register_forward_hook(self._after_forward(i))

    def _after_forward(self, index: int):
        def hook(module: nn.Module, args, output) -> None:
            held = sum(tensor_bytes(p) for p in module.parameters() if id(p) not in self._at_rest)
            self._copies[index] = max(self._copies.get(index, 0), held)

        return hook

    def gradients(self, params: list[nn.Parameter]) -> None:
        """Call once the gradients are complete (the cast copies are still held then)."""
        if self._cast_cache is not None:
            self._cast_bytes = max(self._cast_bytes, self._cast_cache.nbytes())
        held = sum(tensor_bytes(p.grad) for p in params if p.grad is not None)
        self.gradients_bytes = max(self.gradients_bytes, held)

    def optimizer(self, optimizer) -> None:
        held = 0
        for opt in torch_optimizers(optimizer):
            inner = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer: the local partition's optimizer
            for param, state in inner.state.items():
                for value in state.values():
                    if isinstance(value, torch.Tensor) and local_shard(value).numel() == local_shard(param).numel():
                        held += tensor_bytes(value)
        self.optimizer_bytes = max(self.optimizer_bytes, held)

    def record(self) -> dict[str, int]:
        copies = sum(self._copies.values()) + self._cast_bytes
        return {
            "weights_bytes": self.params_bytes + copies,
            "gradients_bytes": self.gradients_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "compute_copy_bytes": copies,
        }
