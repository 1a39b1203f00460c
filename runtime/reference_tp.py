"""Tensor (and sequence) parallel arithmetic in the single-process reference: :func:`mirror_tp`.

The matched reference (runtime.reference) makes 16-bit parity exact for dp, ZeRO and pipeline
schedules by walking the batch as the plan's ranks do. Tensor parallelism changes the arithmetic
inside the model instead: a tp rank computes a slice of each split matmul in 16 bits, rounds it,
and the collectives add the rounded slices. :func:`mirror_tp` gives the reference's unsharded
model forwards that compute the same slices and add them in the same dtype and grouping, so a
bf16 tp run is compared with the same roundings rather than with one big matmul (measured before:
tp 2 + SP 9.9e-5 apart in loss after 5 AdamW steps, docs/runtime.md "Parity").

What a tp rank computes, read from torch 2.13's ``torch/distributed/tensor/parallel/style.py``,
``torch/distributed/tensor/placement_types.py`` and the DTensor sharding strategies (ops in
``torch/distributed/tensor/_ops``), and checked against the gradients of real gloo runs:

* column-parallel linears (wq/wk/wv, w1/w3, the head; ``ColwiseParallel``, weight ``Shard(0)``):
  each rank computes its rows of the output; forward values are the whole matmul's. The input
  gradient is a ``Partial`` sum of the ranks' ``dy_r @ W_r`` (each rounded to 16 bits) added on
  the wire in 16 bits. Without SP each linear wraps its input with ``DTensor.from_local``, whose
  backward all-reduces that linear's input gradient alone, and autograd then adds the linears'
  sums; under SP the sublayer's input is one all-gathered ``Replicate`` DTensor (SP's
  ``PrepareModuleInput``), so each rank first adds its linears' partials locally, and the
  all-gather's backward reduce-scatters the per-rank sums;
* row-parallel linears (wo, w2; ``RowwiseParallel``, weight ``Shard(1)``, bias ``Replicate``):
  each rank multiplies its columns; the mm output is ``Partial``, so addmm's strategy turns the
  replicated bias ``Partial`` too (``Partial._partition_value``: bias / tp on every rank) and each
  rank rounds ``x_r @ W_r^T + bias / tp``; the all-reduce (reduce-scatter under SP) adds the
  ranks' 16-bit results. The backward is elementwise the whole matmul's;
* sequence-parallel norms (``SequenceParallel``: replicated weights on a sequence shard): a
  weight's (and bias's) gradient is a ``Partial`` of per-shard sums, each rounded to 16 bits.
  Without FSDP it passes the cast's backward as ``Partial`` and accumulates over the micro-batches
  in the fp32 ``.grad``; runtime.step's ``_match_grad_placements`` all-reduces it in fp32 after
  the last one, so the shards' 16-bit sums meet in fp32 (here: one cast of the fp32 master per
  shard). FSDP2 redistributes the unsharded gradient to ``Replicate`` before its reduce-scatter
  (``FSDPParam._get_grad_inner_tensor``): in runtime.step's loop after every micro-batch, in 16
  bits (here: the shards share one cast and their gradients are added on it); under a pipeline
  schedule only after the last, on the fp32 accumulation (:meth:`TpLayout.of`);
* the vocabulary-parallel embedding (``RowwiseParallel`` on ``nn.Embedding``) adds one rank's row
  to zeros, and the head's logits are gathered: exact, left as they are.

* a sum over more than two ranks rounds in gloo's order, measured: :func:`ring_sum`.

Kernels reduce in an order that can depend on the thread count (the layer-norm weight gradient
of a bf16 shard differed in 44 of 64 elements between 1 thread and the default), so the
reference runs on one thread as the ranks do (``torch.set_num_threads(1)`` in both).

This is a re-derivation, not a reuse: no torch.distributed, no DTensor, nothing of runtime.tp,
runtime.step or runtime.parallelize. The forwards read ``self.weight`` / ``self.bias`` at call
time, so the 16-bit casts of runtime.precision (applied after: their wrapper swaps the copies in
for the call) and ``torch.func.functional_call`` reach them. A missing all-reduce or a wrong scale
in the runtime still fails the parity check (tests/test_reference_tp.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.model import Attention, FeedForward, MoE, Norm, Transformer

MAX_RANKS_HELD = 64  # inputs a RankInputs remembers (runtime.reference_ranks: one per rank)


@dataclass(frozen=True)
class TpLayout:
    """The plan's tensor-parallel degree, whether it runs SP, and whether SP norms' gradient
    partials meet in the compute dtype (:func:`mirror_tp`)."""

    tp: int
    sequence_parallel: bool
    norm_partials_16bit: bool

    @classmethod
    def of(cls, plan: dict, fsdp: bool) -> TpLayout | None:
        """None where the plan has no tensor parallelism (nothing to mirror); ``fsdp``:
        runtime.precision.fsdp_shards(plan). FSDP2 redistributes a ``Partial`` gradient when it
        reduce-scatters: after every micro-batch in runtime.step's loop, in 16 bits; under a
        pipeline schedule, which skips gradient sync until the last backward
        (``PipelineStage.backward_maybe_with_nosync``), the micro-batches' partials are first
        accumulated in fp32 (``FSDPParam.to_accumulated_grad_if_needed``)."""
        p = plan["parallelism"]
        each_micro_batch = p["pp"] == 1 or p["num_micro_batches"] == 1
        return cls(p["tp"], p["sequence_parallel"], fsdp and each_micro_batch) if p["tp"] > 1 else None

    def mirror(self, model: Transformer) -> None:
        mirror_tp(model, self.tp, self.sequence_parallel, self.norm_partials_16bit)


def ring_sum(parts: list[torch.Tensor], dim: int | None) -> torch.Tensor:
    """The sum of the tp ranks' ``parts`` as gloo's ring adds them: chunk c of the result (the
    flattened tensor cut in tp equal chunks for an all-reduce, ``dim=None``; rank c's slice along
    ``dim`` for a reduce-scatter) is the left fold over ranks c-1, c-2, ..., c (mod tp), each add
    rounded in the parts' dtype. Measured on gloo (torch 2.13, 2-4 ranks, bf16, 2,048 to 262,144
    elements; tests/test_reference_tp.py): every element equal to this fold, where another order
    differs in about a third of them. With two ranks any order is the same sum. A size not
    divisible by tp is cut as ``torch.chunk`` cuts it, which gloo's split was not checked against."""
    tp = len(parts)
    shape = parts[0].shape
    chunks = [p.reshape(-1).chunk(tp) if dim is None else p.chunk(tp, dim=dim) for p in parts]
    out = []
    for c in range(tp):
        acc = chunks[(c - 1) % tp][c]
        for k in range(2, tp + 1):
            acc = acc + chunks[(c - k) % tp][c]
        out.append(acc)
    return torch.cat(out, dim=0 if dim is None else dim).reshape(shape)


