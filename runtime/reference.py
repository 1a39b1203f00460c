"""How the single-process reference walks a global batch (runtime.train.run_reference).

The whole batch as one forward and backward is the reference of every fp32 parity test: it
checks that micro-batching and the data-parallel average give the gradient of the batch mean.
Under 16-bit compute that oracle cannot reach 1e-5 for a reason that is not a bug: a weight
gradient is a sum over tokens that the backward rounds to 16 bits once per backward, so a rank
that backs up micro-batches of B/(dp·n) rows rounds each part (unit roundoff 2^-9 for bf16)
where one big batch rounds the sum once (measured: losses 1.8e-5 to 9.9e-5 apart after 5 AdamW
steps, parameters up to 3.9e-3).

:class:`Split` makes the reference do the same arithmetic instead: the rows of data-parallel
rank r (``batch.chunk(dp)[r]``, as runtime.train._RankBatches takes them) as its ``n``
micro-batches one by one, each token-mean loss scaled and backed up through the same 16-bit
casts (runtime.precision), the 16-bit gradients accumulated in fp32 per rank, then the ranks'
sums added and divided by dp (runtime.step._all_reduce_mean). FSDP2 reduces each micro-batch
instead and adds in another order; a sum of a few gradients that are 16-bit values is mostly
exact in fp32 (8-bit significands in a 24-bit one), so the order rarely matters (measured: equal
with 2 ranks, 1e-7 with 4). Still one process with the whole unsharded model and no
torch.distributed: it shares no code with the parallel step, so a missed all-reduce or a wrong
gradient scale still shows (tests/test_runtime_optim.py), as any other difference in what is
computed does. Under tp the model computes as the tp ranks do (``Split.tp``:
runtime.reference_tp mirrors the 16-bit partial sums of the split matmuls). cp and ep ranks
compute together (keys exchanged, experts fed by several ranks at once), so :func:`walk` hands
their plans to runtime.reference_ranks, which runs every rank in lock step. Figures:
docs/runtime.md ("Parity").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from runtime import reference_ranks
from runtime.model import Transformer, next_token_loss
from runtime.plan_io import model_spec
from runtime.precision import CastCache, Precision, cast_buffers, cast_parameters, fsdp_shards
from runtime.reference_tp import TpLayout


@dataclass(frozen=True)
class Split:
    """``groups`` consecutive row blocks of the batch (the dp ranks), each run as ``micro``
    micro-batches; ``grads_divided``: each micro-batch backs up its mean loss and the
    accumulated gradients are divided by ``micro`` (the pipeline schedules' ``scale_grads``)
    rather than each loss divided by ``micro`` first (runtime.step's loop). The two are the same
    in fp32 but not once the divided loss's gradient is rounded to 16 bits, unless ``micro`` is a
    power of two."""

    groups: int = 1
    micro: int = 1
    grads_divided: bool = False
    head_copy: bool = False  # a tied embedding's head casts its own 16-bit copy (see reference_casts)
    reduce: torch.dtype = torch.float32  # of the sum over groups (a 16-bit by-hand all-reduce)
    lockstep: bool = False  # cp or ep: every rank at once (runtime.reference_ranks; the fields above then unused)
    tp: TpLayout | None = None  # tp's 16-bit partial sums, mirrored in the model (runtime.reference_tp)

    @classmethod
    def of(cls, plan: dict, reduce: torch.dtype = torch.float32) -> Split:
        """The plan's data-parallel rows and micro-batches (runtime.step.ParallelModel); under
        pp > 1 the last stage holds its own copy of a tied embedding (runtime.pipeline); the
        ranks' gradients are summed in ``reduce`` (the precision's reduce dtype) where the
        by-hand all-reduce sums them (ZeRO 0/1 over dp·cp > 1 ranks: runtime.step)."""
        p = plan["parallelism"]
        pp, by_hand = p["pp"] > 1, p["dp"] * p["cp"] > 1 and not fsdp_shards(plan)
        tied = pp and model_spec(plan).tie_embeddings
        by_rank = reference_ranks.supported(plan, reduce)  # FSDP's reduce-scatter is in ``reduce`` too
        reduce = reduce if by_hand else torch.float32
        return cls(p["dp"], p["num_micro_batches"], pp, tied, reduce, by_rank, TpLayout.of(plan, fsdp_shards(plan)))


WHOLE = Split()  # one forward and backward of the whole batch


def reference_casts(model: nn.Module, dtype: torch.dtype, split: Split) -> list[CastCache]:
    """Give ``model`` the 16-bit casts of runtime.precision; the caches to clear after each step.

    One cast per parameter, as FSDP2 and the casts of a run without pipeline stages hold them:
    the gradients of a tied embedding's two uses meet in 16 bits on that one copy. Under pp > 1
    (``split.head_copy``) the first and last stages each cast their own fp32 copy and the two
    gradients meet in fp32 (runtime.step.sync_gradients), so the head gets its own cache here."""
    cast_buffers(model, dtype)
    caches = [CastCache(dtype)]
    head = getattr(model, "output", None) if split.head_copy else None
    cast_parameters(model, caches[0], skip=head)
    if head is not None:
        caches.append(CastCache(dtype))
        cast_parameters(head, caches[1])
    return caches


def batch_gradients(model: nn.Module, batch: torch.Tensor, split: Split, loss_scale: float = 1.0) -> float:
    """Fill ``.grad`` of ``model``'s parameters with the gradient of the batch mean loss (times
    ``loss_scale``), walking ``batch [B, s + 1]`` as ``split`` says; returns the mean loss, the
    mean over groups of each group's mean over its micro-batches (runtime.step.global_loss)."""
    params = list(model.parameters())
    per_group: list[list[torch.Tensor | None]] = []
    total = torch.zeros(())
    for rows in batch.chunk(split.groups):
        local = torch.zeros(())
        for mb in rows.chunk(split.micro):
            loss = next_token_loss(model(mb[:, :-1]), mb[:, 1:])
            if split.grads_divided:
                (loss * loss_scale).backward()  # runtime.step.ParallelModel.scaled_loss
            else:
                (loss * loss_scale / split.micro).backward()  # runtime.step.ParallelModel.forward_backward
            local += loss.detach()
        total += local / split.micro
        per_group.append([_take_grad(p, split) for p in params])  # what this group's rank holds
    for p, grads in zip(params, zip(*per_group)):
        p.grad = _average(list(grads), split)
    return float(total / split.groups)


