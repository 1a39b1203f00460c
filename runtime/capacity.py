"""Expert capacity: with ``moe.capacity_factor`` set, each expert takes at most
``C = ceil(capacity_factor · s · top_k / num_experts)`` token copies per sequence of s tokens
(Switch Transformer, Fedus et al. 2021, §2.2 eq. 3 with top_k copies per token as in GShard,
Lepikhin et al. 2020, §2.2); the copies beyond it are dropped: they add nothing to the layer's
output (the residual connection carries the token on), and no gradient flows through them.

Which copies are kept (GShard's Algorithm 1, ``Top2Gating``: second choices queue after every
first choice): copies are queued by slot, then by position — every token's first choice in
sequence order, then every token's second choice, and so on — and each expert keeps the first C
of its queue. The group is one sequence (GShard groups the tokens of a device; a sequence makes
the rule independent of how the batch is split over dp ranks, micro-batches or cp ranks, so the
single-process reference applies the same rule). Under context parallelism a rank holds two
chunks of each sequence: the routing choices of the whole sequence are gathered first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def expert_capacity(seq_len: int, top_k: int, num_experts: int, factor: float) -> int:
    """Token copies one expert takes per sequence."""
    return math.ceil(factor * seq_len * top_k / num_experts)


def capacity_keep(top_idx: torch.Tensor, num_experts: int, factor: float) -> torch.Tensor:
    """Boolean ``[b, s, k]``: which routed copies of ``top_idx [b, s, k]`` (whole sequences,
    in position order) fit their expert's capacity."""
    b, s, k = top_idx.shape
    cap = expert_capacity(s, k, num_experts, factor)
    queue = F.one_hot(top_idx.transpose(1, 2).reshape(b, k * s), num_experts)  # slot-major
    place = ((queue.cumsum(1) - 1) * queue).sum(-1)  # each copy's place in its expert's queue
    return (place < cap).view(b, k, s).transpose(1, 2)