class _Fanout(torch.autograd.Function):
    """``x`` as one view per tp rank; backward adds the views' gradients as the collective does
    (:func:`ring_sum`): autograd first adds what meets on one view (a rank's local sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: int, dim: int | None):
        ctx.dim = dim
        return tuple(x.view_as(x) for _ in range(tp))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        return ring_sum(list(grads), ctx.dim), None, None


class RankInputs:
    """One view of a sublayer's input per tp rank, shared by that rank's column-parallel linears
    (SP: the all-gathered input), their gradients reduce-scattered along the sequence."""

    def __init__(self, tp: int):
        self.tp = tp
        # The inputs seen last, with their views: one per dp·cp rank when runtime.reference_ranks
        # runs the ranks in lock step (each linear is called once per rank in turn).
        self._held: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for held, views in self._held:
            if held is x:
                return views
        views = _Fanout.apply(x, self.tp, 1)
        self._held = [*self._held[-(MAX_RANKS_HELD - 1) :], (x, views)]
        return views


def column_forward(linear: nn.Linear, tp: int, shared: RankInputs | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``linear`` split over its output rows: rank r computes rows ``chunk(tp)[r]``. ``shared``:
    the sublayer's per-rank input views (SP); None: this linear's own views, so its ranks' input
    gradients are all-reduced before autograd adds other linears' (``from_local``'s backward)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        inputs = shared.views(x) if shared is not None else _Fanout.apply(x, tp, None)
        weights = linear.weight.chunk(tp, dim=0)
        biases = linear.bias.chunk(tp, dim=0) if linear.bias is not None else [None] * tp
        return torch.cat([F.linear(inputs[r], weights[r], biases[r]) for r in range(tp)], dim=-1)

    return forward


def row_forward(linear: nn.Linear, tp: int, dim: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``linear`` split over its input columns: rank r rounds ``x_r @ W_r^T + bias / tp`` (the
    bias made ``Partial``), then the ranks' 16-bit results are added: all-reduced (``dim`` None)
    or reduce-scattered along ``dim`` (SP). Slices made contiguous as the ranks' shards are."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        xs, ws = x.chunk(tp, dim=-1), linear.weight.chunk(tp, dim=1)
        bias = linear.bias / tp if linear.bias is not None else None
        return ring_sum([F.linear(xs[r].contiguous(), ws[r].contiguous(), bias) for r in range(tp)], dim)

    return forward


def sequence_norm_forward(norm: Norm, tp: int, own_casts: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``norm`` on ``tp`` sequence shards (dim 1). ``own_casts``: each shard casts the (fp32)
    parameters itself, so the shards' 16-bit gradients meet in fp32 on the master; otherwise the
    shards share the module's cast and their gradients are all-reduced on it in its dtype."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        shape, shards = (x.shape[-1],), x.chunk(tp, dim=1)
        params = [p for p in (norm.weight, norm.bias) if p is not None]
        if own_casts:
            per_shard = [[p.to(x.dtype) for p in params] for _ in range(tp)]
        else:
            fanned = [_Fanout.apply(p, tp, None) for p in params]
            per_shard = [[views[r] for views in fanned] for r in range(tp)]
        out = []
        for shard, (w, *b) in zip(shards, per_shard):
            if norm.kind == "layernorm":
                out.append(F.layer_norm(shard, shape, w, b[0] if b else None, norm.eps))
            else:
                out.append(F.rms_norm(shard, shape, w, norm.eps))
        return torch.cat(out, dim=1)

    return forward


def _set_forward(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """An instance ``forward`` (runtime.precision's cast wrapper, applied after, wraps it)."""
    module.forward = forward


def _mirror_ffn(ffn: FeedForward, tp: int, shared: RankInputs | None, dim: int | None) -> None:
    for linear in (ffn.w1, ffn.w3):
        if linear is not None:
            _set_forward(linear, column_forward(linear, tp, shared))
    _set_forward(ffn.w2, row_forward(ffn.w2, tp, dim))


def _mirror_norm(norm: nn.Module, tp: int, partials_16bit: bool) -> None:
    assert isinstance(norm, Norm)
    _set_forward(norm, sequence_norm_forward(norm, tp, own_casts=not partials_16bit))
    # One cast per shard, not runtime.precision's shared copy (cast_parameters then leaves it).
    flagged: Any = norm  # a plain attribute, not a parameter or submodule
    flagged.casts_own_parameters = not partials_16bit


def mirror_tp(model: Transformer, tp: int, sp: bool, norm_partials_16bit: bool = False) -> None:
    """Give ``model`` (the reference's whole model, before runtime.reference.reference_casts) the
    arithmetic of ``tp`` tensor-parallel ranks (runtime.tp's plan), with sequence parallelism when
    ``sp``; ``norm_partials_16bit``: SP norms' gradient partials meet in the compute dtype
    (FSDP2 syncing every micro-batch: :meth:`TpLayout.of`), else in fp32."""
    if tp == 1:
        return
    seq = 1 if sp else None  # the residual stream's split: SP's sequence shards, or none
    for block in model.layers.values():
        attention, ffn = block.get_submodule("attention"), block.get_submodule("feed_forward")
        assert isinstance(attention, Attention)
        shared = RankInputs(tp) if sp else None
        for linear in (attention.wq, attention.wk, attention.wv):
            _set_forward(linear, column_forward(linear, tp, shared))
        _set_forward(attention.wo, row_forward(attention.wo, tp, seq))
        if isinstance(ffn, MoE):
            # Experts take local tensors (use_local_input): each linear all-reduces its own input
            # gradient, SP or not; their row-parallel outputs are all-reduced to Replicate.
            for expert in [*ffn.experts.values(), ffn.shared_experts]:
                if isinstance(expert, FeedForward):
                    _mirror_ffn(expert, tp, None, None)
        else:
            assert isinstance(ffn, FeedForward)
            _mirror_ffn(ffn, tp, RankInputs(tp) if sp else None, seq)
        if sp:
            for norm in (block.get_submodule("attention_norm"), block.get_submodule("ffn_norm")):
                _mirror_norm(norm, tp, norm_partials_16bit)
    if sp and model.norm is not None:
        _mirror_norm(model.norm, tp, norm_partials_16bit)
    if model.output is not None:
        head = RankInputs(tp) if sp else None  # SP: the head's input is gathered from sequence shards
        _set_forward(model.output, column_forward(model.output, tp, head))
