"""The optimizer a recipe names, its learning-rate schedule, and gradient clipping by global norm.

* ``build_optimizer``: ``torch.optim.AdamW`` or ``SGD`` over the parameters as they are after
  ``apply_plan`` (fp32: the master copy; TP/FSDP DTensors), or, under ZeRO-1 with dp > 1,
  :class:`ZeroOne`: ``ZeroRedundancyOptimizer`` over the same optimizer class, each dp rank
  keeping the states of its share of the parameters (Rajbhandari et al. 2020, P_os).
* ``build_scheduler``: ``LambdaLR`` with :func:`runtime.recipe.lr_factor`.
* ``clip_gradients``: the global norm over every parallel dimension. Each gradient element is
  counted once in the world: a rank sums the squares of its local shards, except copies another
  rank also holds: a DTensor replicated over a mesh dimension counts only at coordinate 0 of it
  (TP-replicated norms, HSDP replicas), a parameter that FSDP does not shard counts only on dp
  rank 0 (ZeRO 0/1 replicas after the all-reduce), one that no tp mesh dimension holds (a norm
  without SP, GPT's positions: runtime.tp leaves them plain, FSDP shards them over dp only) counts
  only on tp rank 0, and a tied embedding's head copy on the last pipeline stage is left to the
  first stage's. One all-reduce (sum) over the whole world then
  adds tp shards, FSDP shards and pipeline stages. ``torch.nn.utils.clip_grad_norm_`` reduces
  DTensors over their mesh but not over pipeline stages, nor plain replicas: hence this.
  Scale ``min(1, max_norm / (norm + 1e-6))`` as clip_grad_norm_ computes it. The squares (fp32,
  each element rounded alike wherever it lives) are summed in fp64, and so is the all-reduce:
  the fp32 scale is then the same for every layout of the same gradients (a sum's order moves
  it by about 1e-11 relative, not fp32's 1e-7), where an fp32 sum left the scale one rounding
  apart between layouts; under 16-bit compute that last-bit difference in the masters flips
  some 16-bit casts and grows into bf16-sized differences within a few steps (runtime.reference).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from runtime.recipe import Recipe, lr_factor


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (same storage), else ``t``."""
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t


def optimizer_class(recipe: Recipe) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The torch class and its keyword arguments (foreach off: one code path on CPU and CUDA,
    and the same per-tensor arithmetic as the single-process reference)."""
    if recipe.optimizer == "adamw":
        kwargs = dict(lr=recipe.peak_lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.decay)
        return torch.optim.AdamW, {**kwargs, "foreach": False}
    return torch.optim.SGD, dict(lr=recipe.peak_lr, weight_decay=recipe.decay, foreach=False)


def build_optimizer(params: list[nn.Parameter], recipe: Recipe, zero1_groups: list[tuple[list, Any]] | None = None):
    """The recipe's optimizer over ``params``; ``zero1_groups``: (parameters, dp group) pairs to
    shard its states over instead (ZeRO-1: dense parameters over dp·cp, routed experts over the
    ranks holding the same experts)."""
    cls, kwargs = optimizer_class(recipe)
    if zero1_groups:
        return ZeroOne(zero1_groups, cls, kwargs)
    return cls(params, **kwargs)


class ZeroOne:
    """ZeRO-1: one ``ZeroRedundancyOptimizer`` over ``optimizer_class`` per (parameters, group)
    pair (``.inner``, a list).

    It broadcasts updated parameters with c10d ops that DTensor does not implement, so it is
    given plain tensors aliasing each parameter's local shard (TP's DTensors): updating and
    broadcasting them writes through to the parameters. Gradients are handed over before a step.
    runtime.checkpoint reads ``params``, ``shards`` and ``inner`` to save the state by parameter name.
    """

    def __init__(self, groups: list[tuple[list[nn.Parameter], Any]], cls: type[torch.optim.Optimizer], kwargs: dict):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        self.params = [p for params, _ in groups for p in params]
        self.shards = [local_shard(p).detach() for p in self.params]  # same storage, plain tensors
        self.inner: list[ZeroRedundancyOptimizer] = []
        start = 0
        for params, group in groups:
            mine, start = self.shards[start : start + len(params)], start + len(params)
            self.inner.append(ZeroRedundancyOptimizer(mine, optimizer_class=cls, process_group=group, **kwargs))

    @property
    def param_groups(self) -> list[dict]:
        """The first group's hyperparameters (every group has the same)."""
        return self.inner[0].param_groups

    def step(self) -> None:
        for p, shard in zip(self.params, self.shards):
            shard.grad = None if p.grad is None else local_shard(p.grad)
        for inner in self.inner:
            inner.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (always to None, whatever ``set_to_none`` says: the next backward
        allocates them again)."""
        for p, shard in zip(self.params, self.shards):
            p.grad = shard.grad = None


def torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers a schedule drives (ZeRO-1's inner ones)."""
    return list(optimizer.inner) if isinstance(optimizer, ZeroOne) else [optimizer]


