"""What one rank runs each step once a plan is applied: forward/backward over its micro-batches,
gradient synchronisation, the optimizer, and gathering the result for comparison.

Gradient arithmetic, which the parity tests pin: every micro-batch loss is a token mean; a rank
averages its micro-batches (the loop below divides each loss by n; the pipeline schedule divides
the gradients by n), and data-parallel ranks average each other (FSDP's reduce-scatter averages;
under HSDP its all-reduce across the replicas averages those; otherwise
:meth:`ParallelModel.sync_gradients` does). The result is the gradient of the mean loss over the
global batch, which is what the single-process reference computes. Context-parallel ranks count
as data-parallel ranks here (they hold equal shares of the same rows: dense gradients average
over dp·cp); routed experts average over the ranks holding them and are rescaled by 1/ep
(runtime.experts).

HSDP in the gradient-accumulation loop (pp = 1), as the planner prices it: every micro-batch's
backward reduce-scatters within the shard group, and the all-reduce across replicas runs once per
step, on the last micro-batch (FSDP2's ``set_requires_all_reduce``: the earlier micro-batches'
reduce-scattered shards are summed in FSDP's partial-reduce buffer and all-reduced with the
last). Under pipeline parallelism the schedule drives FSDP itself (see docs/runtime.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from runtime.experts import is_expert_param, rescale_expert_grads
from runtime.model import next_token_loss
from runtime.optim import build_optimizer, local_shard

_WRAPPER_PREFIX = "_checkpoint_wrapped_module."


def _match_grad_placements(params: list[nn.Parameter]) -> None:
    """Give each DTensor gradient its parameter's layout. Autograd may leave another one (the
    vocabulary-parallel embedding's gradient comes back Replicate while its weight is Shard(0)),
    and the by-hand all-reduces below pair up local shards, which must then be the same slice."""
    from torch.distributed.tensor import DTensor

    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
            p.grad = g.redistribute(p.device_mesh, p.placements)


@dataclass
class ParallelModel:
    """This rank's share of a model after :func:`runtime.parallelize.apply_plan`."""

    parts: Sequence[nn.Module]  # chunks this rank runs, in model order (one unless interleaved)
    stage_indices: list[int]  # their indices in plan["stages"]
    plan: dict
    mesh: Any = None  # DeviceMesh ("pp", "dp_replicate", "dp_shard", "cp", "tp") or None for one process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    schedule: Any = None  # pipeline schedule when pp > 1
    dp_group: Any = None  # dense gradients all-reduced by hand over dp·cp (ZeRO 0/1 with dp·cp > 1)
    expert_group: Any = None  # routed experts' gradients by hand over dp·cp/ep (ZeRO 0/1, ep > 1)
    tied_group: Any = None  # first+last pp ranks holding copies of a tied embedding
    hsdp: bool = False  # FSDP2 on a 2-D (replicate, shard) mesh: all-reduce on the last micro-batch only
    ep: int = 1  # expert-parallel degree: expert gradients are rescaled by 1/ep (runtime.experts)
    reduce_dtype: torch.dtype = torch.float32  # of the by-hand dp all-reduce (runtime.precision)
    loss_scale: float = 1.0  # fp16 loss scaling (runtime.precision.LossScaler), 1 otherwise
    cast_cache: Any = None  # 16-bit copies of the parameters when not FSDP (runtime.precision.CastCache)

    @property
    def has_first(self) -> bool:
        return 0 in self.stage_indices

    @property
    def has_last(self) -> bool:
        return len(self.plan["stages"]) - 1 in self.stage_indices

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        seen: dict[int, tuple[str, nn.Parameter]] = {}
        for part in self.parts:
            for name, p in part.named_parameters():
                seen.setdefault(id(p), (name, p))
        return list(seen.values())

    def split_expert_params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(dense, routed-expert) parameters: they are reduced over different groups."""
        named = self.named_parameters()
        experts = [p for name, p in named if self.ep > 1 and is_expert_param(name)]
        ids = {id(p) for p in experts}
        return [p for _, p in named if id(p) not in ids], experts

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Run this rank's micro-batches of ``inputs [B, s]``; the mean loss on the last stage."""
        n = self.plan["parallelism"]["num_micro_batches"]
        if self.schedule is not None:
            losses: list[torch.Tensor] | None = [] if self.has_last else None
            args = (inputs,) if self.has_first else ()
            self.schedule.step(*args, target=targets if self.has_last else None, losses=losses)
            if losses is None:
                return None
            return torch.stack([loss.detach() for loss in losses]).mean() / self.loss_scale
        model, total = self.parts[0], torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(inputs.chunk(n), targets.chunk(n))):
            if self.hsdp:
                self._set_requires_all_reduce(i == n - 1)
            loss = next_token_loss(model(x), y)
            (loss * self.loss_scale / n).backward()
            total += loss.detach()
        return total / n

    def scaled_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The pipeline schedule's loss: the token mean times the fp16 loss scale."""
        return next_token_loss(logits, targets) * self.loss_scale

    def _set_requires_all_reduce(self, flag: bool) -> None:
        """HSDP: whether the next backward all-reduces across replicas (FSDP2; every FSDP module
        of each chunk: ``recurse`` reaches the blocks)."""
        from torch.distributed.fsdp import FSDPModule

        for part in self.parts:
            if isinstance(part, FSDPModule):
                part.set_requires_all_reduce(flag, recurse=True)

    def sync_gradients(self) -> None:
        """Average gradients over data parallel ranks (unless FSDP did): dense ones over dp·cp,
        routed experts over the dp·cp/ep ranks holding them, then rescaled by 1/ep
        (runtime.experts); and add the two copies of a tied embedding held by the first and last
        pipeline stages (Megatron's embedding group)."""
        _match_grad_placements(self.parameters())
        dense, experts = self.split_expert_params()
        if self.dp_group is not None:
            _all_reduce_mean(dense, self.dp_group, self.reduce_dtype)
        if self.expert_group is not None:
            _all_reduce_mean(experts, self.expert_group, self.reduce_dtype)
        if self.ep > 1:
            rescale_expert_grads(self.named_parameters(), self.ep)
        if self.tied_group is not None:
            for weight in self._tied_weights():
                assert weight.grad is not None  # each copy's stage ran a backward through it
                dist.all_reduce(local_shard(weight.grad), group=self.tied_group)

    def _tied_weights(self) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for part in self.parts:
            embedding, head = getattr(part, "tok_embeddings", None), getattr(part, "output", None)
            if embedding is not None:
                out.append(embedding.weight)
            elif head is not None:
                out.append(head.weight)
        return out

    def build_optimizer(self, recipe):
        """The recipe's optimizer (``runtime.optim``); under ZeRO-1 with dp·cp > 1 its states are
        sharded: dense parameters over dp·cp, routed experts over the dp·cp/ep ranks holding them."""
        p = self.plan["parallelism"]
        groups = None
        if p["zero_stage"] == 1 and p["dp"] * p["cp"] > 1:
            dense, experts = self.split_expert_params()
            groups = [(dense, self.dp_group)] + ([(experts, self.expert_group)] if experts else [])
        return build_optimizer(self.parameters(), recipe, groups)

    def global_loss(self, local: torch.Tensor | None) -> float:
        """The global-batch mean loss on every rank (only last-stage ranks hold a loss)."""
        if not dist.is_initialized():
            assert local is not None  # one process holds every stage, the last one included
            return float(local)
        value = torch.zeros((), device=self.device) if local is None else local.detach().float().reshape(())
        holders = torch.tensor(0.0 if local is None else 1.0, device=self.device)
        both = torch.stack([value, holders])
        dist.all_reduce(both)
        return float(both[0] / both[1])

    def full_state(self) -> dict[str, torch.Tensor]:
        """Unsharded parameters of this rank's chunks on CPU, under the original model's names.

        Collective for DTensor parameters: every rank of a pipeline stage must call it.
        """
        from torch.distributed.tensor import DTensor

        state = {}
        for part in self.parts:
            for name, p in part.named_parameters():
                full = p.full_tensor() if isinstance(p, DTensor) else p
                state[name.replace(_WRAPPER_PREFIX, "")] = full.detach().cpu().clone()
        return state


def _all_reduce_mean(params: list[nn.Parameter], group, dtype: torch.dtype) -> None:
    """Average the gradients of ``params`` over ``group`` in one flat buffer: a single
    collective instead of one per tensor (what DDP buckets do), on the wire in ``dtype`` (fp32,
    or the 16-bit type the plan's stack reduces in)."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(local_shard(p.grad))
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).to(dtype)
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))  # back to the gradient's dtype
        offset += g.numel()
