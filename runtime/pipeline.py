"""Pipeline parallelism: cut the model into the plan's chunks and run them on a schedule.

A chunk is a copy of the model that keeps blocks ``[lo, hi)`` (under their original names) and
sets the embedding, final norm and head to None where the plan says the chunk lacks them
(torchtitan's manual split). Chunk ``i`` lives on pp rank ``i % pp``: with ``virtual_stages`` v > 1
each rank holds v chunks and runs the interleaved 1F1B schedule (Narayanan et al. 2021, §2.2).

The schedule class comes from the plan's entry in ``planner.schedules.SCHEDULES``: its
``torch_class`` (a ``torch.distributed.pipelining`` class name) and ``torch_multi_stage`` (whether
that class takes the list of this rank's stages, or the single stage).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributed import pipelining
from torch.distributed.pipelining import PipelineStage

from planner.schedules import SCHEDULES
from runtime.model import DTYPES, Transformer, next_token_loss


def split_model(model: Transformer, plan: dict, pp_rank: int) -> tuple[list[Transformer], list[int]]:
    """The chunks pp rank ``pp_rank`` holds and their stage indices, in model order.

    With pp = 1 the model itself is the single chunk (no copy).
    """
    stages = [st for st in plan["stages"] if st["pp_rank"] == pp_rank]
    if len(plan["stages"]) == 1:
        return [model], [0]
    parts = []
    for st in stages:
        part = copy.deepcopy(model)  # cheap when the model is still on the meta device
        lo, hi = st["layers"]
        for key in list(part.layers.keys()):
            if not lo <= int(key) < hi:
                del part.layers[key]
        if not st["has_embedding"]:
            part.tok_embeddings = None
            if hasattr(part, "pos_embeddings"):
                part.pos_embeddings = None
        if not st["has_head"]:
            part.norm = None
            part.output = None
        parts.append(part)
    return parts, [st["index"] for st in stages]


def stage_io(plan: dict, index: int, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta tensors of the shapes chunk ``index`` takes and returns per micro-batch: token ids
    ``[mb, s]`` into the first, logits ``[mb, s, V]`` out of the last, hidden states
    ``[mb, s, h]`` between (s: the tokens of a sequence on one cp rank, split again over tp under
    sequence parallelism). Given to ``PipelineStage``, they replace its shape-inference forward,
    which runs on uninitialised tensors: a MoE routes such garbage differently on each tp rank
    and the expert collectives then disagree in size. ``dtype``: of the activations (the compute
    dtype of the run's precision; default the plan's)."""
    p, t, m = plan["parallelism"], plan["inputs"]["training"], plan["inputs"]["model"]
    mb, s, dtype = p["micro_batch_size"], t["seq_len"] // p["cp"], dtype or DTYPES[t["dtype"]]
    between = s // p["tp"] if p["sequence_parallel"] and p["tp"] > 1 else s
    # requires_grad: the schedule sends/receives gradients only for tensors that have one.
    hidden = torch.empty(mb, between, m["hidden_size"], dtype=dtype, device="meta", requires_grad=True)
    first, last = index == 0, index == len(plan["stages"]) - 1
    x = torch.empty(mb, s, dtype=torch.long, device="meta") if first else hidden
    y = torch.empty(mb, s, m["vocab_size"], dtype=dtype, device="meta", requires_grad=True) if last else hidden
    return x, y


def build_schedule(
    parts: Sequence[nn.Module],
    stage_indices: list[int],
    plan: dict,
    pp_group,
    device: torch.device,
    loss_fn=None,
    dtype: torch.dtype | None = None,
):
    """The plan's schedule over this rank's (already parallelised) chunks; ``loss_fn`` default
    ``next_token_loss`` (fp16 runs pass the loss times the loss scale); ``dtype``: of the
    activations sent between stages (see :func:`stage_io`).

    Each micro-batch loss is a mean; the schedule divides the accumulated gradients by the
    number of micro-batches (``scale_grads``), so they equal the gradient of the batch mean.
    """
    p = plan["parallelism"]
    num_stages = len(plan["stages"])
    stages = [
        PipelineStage(part, i, num_stages, device, *stage_io(plan, i, dtype), group=pp_group)
        for part, i in zip(parts, stage_indices)
    ]
    entry = SCHEDULES[p["schedule"]]
    schedule_cls = getattr(pipelining, entry.torch_class)
    if not entry.torch_multi_stage and len(stages) != 1:
        raise ValueError(
            f"schedule {entry.name!r} ({entry.torch_class}) takes one chunk per pp rank, not {len(stages)}"
        )
    local = stages if entry.torch_multi_stage else stages[0]
    return schedule_cls(local, p["num_micro_batches"], loss_fn=loss_fn or next_token_loss)