class Schedule:
    """``LambdaLR`` with :func:`runtime.recipe.lr_factor` on every torch optimizer of the run (ZeRO-1
    with routed experts has two), stepped together; its state is the first's (they are equal)."""

    def __init__(self, optimizer, recipe: Recipe, steps: int):
        def factor(step: int) -> float:
            return lr_factor(recipe, steps, step)

        self.each = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in torch_optimizers(optimizer)]

    def step(self) -> None:
        for s in self.each:
            s.step()

    def get_last_lr(self) -> list[float]:
        return [float(lr) for lr in self.each[0].get_last_lr()]

    def state_dict(self) -> dict:
        return self.each[0].state_dict()

    def load_state_dict(self, state: dict) -> None:
        for s in self.each:
            s.load_state_dict(state)


def build_scheduler(optimizer, recipe: Recipe, steps: int) -> Schedule:
    return Schedule(optimizer, recipe, steps)


def _counted_here(p: torch.Tensor, replica_rank: int, fsdp: bool) -> bool:
    """Whether this rank adds ``p``'s local gradient to the global norm (module doc)."""
    from torch.distributed.tensor import DTensor, Replicate

    if isinstance(p, DTensor):
        coordinate = list(p.device_mesh.get_coordinate() or ())
        if any(isinstance(pl, Replicate) and c != 0 for pl, c in zip(p.placements, coordinate)):
            return False
    return fsdp or replica_rank == 0


def _tp_replica(p: torch.Tensor) -> bool:
    """Whether every tp rank holds all of ``p`` outside DTensor's view (no "tp" mesh dimension)."""
    from torch.distributed.tensor import DTensor

    names = p.device_mesh.mesh_dim_names if isinstance(p, DTensor) else None
    return not names or "tp" not in names


def global_grad_norm(
    params: list[nn.Parameter],
    skip: frozenset[int] | set[int] = frozenset(),
    dp_rank: int = 0,
    fsdp: bool = False,
    experts: frozenset[int] | set[int] = frozenset(),
    expert_rank: int = 0,
    tp_rank: int = 0,
) -> torch.Tensor:
    """sqrt of the sum of squared gradient elements over the world (module doc); ``skip``: ids
    of parameters whose gradients another rank counts (a tied head copy). ``dp_rank``: this rank's
    index among the dp·cp ranks holding the same dense parameters; ``experts``: ids of routed
    experts under ep, replicated only over the ranks holding the same experts, where this rank's
    index is ``expert_rank``; ``tp_rank``: this rank's index in its tp group."""
    total = torch.zeros((), dtype=torch.float64, device=params[0].device if params else "cpu")
    for p in params:
        rank = expert_rank if id(p) in experts else dp_rank
        if tp_rank != 0 and _tp_replica(p):
            continue  # tp rank 0 counts it
        if p.grad is not None and id(p) not in skip and _counted_here(p, rank, fsdp):
            total += local_shard(p.grad).float().pow(2).sum(dtype=torch.float64)  # fp64: module doc
    return _world_sum(total).sqrt()


def _world_sum(total: torch.Tensor) -> torch.Tensor:
    """Sum over every rank: tp shards, FSDP shards, pipeline stages (one all-reduce)."""
    if dist.is_initialized():
        dist.all_reduce(total)
    return total


def clip_gradients(params: list[nn.Parameter], norm: torch.Tensor, max_norm: float) -> None:
    """Scale every local gradient by ``min(1, max_norm / (norm + 1e-6))`` (clip_grad_norm_'s)."""
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            local_shard(p.grad).mul_(coef.to(p.grad.dtype))


def tied_copies(parts: list[nn.Module]) -> set[int]:
    """Ids of the head copies of a tied embedding on a chunk without the embedding (pp > 1):
    the first stage's embedding counts for both in the norm."""
    out: set[int] = set()
    for part in parts:
        spec = getattr(part, "spec", None)
        if getattr(spec, "tie_embeddings", False) and part.tok_embeddings is None and part.output is not None:
            out.add(id(part.output.weight))
    return out


def update(params: list[nn.Parameter], optimizer, scheduler, scaler, max_norm: float | None, **norm_kw) -> float:
    """One optimizer step after the gradients are complete (reduced, tied copies summed):
    unscale (fp16), global norm, clip, step (skipped everywhere on an inf/NaN gradient), advance
    the schedule. Returns the gradient norm before clipping. ``norm_kw``: see global_grad_norm."""
    found_inf = scaler.unscale([local_shard(p.grad) for p in params if p.grad is not None])
    norm = global_grad_norm(params, **norm_kw)
    if max_norm is not None:
        clip_gradients(params, norm, max_norm)
    if not found_inf:
        optimizer.step()
    scaler.update(found_inf)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
