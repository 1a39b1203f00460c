"""Context parallelism: each sequence is split over the ``cp`` ranks of a context group, which
exchange keys and values so every query still attends over the whole sequence.

Load-balanced causal chunking (Megatron-LM's context parallel, ``get_batch_on_this_cp_rank``;
Liu et al. 2023, Ring Attention, for the exchange of K/V blocks): the sequence of S tokens is cut
into 2·cp chunks of S/(2·cp) and cp rank i holds chunks i and 2·cp−1−i. Under a causal mask the
early chunks see few keys and the late ones many; pairing chunk i with its mirror gives every rank
the same attention work. Inputs, targets and positions (RoPE angles or learned positions) are
taken at the rank's token positions (:meth:`ContextShard.positions`).

K/V exchange: an all-gather over the cp group with ``torch.distributed._functional_collectives``
in an autograd function whose backward is the reduce-scatter of the K/V gradients, summed in
fp32 (:class:`_GatherFp32Grad`; the deprecated ``torch.distributed.nn.functional.all_gather``
gives wrong gradients on gloo, see the shared notes). The fp32 gradient buffer of the gathered
K/V is transient (backward only) and not in the planner's memory model. The mask is built from
positions, so causal, bidirectional and sliding-window attention all hold: query at position p sees key at position q when q <= p (causal) and p − q < window
(sliding window; |p − q| < window when bidirectional).

Gradients: cp ranks see different tokens of the same sequences, so for the weights they are
data-parallel ranks: the dense gradient group is dp·cp (runtime.parallelize). Every cp rank holds
the same number of tokens (S/cp per sequence), so the mean of the ranks' token-mean losses is the
token mean of the global batch.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F


def chunk_positions(local_len: int, cp: int, rank: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Positions in the full sequence of cp rank ``rank``'s ``local_len`` tokens: chunks
    ``rank`` and ``2·cp − 1 − rank`` of the sequence's 2·cp chunks of ``local_len / 2`` tokens."""
    c = local_len // 2
    first = torch.arange(rank * c, (rank + 1) * c, device=device)
    mirror = torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c, device=device)
    return torch.cat((first, mirror))


def shard_sequence(t: torch.Tensor, cp: int, rank: int) -> torch.Tensor:
    """This cp rank's columns of ``t [b, S]`` (inputs or targets), in position order of its chunks."""
    if cp == 1:
        return t
    if t.shape[1] % (2 * cp):
        raise ValueError(f"context parallel: seq_len ({t.shape[1]}) % 2*cp ({2 * cp}) = {t.shape[1] % (2 * cp)}")
    return t[:, chunk_positions(t.shape[1] // cp, cp, rank, t.device)]


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor | None:
    """Boolean ``[s_q, s_k]`` mask (True = attend) from the tokens' positions; None = attend to all."""
    dist = q_pos[:, None] - k_pos[None, :]
    if window is None:
        return dist >= 0 if causal else None
    return (dist < window) & ((dist >= 0) if causal else (dist > -window))


class ContextShard:
    """This rank's place in its context group; set on every ``Attention`` (and the model, for
    learned positions) by :func:`apply_cp`."""

    def __init__(self, group, rank: int, size: int):
        self.group, self.rank, self.size = group, rank, size

    def positions(self, local_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        return chunk_positions(local_len, self.size, self.rank, device)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | None, gqa: bool
    ) -> torch.Tensor:
        """Attention of the local queries ``[b, heads, s, d]`` over the K/V of every cp rank."""
        s = q.shape[2]
        k_all, v_all = self._gather_sequence(k), self._gather_sequence(v)
        k_pos = torch.cat([chunk_positions(s, self.size, r, q.device) for r in range(self.size)])
        mask = attention_mask(self.positions(s, q.device), k_pos, causal, window)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=gqa)

    def whole_sequences(self, x: torch.Tensor) -> torch.Tensor:
        """``x [b, s, ...]`` of this rank's tokens -> ``[b, cp·s, ...]`` of the whole sequences, in
        position order (no gradient: for routing decisions such as expert capacity)."""
        s = x.shape[1]
        gathered = funcol.all_gather_single(x.transpose(0, 1).contiguous(), 0, self.group)
        order = torch.cat([chunk_positions(s, self.size, r, x.device) for r in range(self.size)])
        full = torch.empty_like(gathered)
        full[order] = gathered
        return full.transpose(0, 1)

    def _gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``x [b, heads, s, d]`` of every cp rank, concatenated along the sequence in rank order
        (rank r's two chunks at [r·s, (r+1)·s)). The collective gathers along dim 0 only, so the
        sequence is moved there and back."""
        gathered = _GatherFp32Grad.apply(x.permute(2, 0, 1, 3).contiguous(), self.group)
        return gathered.permute(1, 2, 0, 3)


class _GatherFp32Grad(torch.autograd.Function):
    """All-gather along dim 0 of the cp group; backward: the reduce-scatter of the ranks' 16-bit
    partial gradients summed in fp32, rounded to the input's dtype once. ring-flash-attention
    accumulates dK/dV in fp32 the same way (zhuzilin/ring-flash-attention,
    ``ring_flash_attn_backward``: ``dk = block_dk_buffer.to(torch.float32)``, cast back at the
    end). Summed in bf16, cp > 2 partials round after each addition, in an order gloo's
    reduce-scatter chooses (measured: cp 4 off the reference by 5.7e-5 in loss after 5 steps)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.dtype = group, x.dtype
        return funcol.wait_tensor(funcol.all_gather_single(x, 0, group))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        summed = funcol.reduce_scatter_single(grad.contiguous().float(), "sum", 0, ctx.group)
        return funcol.wait_tensor(summed).to(ctx.dtype), None


def apply_cp(part: torch.nn.Module, shard: ContextShard) -> None:
    """Route a (stage) model's attention through ``shard``, and its learned positions."""
    for module in part.modules():
        if hasattr(module, "cp"):  # runtime.model's Attention and Transformer declare the slot
            cast(Any, module).cp = shard  # the slot's declared type is the shard
