"""Checkpoints with ``torch.distributed.checkpoint`` (DCP) that load under any plan.

Every rank contributes one flat state dict keyed by the original model's parameter names (FQNs),
which are the same under every plan: a pipeline chunk keeps ``layers.<i>``, and wrappers
(activation checkpointing, FSDP) are stripped. DCP's save plan merges the ranks' dicts into one
global set of keys; its load plan gives each rank the chunks of each key its own tensors overlap.

- ``model.<fqn>``: parameters as the rank holds them: plain tensors (replicated over dp: DCP writes
  one copy) or DTensors under TP / FSDP2 (DCP stores each shard with its offset in the global
  tensor). From ``get_state_dict`` / into ``set_state_dict`` (torch.distributed.checkpoint.state_dict).
- ``optim.state.<fqn>.<name>`` and ``optim.param_groups.<fqn>.<hyper>``: torch's flattened
  optimizer state (``flatten_optimizer_state_dict=True``, as torchtitan saves it: every entry keyed
  by its parameter, so a pipeline rank's partial set of parameter groups merges with the others').
  State tensors have their parameter's layout. Any ``torch.optim`` optimizer round-trips (SGD,
  AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``).
- ``lr_scheduler``: ``scheduler.state_dict()`` when the run has a schedule.
- ``rng.rank-<r>.cpu`` (and ``.cuda``): rank r's torch generator states. Restored only under the
  same plan, where rank r does the same work again; under another plan the ranks keep their seeded
  generators (the runtime draws nothing random but dropout; data is indexed by step).

Resharding on load: each rank builds the state it would save under the new plan — the same keys,
its own shapes and layouts, only its own chunks' keys under pipeline parallelism — and ``dcp.load``
fills it from the overlapping chunks of the checkpoint: another dp, tp, pp, ZeRO stage or world
size needs nothing else (the promise of DeepSpeed's Universal Checkpointing, Lian et al. 2024,
there by converting to per-parameter files; here the per-parameter keys are the saved format).

ZeRO-1: ``ZeroRedundancyOptimizer`` keeps each parameter's state on one dp rank, indexed by
position in that rank's partition, which no other plan shares. It is saved as above instead: each
dp rank writes the state of the parameters it owns under their FQNs (with their TP layout), every
rank the hyperparameters. A ZeRO-1 checkpoint so loads under a plain optimizer and vice versa.

Tied embeddings: with the embedding and the head on one rank, torch lists the shared optimizer
state once, under ``tok_embeddings.weight``; a pipeline split keeps two copies, the head's under
``output.weight``. A rank holding both saves the state under both names, so a pipeline rank with
only the head finds its copy in any checkpoint (the model state already lists both names).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

from runtime.checkpoint_files import META_FILE, ResumePoint, step_dir, write_meta
from runtime.plan_io import model_spec
from runtime.step import ParallelModel

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_PART_PREFIX = re.compile(r"^(state\.|param_groups\.)?\d+\.")  # "<section.>?<part index>." of the ModuleList
_WRAPPERS = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_TIED = ("tok_embeddings.weight", "output.weight")


def optimizer_name(optimizer: Any) -> str:
    """The optimizer's class name (the one ZeRO-1 wraps in ZeroRedundancyOptimizers)."""
    zeros = _zero_one(optimizer)
    return type(zeros[0].optim if zeros else optimizer).__name__


def _zero_one(optimizer: Any) -> list[ZeroRedundancyOptimizer]:
    """The ZeroRedundancyOptimizers inside runtime.step's ZeRO-1 wrapper (one per data-parallel
    group: dense parameters, routed experts), which exposes ``params`` (the model's parameters),
    ``shards`` (plain tensors aliasing their local shards) and ``inner``; empty for any other."""
    inner = getattr(optimizer, "inner", None)
    return [z for z in inner if isinstance(z, ZeroRedundancyOptimizer)] if isinstance(inner, list) else []


