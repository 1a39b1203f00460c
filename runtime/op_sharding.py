"""Run a solved op-level sharding (planner/search/milp/sharding.py) with DTensor: an
``nn.Sequential`` of ``Linear`` (no bias) and element-wise activations, whose layers are the ops
``fc{i}`` / ``act{i}`` of the plan (``ShardingPlan.to_json()``; ``mlp_stack`` names them so).

Layouts map to DTensor placements (torch.distributed.tensor): ``B`` → ``Replicate()``,
``S0`` → ``Shard(0)`` (rows), ``S1`` → ``Shard(1)`` (features), ``P`` → ``Partial()``; a 2-D
plan's ``"L0,L1"`` is one placement per mesh dim on a ``plan["mesh_shape"]`` device mesh
(DTensor splits a dim sharded on both mesh dims outer-first, as planner/search/milp/sbp_2d.py
assumes). A plan's
weight layout is for ``W[k, n]`` (``Y = X·W``); ``nn.Linear`` stores ``W^T`` as ``[n, k]``, so
``S0`` (split k) is ``Shard(1)`` of the stored weight and ``S1`` is ``Shard(0)``.

Forward: each op's input is redistributed to the layout the plan's strategy reads (the edge's
collective: all-reduce P→B, reduce-scatter P→S, all-gather S→B, all-to-all S(i)→S(j), a local
slice B→S), then the op runs on DTensors and its output placement is checked against the plan
(a mismatch means the plan and the op's sharding rule disagree: an error, not a silent
reshard). Backward is DTensor's autograd: each redistribute's gradient runs the dual collective.
A weight kept replicated while its rows are split gets a partial-sum gradient, reduced to the
weight's placement before the SGD update (the plan's weight-gradient all-reduce).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard, distribute_tensor

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU)


def placement(layout: str) -> Placement:
    """The DTensor placement of an activation layout (B, P, S0, S1)."""
    table: dict[str, Placement] = {"B": Replicate(), "P": Partial(), "S0": Shard(0), "S1": Shard(1)}
    if layout not in table:
        raise ValueError(f"unknown layout {layout!r}; expected B, P, S0 or S1")
    return table[layout]


def placements(layout: str) -> tuple[Placement, ...]:
    """One placement per mesh dim of a (possibly 2-D, comma-separated) activation layout."""
    return tuple(placement(x) for x in layout.split(","))


def weight_placements(layout: str) -> tuple[Placement, ...]:
    return tuple(weight_placement(x) for x in layout.split(","))


def weight_placement(layout: str) -> Placement:
    """The placement of ``nn.Linear.weight`` ([n, k]) for a plan weight layout of ``W[k, n]``."""
    table: dict[str, Placement] = {"B": Replicate(), "S0": Shard(1), "S1": Shard(0)}
    if layout not in table:
        raise ValueError(f"unknown weight layout {layout!r}; expected B, S0 or S1")
    return table[layout]


def _op_names(net: nn.Sequential) -> list[str]:
    """``fc{i}`` for Linear layers, ``act{i}`` for activations; anything else is refused."""
    names = []
    for i, m in enumerate(net):
        if isinstance(m, nn.Linear):
            if m.bias is not None:
                raise ValueError(f"layer {i}: Linear with bias is not supported (a row-split bias must be added once)")
            names.append(f"fc{i}")
        elif isinstance(m, ACTIVATIONS):
            names.append(f"act{i}")
        else:
            raise ValueError(f"layer {i}: {type(m).__name__} is not a Linear or an element-wise activation")
    return names


class ShardedSequential(nn.Module):
    """``net`` with its weights distributed and its activations laid out as ``plan`` says."""

    def __init__(self, net: nn.Sequential, plan: dict[str, Any], mesh: DeviceMesh) -> None:
        super().__init__()
        ops = {o["op"]: o for o in plan["ops"]}
        self.names = _op_names(net)
        missing = [n for n in self.names + ["x", "y"] if n not in ops]
        if missing:
            raise ValueError(f"plan {plan.get('graph')} has no strategy for ops {missing}")
        self.net, self.mesh, self.ops = net, mesh, ops
        for name, m in zip(self.names, net):
            if isinstance(m, nn.Linear):
                p = distribute_tensor(m.weight.detach(), mesh, weight_placements(ops[name]["weight"]))
                m.weight = nn.Parameter(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: the whole input (identical on every rank); returns the whole output."""
        h = distribute_tensor(x, self.mesh, placements(self.ops["x"]["output"]))
        for name, m in zip(self.names, self.net):
            op = self.ops[name]
            h = h.redistribute(self.mesh, placements(op["inputs"][0]))
            h = m(h)
            assert isinstance(h, DTensor)
            if tuple(h.placements) != placements(op["output"]):
                raise RuntimeError(f"{name}: {op['strategy']} produced {h.placements}, the plan says {op['output']}")
        h = h.redistribute(self.mesh, placements(self.ops["y"]["inputs"][0]))
        return h.full_tensor()

    @torch.no_grad()
    def sgd_step(self, lr: float) -> None:
        """``w -= lr · grad`` with each gradient reduced to its weight's placement first."""
        for p in self.parameters():
            g = p.grad
            if g is None:
                continue
            if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
                g = g.redistribute(p.device_mesh, p.placements)
            p.sub_(lr * g)
            p.grad = None

    def full_weights(self) -> list[torch.Tensor]:
        out = []
        for m in self.net:
            if isinstance(m, nn.Linear):
                w = m.weight
                out.append(w.full_tensor() if isinstance(w, DTensor) else w)
        return out


def train_steps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> list[float]:
    """``steps`` of forward, MSE loss, backward and SGD; the losses."""
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        if isinstance(model, ShardedSequential):
            model.sgd_step(lr)
        else:
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.sub_(lr * p.grad)
                        p.grad = None
        losses.append(float(loss.detach()))
    return losses


def rank_parity(rank: int, world: int, store_path: str, build: Any, plan: dict, steps: int, out: Any) -> None:
    """One rank: train the sharded net and a single-process reference from the same seed; put
    (rank, max loss error, max final-weight error) on ``out``. ``build()`` returns (net, x, target)."""
    torch.set_num_threads(1)  # one thread per rank (shared notes: 35-75x slower steps otherwise)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        shape = tuple(plan.get("mesh_shape") or (world,))
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=tuple(f"axis{i}" for i in range(len(shape))))
        ref, x, target = build()
        net, _, _ = build()
        sharded = ShardedSequential(net, plan, mesh)
        ref_losses = train_steps(ref, x, target, steps, 0.05)
        losses = train_steps(sharded, x, target, steps, 0.05)
        ref_w = [m.weight for m in ref if isinstance(m, nn.Linear)]
        w_err = max(float((a - b).abs().max()) for a, b in zip(sharded.full_weights(), ref_w))
        out.put((rank, max(abs(a - b) for a, b in zip(losses, ref_losses)), w_err))
        dist.barrier()  # shared notes: a rank aborted at shutdown without it, once in ~25 runs
    finally:
        dist.destroy_process_group()
