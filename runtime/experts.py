"""Expert parallelism (GShard, Lepikhin et al. 2020 §2.2; Switch, Fedus et al. 2021): the routed
experts of each MoE layer are split over the ``ep`` ranks of an expert group, and every rank
sends each routed copy of its tokens to the rank holding the chosen expert and back.

Groups (the planner's convention, planner.config.Parallel): the dense data-parallel group has
dp·cp ranks (index D = (replica·dp_shard + shard)·cp + cp_rank, tp innermost in the world); the
expert group is ``ep`` consecutive values of D (ranks tp apart), ep rank = D mod ep, and expert
rank e holds experts ``[e·E/ep, (e+1)·E/ep)`` under their global names. Ranks holding the same
experts (D div ep: dp·cp/ep of them, tp·ep apart) form the expert-data-parallel group over which
expert gradients are reduced; under HSDP its replicas are the dp_replicate ones (the planner
requires ep to divide a replica's dp·cp/dp_replicate ranks).

Dispatch and combine, per MoE layer: the token copies are sorted by expert (stable, so each
token's copies keep the reference's order), their counts exchanged with one all-to-all, the
hidden states sent with ``all_to_all_single_autograd`` (backward: the reverse all-to-all), run
through the local experts grouped by expert, sent back the same way and summed with the router
weights. Routing is dropless, as in the single-process model. Tensor parallelism composes: the
MoE input is replicated over tp (gathered under SP), so the tp ranks of one expert rank send the
same tokens within their own expert groups and each expert is split over tp like a dense FFN.

Gradient scale: rank h's expert gradient sums the contributions of the ep ranks that sent it
tokens, each from that rank's token-mean loss; summed over the expert-data-parallel group it is
dp·cp times the gradient of the global mean. An average over that group (dp·cp/ep ranks, what
FSDP's reduce-scatter computes) leaves a factor ep, which :func:`rescale_expert_grads` removes.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

EXPERT_MESH_DIMS = ("pp", "dp_replicate", "edp_shard", "ep", "tp")
EXPERT_MARK = ".experts."  # routed experts' parameter names: layers.i.feed_forward.experts.j.w1...


def is_expert_param(name: str) -> bool:
    return EXPERT_MARK in f".{name}"


def build_expert_mesh(mesh: DeviceMesh, ep: int) -> DeviceMesh:
    """The world's ranks arranged ``(pp, dp_replicate, edp_shard, ep, tp)``: the dense mesh's
    ``(dp_shard, cp)`` ranks of each replica regrouped as ``(edp_shard, ep)``, ep innermost.
    Collective: every rank builds it, and the flattened ``edp`` group, together."""
    pp, r, shard, cp, tp = (mesh.size(i) for i in range(mesh.ndim))
    ranks = mesh.mesh.reshape(pp, r, shard * cp // ep, ep, tp)
    emesh = DeviceMesh(mesh.device_type, ranks, mesh_dim_names=EXPERT_MESH_DIMS)
    edp_mesh(emesh)
    return emesh


def edp_mesh(expert_mesh: DeviceMesh) -> DeviceMesh:
    """The expert-data-parallel ranks (dp·cp/ep, holding the same experts) as a 1-D mesh."""
    return expert_mesh[("dp_replicate", "edp_shard")]._flatten("edp")


class ExpertShard:
    """This rank's place in its expert group; set on every MoE layer by :func:`apply_ep`."""

    def __init__(self, group, rank: int, size: int, num_experts: int):
        if num_experts % size:
            raise ValueError(f"expert parallel: num_experts ({num_experts}) % ep ({size}) = {num_experts % size}")
        self.group, self.rank, self.size = group, rank, size
        self.num_experts, self.local = num_experts, num_experts // size

    def local_keys(self) -> list[str]:
        return [str(j) for j in range(self.rank * self.local, (self.rank + 1) * self.local)]

    def dispatch_combine(
        self, t: torch.Tensor, top_idx: torch.Tensor, weights: torch.Tensor, experts: nn.ModuleDict, keep: torch.Tensor
    ) -> torch.Tensor:
        """Routed output for tokens ``t [n, h]`` with their top-k experts and router weights;
        copies outside ``keep`` (beyond an expert's capacity, runtime.capacity) are not sent."""
        k = top_idx.shape[1]
        # Dropped copies go to a bucket past the last expert: sorted last, then cut off.
        flat = torch.where(keep, top_idx, self.num_experts).reshape(-1)
        order = torch.argsort(flat, stable=True)  # copies grouped by expert, hence by ep rank
        counts = torch.bincount(flat, minlength=self.num_experts + 1)
        order, counts = order[: int(counts[: self.num_experts].sum())], counts[: self.num_experts].contiguous()
        recv = torch.empty_like(counts)  # [source rank, local expert] copies this rank receives
        dist.all_to_all_single(recv, counts, group=self.group)
        send_splits = counts.view(self.size, self.local).sum(1).tolist()
        recv_splits = recv.view(self.size, self.local).sum(1).tolist()
        x = funcol.all_to_all_single_autograd(t[order // k], recv_splits, send_splits, self.group)
        # Received rows come by source rank, then expert: regroup them by local expert.
        labels = torch.arange(self.local, device=t.device).repeat(self.size)
        labels = labels.repeat_interleave(recv.to(t.device))
        perm = torch.argsort(labels, stable=True)
        sizes = recv.view(self.size, self.local).sum(0).tolist()
        chunks = torch.split(x[perm], sizes)
        y = torch.cat([experts[key](c) for key, c in zip(self.local_keys(), chunks)])
        y = y[torch.argsort(perm)]
        back = funcol.all_to_all_single_autograd(y, send_splits, recv_splits, self.group)
        out = torch.zeros_like(t)
        return out.index_add(0, order // k, back * weights.reshape(-1)[order, None])


def apply_ep(part: nn.Module, shard: ExpertShard) -> None:
    """Keep only this rank's experts in each MoE layer of a (stage) model and dispatch through
    ``shard``. Runs after the weights are initialised, so kept experts have the reference's values."""
    for module in part.modules():
        experts = getattr(module, "experts", None)
        if isinstance(experts, nn.ModuleDict) and hasattr(module, "ep"):
            keep = set(shard.local_keys())
            for key in list(experts.keys()):
                if key not in keep:
                    del experts[key]
            cast(Any, module).ep = shard  # the slot's declared type is the shard


@torch.no_grad()
def rescale_expert_grads(named: list[tuple[str, nn.Parameter]], ep: int) -> None:
    """Divide the routed experts' gradients by ep (module docstring: the average over the
    expert-data-parallel group is ep times the gradient of the global mean)."""
    from torch.distributed.tensor import DTensor

    for name, p in named:
        if is_expert_param(name) and p.grad is not None:
            g = p.grad
            (g._local_tensor if isinstance(g, DTensor) else g).div_(ep)