def _take_grad(p: torch.Tensor, split: Split) -> torch.Tensor | None:
    g, p.grad = p.grad, None
    if g is not None and split.grads_divided:
        g /= split.micro
    return g


def _average(grads: list[torch.Tensor | None], split: Split) -> torch.Tensor | None:
    """The groups' gradients summed in ``split.reduce``, divided by their number, in fp32 (the
    by-hand all-reduce: runtime.step._all_reduce_mean; a missing gradient counts as zeros)."""
    present = [g for g in grads if g is not None]
    if not present:
        return None
    total = torch.zeros_like(present[0], dtype=split.reduce)
    for g in present:
        total += g.to(split.reduce)
    total /= split.groups
    return total.to(present[0].dtype)


def walk(
    model: Transformer, plan: dict, split: Split, precision: Precision
) -> tuple[list[CastCache], Callable[[torch.Tensor, float], float]]:
    """Prepare ``model`` to walk batches as ``split`` says: the 16-bit casts to clear after each
    step, and the function filling the gradients of a batch (``batch, loss_scale -> loss``).
    tp's 16-bit partial sums (runtime.reference_tp) go in first: the casts wrap those forwards."""
    if split.tp is not None:
        split.tp.mirror(model)
    if split.lockstep:
        state = reference_ranks.install(model, reference_ranks.Ranks.of(plan), precision.compute)
        return state.all_caches(), lambda batch, scale: reference_ranks.lockstep_gradients(model, state, batch, scale)
    caches = reference_casts(model, precision.compute, split) if precision.mixed else []
    return caches, lambda batch, scale: batch_gradients(model, batch, split, scale)