def _owner(zeros: list[ZeroRedundancyOptimizer], shard: torch.Tensor) -> ZeroRedundancyOptimizer | None:
    """The ZeroRedundancyOptimizer whose local optimizer updates ``shard`` on this rank, if any."""
    for zero in zeros:
        if any(s is shard for g in zero.optim.param_groups for s in g["params"]):
            return zero
    return None


def _unprefix(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Drop the ModuleList's part index from every key; also the map back to the original keys."""
    out, back = {}, {}
    for key, value in sd.items():
        new = _PART_PREFIX.sub(lambda m: m.group(1) or "", key, count=1)
        out[new], back[new] = value, key
    return out, back


def _alias_tied(pm: ParallelModel, sd: dict[str, Any], sections: tuple[str, ...]) -> None:
    """Under each section, give the missing name of a tied embedding the other name's entries."""
    if not (pm.has_first and pm.has_last and model_spec(pm.plan).tie_embeddings):
        return
    for section in sections:
        for have, missing in (_TIED, _TIED[::-1]):
            src = f"{section}{have}"
            for key in [k for k in sd if k == src or k.startswith(src + ".")]:
                sd.setdefault(f"{section}{missing}{key[len(src) :]}", sd[key])


def _fqns(pm: ParallelModel) -> dict[int, str]:
    """Each parameter's original name by id (the first name of a tied parameter)."""
    names: dict[int, str] = {}
    for part in pm.parts:
        for name, p in part.named_parameters():
            for wrapper in _WRAPPERS:
                name = name.replace(wrapper, "")
            names.setdefault(id(p), name)
    return names


def _like_param(value: Any, param: nn.Parameter, shard: torch.Tensor) -> Any:
    """A ZeRO-1 state tensor (a plain local shard) with its TP parameter's global layout."""
    if isinstance(param, DTensor) and torch.is_tensor(value) and value.dim() > 0 and value.shape == shard.shape:
        return DTensor.from_local(
            value, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
        )
    return value


def _zero_one_state(pm: ParallelModel, optimizer: Any, zeros: list[ZeroRedundancyOptimizer]) -> dict[str, Any]:
    """ZeRO-1's optimizer state in torch's flattened per-FQN form: hyperparameters for every
    parameter, state for the parameters this rank owns in its data-parallel group."""
    names = _fqns(pm)
    hypers = {k: v for k, v in zeros[0].param_groups[0].items() if k != "params"}
    flat: dict[str, Any] = {}
    for param, shard in zip(optimizer.params, optimizer.shards):
        fqn, owner = names[id(param)], _owner(zeros, shard)
        flat.update({f"param_groups.{fqn}.{k}": v for k, v in hypers.items()})
        if owner is not None:
            for k, v in owner.optim.state[shard].items():
                flat[f"state.{fqn}.{k}"] = _like_param(v, param, shard)
    return flat


def _allocate_state(optim: torch.optim.Optimizer) -> None:
    """Create a fresh optimizer's lazily-made state (AdamW's moments) so it can be loaded into: a
    step with zero gradients and learning rate 0, as torch's ``get_optimizer_state_dict`` does."""
    if optim.state:
        return
    params = [p for g in optim.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optim.param_groups]
    for g in optim.param_groups:
        g["lr"] = 0.0
    optim.step()
    for g, lr in zip(optim.param_groups, lrs):
        g["lr"] = lr
    for p in params:
        p.grad = None


def _state(pm: ParallelModel, optimizer: Any, scheduler: Any, rng: bool) -> tuple[dict, dict[str, str], dict[str, str]]:
    """This rank's flat state (see the module doc) and the maps back to torch's own keys."""
    box = nn.ModuleList(pm.parts)  # one module over every chunk: keys gain "<i>." (dropped below)
    zeros = _zero_one(optimizer)
    if zeros:
        for zero in zeros:
            _allocate_state(zero.optim)
        model_sd, optim_sd = get_model_state_dict(box), _zero_one_state(pm, optimizer, zeros)
    else:
        model_sd, optim_sd = get_state_dict(box, optimizer, options=_OPTIONS)
    model, model_back = _unprefix(model_sd)
    optim, optim_back = _unprefix(optim_sd)
    _alias_tied(pm, model, ("",))
    _alias_tied(pm, optim, ("state.", "param_groups."))
    state: dict[str, Any] = {"model": model, "optim": optim}
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    if rng:
        state["rng"] = {f"rank-{dist.get_rank()}": _rng_state(pm.device)}
    return state, model_back, optim_back


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def save_checkpoint(root: str, step: int, pm: ParallelModel, optimizer: Any, scheduler: Any = None) -> str:
    """Save after ``step`` completed steps into ``root/step-<step>`` (collective: every rank)."""
    directory = step_dir(root, step)
    directory.mkdir(parents=True, exist_ok=True)
    if dist.get_rank() == 0:
        (directory / META_FILE).unlink(missing_ok=True)  # an older save there: incomplete until rewritten
    state, _, _ = _state(pm, optimizer, scheduler, rng=True)
    dcp.save(state, checkpoint_id=str(directory))
    if dist.get_rank() == 0:
        sched = None if scheduler is None else type(scheduler).__name__
        write_meta(directory, pm.plan, step, dist.get_world_size(), optimizer_name(optimizer), sched)
    dist.barrier()
    return str(directory)


def _restore_zero_one(pm: ParallelModel, optimizer: Any, zeros: list[ZeroRedundancyOptimizer], optim: dict) -> None:
    """Copy loaded ZeRO-1 state into the owned shards' state (DCP already wrote most of it in
    place, through the DTensor views; values it replaced, such as Python numbers, are set here),
    and the hyperparameters into the wrapper's groups and the local optimizer's."""
    names = _fqns(pm)
    for param, shard in zip(optimizer.params, optimizer.shards):
        owner = _owner(zeros, shard)
        fqn, state = names[id(param)], {} if owner is None else owner.optim.state.get(shard, {})
        for k, current in state.items():
            loaded = optim[f"state.{fqn}.{k}"]
            local = loaded.to_local() if isinstance(loaded, DTensor) else loaded
            if torch.is_tensor(current):
                current.copy_(local)
            else:
                state[k] = local
    first = names[id(optimizer.params[0])]
    for group in (g for zero in zeros for g in (*zero.param_groups, *zero.optim.param_groups)):
        for k in group:
            if k != "params":
                group[k] = optim[f"param_groups.{first}.{k}"]


def load_checkpoint(point: ResumePoint, pm: ParallelModel, optimizer: Any, scheduler: Any = None) -> int:
    """Load ``point`` into this rank's chunks, optimizer and schedule, resharding as the plan
    needs (collective); returns the step to continue from."""
    if optimizer_name(optimizer) != point.optimizer:
        raise ValueError(
            f"checkpoint {point.path} holds {point.optimizer} state; this run uses {optimizer_name(optimizer)}"
        )
    if scheduler is not None and point.lr_scheduler is None:
        raise ValueError(f"checkpoint {point.path} holds no learning-rate schedule state")
    state, model_back, optim_back = _state(pm, optimizer, scheduler, rng=point.same_layout)
    dcp.load(state, checkpoint_id=point.path)
    box, zeros = nn.ModuleList(pm.parts), _zero_one(optimizer)
    model_sd = {model_back[k]: v for k, v in state["model"].items() if k in model_back}
    if zeros:
        set_model_state_dict(box, model_sd)
        _restore_zero_one(pm, optimizer, zeros, state["optim"])
    else:
        optim_sd = {optim_back[k]: v for k, v in state["optim"].items() if k in optim_back}
        set_state_dict(box, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=_OPTIONS)
    if scheduler is not None:
        scheduler.load_state_dict(state["lr_scheduler"])
    if point.same_layout:
        rng = state["rng"][f"rank-{dist.get_rank()}"]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], pm.device)
    return point.step
