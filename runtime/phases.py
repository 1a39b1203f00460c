"""Wall time per phase of a training step, timed around the phases on this rank.

- **forward**: time inside each chunk's ``forward`` (module hooks on the chunk), every
  micro-batch summed; it includes the collectives forward runs (TP, FSDP's all-gathers);
- **backward**: the forward-backward call's wall time minus forward: backward kernels, their
  collectives, the loss, activation recompute and, under pipeline parallelism, the pipeline's
  waits (bubble and point-to-point transfers), none of them separated;
- **grad_sync**: the by-hand data-parallel all-reduce and the tied-embedding all-reduce after
  backward (ZeRO 0/1; FSDP reduce-scatters inside backward instead);
- **optimizer**: the optimizer step (ZeRO-1's broadcast included).

Recompute is counted, not timed: ``recomputed_blocks`` is how many times a block's forward
started while no chunk forward ran (activation checkpointing replaying it during backward). Its
time cannot be cut out by hooks: torch's non-reentrant checkpoint stops a replay as soon as it
has rebuilt the tensors backward needs, so the block's end-of-forward hook never fires.

Collectives are timed per kind by :func:`runtime.profile.profile_comm` on one profiled step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

PHASES = ("forward", "backward", "grad_sync", "optimizer")
_INNER = "_checkpoint_wrapped_module"


class PhaseTimer:
    """Hooks on this rank's chunks and blocks; ``end_step`` closes a step's record."""

    def __init__(self, parts: Sequence[nn.Module]):
        self.per_step: list[dict[str, float]] = []
        self._fwd, self._replays = 0.0, 0
        self._chunk_start: list[float] = []  # chunk forwards in flight
        for part in parts:
            part.register_forward_pre_hook(self._chunk_pre)
            part.register_forward_hook(self._chunk_post)
            for block in getattr(part, "layers", {}).values():
                inner = getattr(block, _INNER, block)  # the block itself under a checkpoint wrapper
                inner.register_forward_pre_hook(self._block_pre)

    def _chunk_pre(self, *_) -> None:
        self._chunk_start.append(time.perf_counter())

    def _chunk_post(self, *_) -> None:
        self._fwd += time.perf_counter() - self._chunk_start.pop()

    def _block_pre(self, *_) -> None:
        if not self._chunk_start:  # outside every chunk forward: a checkpointed block replayed in backward
            self._replays += 1

    def end_step(self, forward_backward_s: float, grad_sync_s: float, optimizer_s: float) -> None:
        self.per_step.append(
            {
                "forward": self._fwd,
                "backward": max(forward_backward_s - self._fwd, 0.0),
                "grad_sync": grad_sync_s,
                "optimizer": optimizer_s,
                "recomputed_blocks": self._replays,
            }
        )
        self._fwd, self._replays = 0.0, 0
