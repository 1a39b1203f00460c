"""Wall time per phase of a training step, timed around the phases on this rank.

- **forward**: time inside each chunk's ``forward`` (module hooks on the chunk), every
  micro-batch summed; it includes the collectives forward runs (TP, FSDP's all-gathers);
- **recompute**: time inside a block's ``forward`` while no chunk forward runs, i.e. activation
  checkpointing replaying the block during backward (hooks on each block);
- **backward**: the forward-backward call's wall time minus the two above: backward kernels,
  their collectives, the loss and, under pipeline parallelism, the pipeline's waits (bubble and
  point-to-point transfers, which are not separated);
- **grad_sync**: the by-hand data-parallel all-reduce and the tied-embedding all-reduce after
  backward (ZeRO 0/1; FSDP reduce-scatters inside backward instead);
- **optimizer**: the optimizer step (ZeRO-1's broadcast included).

Collectives are counted per kind by :func:`runtime.profile.comm_seconds` on one profiled step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

PHASES = ("forward", "backward", "recompute", "grad_sync", "optimizer")
_INNER = "_checkpoint_wrapped_module"


class PhaseTimer:
    """Hooks on this rank's chunks and blocks; ``end_step`` closes a step's record."""

    def __init__(self, parts: Sequence[nn.Module]):
        self.per_step: list[dict[str, float]] = []
        self._fwd = self._recompute = 0.0
        self._depth = 0  # chunk forwards in flight (nested calls never happen; kept for safety)
        self._chunk_start: list[float] = []
        self._block_start: list[float] = []
        for part in parts:
            part.register_forward_pre_hook(self._chunk_pre)
            part.register_forward_hook(self._chunk_post)
            for block in getattr(part, "layers", {}).values():
                inner = getattr(block, _INNER, block)  # the block itself under a checkpoint wrapper
                inner.register_forward_pre_hook(self._block_pre)
                inner.register_forward_hook(self._block_post)

    def _chunk_pre(self, *_) -> None:
        self._depth += 1
        self._chunk_start.append(time.perf_counter())

    def _chunk_post(self, *_) -> None:
        self._depth -= 1
        self._fwd += time.perf_counter() - self._chunk_start.pop()

    def _block_pre(self, *_) -> None:
        self._block_start.append(time.perf_counter())

    def _block_post(self, *_) -> None:
        elapsed = time.perf_counter() - self._block_start.pop()
        if self._depth == 0:  # outside every chunk forward: a checkpointed block replayed in backward
            self._recompute += elapsed

    def end_step(self, forward_backward_s: float, grad_sync_s: float, optimizer_s: float) -> None:
        fwd, rec = self._fwd, self._recompute
        self.per_step.append(
            {
                "forward": fwd,
                "backward": max(forward_backward_s - fwd - rec, 0.0),
                "recompute": rec,
                "grad_sync": grad_sync_s,
                "optimizer": optimizer_s,
            }
        )
        self._fwd = self._recompute = 0.0
