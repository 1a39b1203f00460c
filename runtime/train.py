"""The training loop one rank runs, and the single-process reference it must reproduce.

Both draw the same global batch each step from :class:`TokenSource` (seeded synthetic tokens, or
windows of a token file), build the model from the same seed in fp32 (the master copy) and follow
the same :class:`runtime.recipe.Recipe`: optimizer, precision policy (runtime.precision), clipping
by global norm and schedule (runtime.optim). The parity tests use SGD as well as AdamW: Adam is
scale-invariant and would hide a wrongly scaled gradient.
A data-parallel rank takes rows ``[r * B/dp, (r + 1) * B/dp)`` of the global batch, r its index
in the whole dp group (under HSDP r = replicate_rank * dp_shard + shard_rank); under context
parallelism each of the cp ranks sharing those rows takes its two chunks of every sequence
(runtime.context).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from runtime.arena import plan_arena
from runtime.arena_hooks import ArenaHooks
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.checkpoint_files import CheckpointOptions
from runtime.context import shard_sequence
from runtime.hf_weights import Checkpoint, load_part
from runtime.memory import SavedTensorMeter, state_tensors
from runtime.metrics import StepLog
from runtime.model import build_model
from runtime.model_state import ModelStateMeter
from runtime.optim import build_optimizer, build_scheduler, tied_copies, update
from runtime.parallelize import MESH_DIMS, apply_plan, build_mesh, dense_mesh, dp_mesh
from runtime.phases import PhaseTimer
from runtime.plan_io import model_spec
from runtime.precision import LossScaler, fsdp_shards, precision_for
from runtime.profile import profile_comm
from runtime.recipe import Recipe
from runtime.reference import WHOLE, Split, walk
from runtime.step import ParallelModel
from runtime.tokens import open_token_file


class TokenSource:
    """Global batches ``[B, seq_len + 1]`` of token ids (inputs = [:, :-1], targets = [:, 1:]).

    data: None for synthetic tokens drawn from a generator seeded by (seed, step); or a path to
    a token file (:mod:`runtime.tokens`: raw ids of ``data_dtype``, or llm.c's header format),
    memory-mapped and read as consecutive windows of seq_len + 1 tokens, wrapping around.
    ``runtime.tokens.check_token_file`` vets the file first.
    """

    def __init__(self, plan: dict, data: str | None = None, data_dtype: str | None = None):
        t = plan["inputs"]["training"]
        self.batch_size, self.seq_len, self.seed = t["global_batch_size"], t["seq_len"], t["seed"]
        self.vocab_size = plan["inputs"]["model"]["vocab_size"]
        self.tokens = None if data is None else open_token_file(data, self.vocab_size, data_dtype).ids()

    def batch(self, step: int) -> torch.Tensor:
        n, width = self.batch_size, self.seq_len + 1
        if self.tokens is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.randint(0, self.vocab_size, (n, width), generator=g)
        windows = len(self.tokens) // width
        starts = [((step * n + j) % windows) * width for j in range(n)]
        rows = np.stack([np.asarray(self.tokens[s : s + width], dtype=np.int64) for s in starts])
        return torch.from_numpy(rows)


def run_reference(
    plan: dict,
    steps: int,
    recipe: Recipe | None = None,
    data: str | None = None,
    *,
    data_dtype: str | None = None,
    init_weights: str | None = None,
    split: Split = WHOLE,
) -> dict:
    """One process, no parallelism, the same recipe (optimizer, precision policy, clipping,
    schedule): per-step losses and gradient norms (before clipping), the final parameters by name.
    init_weights: a Hugging Face checkpoint directory to start from (:mod:`runtime.hf_weights`);
    split: the whole batch at once, or the plan's ranks and micro-batches one by one
    (:mod:`runtime.reference`: the same 16-bit rounding as the parallel run)."""
    torch.set_num_threads(1)
    recipe = recipe or Recipe()
    precision = precision_for(plan, recipe)
    model = build_model(model_spec(plan), plan["inputs"]["training"]["seed"], torch.float32)
    if init_weights is not None:
        load_part(model, Checkpoint(init_weights))
    # The policy of every plan (FSDP2's casts are the same arithmetic): runtime.reference.
    caches, gradients = walk(model, plan, split, precision)
    params = list(model.parameters())
    optimizer = build_optimizer(params, recipe)
    scheduler, scaler = build_scheduler(optimizer, recipe, steps), LossScaler(precision.compute == torch.float16)
    source, losses, norms = TokenSource(plan, data, data_dtype), [], []
    for step in range(steps):
        loss = gradients(source.batch(step), scaler.scale)
        norms.append(update(params, optimizer, scheduler, scaler, recipe.max_norm))
        for cache in caches:
            cache.clear()
        losses.append(loss)
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"losses": losses, "grad_norms": norms, "params": state}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Rank:
    """What one rank trains with once the plan is applied."""

    pm: ParallelModel
    recipe: Recipe
    params: list
    optimizer: Any
    scheduler: Any
    scaler: LossScaler
    states: ModelStateMeter
    norm_kw: dict
    arena: ArenaHooks | None = None  # --memory-plan arena (runtime.arena)


def train_rank(
    plan: dict,
    steps: int,
    recipe: Recipe,
    data: str | None,
    device_type: str,
    keep_state: bool = False,
    data_dtype: str | None = None,
    checkpoint: CheckpointOptions | None = None,
    *,
    init_weights: str | None = None,
    metrics: str | None = None,
    progress: bool = False,
    on_step: Callable[[int, list], None] | None = None,
    memory_plan: str = "none",
) -> dict:
    """Train up to step ``steps`` (the total: a resumed run starts at its checkpoint's step) as
    this rank of the initialised default process group, saving checkpoints as ``checkpoint`` says.

    Returns this rank's record: the first step, losses (global mean, the same on every rank),
    gradient norms, learning rates, step times, peak memory and phase times per step, model-state
    bytes and, with keep_state, its chunks' unsharded parameters (collective). init_weights: a
    Hugging Face checkpoint directory to start from; metrics: a JSONL file rank 0 writes a line to
    per step; progress: rank 0 prints a line per step; on_step: called with each step as it starts
    and the losses so far (runtime.faults: the launcher's step file and the fault-injection hook);
    memory_plan "arena": saved activations go to planned offsets of one buffer (runtime.arena).
    """
    torch.set_num_threads(1)  # measured: more threads per rank on a shared CPU cost 35-75x
    mesh, r = _setup(plan, recipe, device_type, init_weights, steps, memory_plan)
    ckpt = checkpoint or CheckpointOptions()
    first_step = 0 if ckpt.resume is None else load_checkpoint(ckpt.resume, r.pm, r.optimizer, r.scheduler)
    batches = _RankBatches(TokenSource(plan, data, data_dtype), plan, mesh, r.pm.device)
    memory_kind = "cuda_max_memory_allocated" if r.pm.device.type == "cuda" else "saved_for_backward"
    phases, log = PhaseTimer(r.pm.parts), StepLog(plan, steps, metrics, progress, memory_kind, r.pm.device)
    record: dict[str, Any] = {"rank": dist.get_rank(), "pp_rank": mesh.get_local_rank("pp"), "first_step": first_step}
    record |= {key: [] for key in ("losses", "grad_norms", "lrs", "step_time_s", "peak_memory_bytes_per_step")}
    profiled = steps - 1 if steps - first_step >= 3 else None  # the last step, once two ran unprofiled
    for step in range(first_step, steps):
        if on_step is not None:
            on_step(step, record["losses"])
        inputs, targets = batches(step)
        with profile_comm(step == profiled) as comm:
            local, step_time_s, peak, lr, norm = _train_step(r, inputs, targets, phases)
        record["losses"].append(r.pm.global_loss(local))
        for key, value in (("step_time_s", step_time_s), ("peak_memory_bytes_per_step", peak), ("lrs", lr)):
            record[key].append(value)
        record["grad_norms"].append(norm)
        log.step(step, record["losses"][-1], step_time_s, peak, lr, norm, step == profiled)
        if step == profiled:
            record["comm_s"] = comm.seconds
        if ckpt.due(step + 1, steps):
            assert ckpt.directory is not None  # due() is False without one
            save_checkpoint(ckpt.directory, step + 1, r.pm, r.optimizer, r.scheduler)
    log.close()
    record.update(memory_kind=memory_kind, phases_s=phases.per_step, profiled_step=profiled)
    record.update(model_state_bytes=r.states.record(), arena=r.arena.record() if r.arena is not None else None)
    record.setdefault("comm_s", {})
    if keep_state:
        record["state"] = r.pm.full_state()
    return record


class _RankBatches:
    """This rank's inputs and targets of a step: its data-parallel rows of the global batch (r its
    index in the whole dp group), and of each row its context-parallel chunks (runtime.context)."""

    def __init__(self, source: TokenSource, plan: dict, mesh, device: torch.device):
        self.source, self.device = source, device
        self.rows = source.batch_size // plan["parallelism"]["dp"]
        self.first_row = dp_mesh(mesh).get_local_rank() * self.rows
        self.cp, self.cp_rank = mesh.size(MESH_DIMS.index("cp")), mesh.get_local_rank("cp")

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.source.batch(step)[self.first_row : self.first_row + self.rows].to(self.device)
        return (
            shard_sequence(batch[:, :-1], self.cp, self.cp_rank),
            shard_sequence(batch[:, 1:], self.cp, self.cp_rank),
        )


def _setup(plan: dict, recipe: Recipe, device_type: str, init_weights: str | None, steps: int, memory_plan: str):
    """This rank's mesh and what it trains with: its share of the fp32 master model (seeded, or
    loaded from ``init_weights``), the recipe's optimizer, schedule and loss scaler, the
    model-state meter, how the gradient norm counts replicated gradients (runtime.optim), and
    with ``memory_plan`` "arena" the planned arena's hooks (runtime.arena)."""
    cuda = device_type == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    mesh = build_mesh(plan, device_type)
    spec, seed, precision = model_spec(plan), plan["inputs"]["training"]["seed"], precision_for(plan, recipe)
    load = partial(load_part, ckpt=Checkpoint(init_weights)) if init_weights else None
    model = build_model(spec, seed, torch.float32, device="meta")  # fp32 parameters: the master copy
    pm = apply_plan(model, plan, mesh, device=device, seed=seed, load=load, precision=precision)
    params = pm.parameters()
    optimizer = pm.build_optimizer(recipe)
    experts = pm.split_expert_params()[1]
    norm_kw = {
        "skip": tied_copies(list(pm.parts)),
        "dp_rank": dense_mesh(mesh).get_local_rank(),
        "fsdp": fsdp_shards(plan),
        "experts": {id(p) for p in experts},
        "expert_rank": dist.get_rank(pm.expert_group) if pm.expert_group is not None else 0,
        "tp_rank": mesh.get_local_rank("tp"),
    }
    return mesh, _Rank(
        pm,
        recipe,
        params,
        optimizer,
        build_scheduler(optimizer, recipe, steps),
        LossScaler(precision.compute == torch.float16),
        ModelStateMeter(list(pm.parts), params, pm.cast_cache),
        norm_kw,
        ArenaHooks(plan_arena(pm, mesh.get_local_rank("pp"), precision.compute), pm.parts, device)
        if memory_plan == "arena"
        else None,
    )


def _train_step(r: _Rank, inputs: torch.Tensor, targets: torch.Tensor, phases: PhaseTimer):
    """One timed step: (the local loss, the step's seconds, its peak memory, the learning rate it
    used, the gradient norm before clipping); phase times go to ``phases``."""
    pm, device = r.pm, r.pm.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # CUDA has allocator statistics; on CPU count what is held for backward instead (the arena's
    # hooks replace the meter's: only the innermost saved-tensor hooks see a save).
    meter: Any = r.arena or (
        SavedTensorMeter(state_tensors(*pm.parts)) if device.type == "cpu" else contextlib.nullcontext()
    )
    _sync(device)
    start = time.perf_counter()
    pm.loss_scale = r.scaler.scale
    with meter:
        local = pm.forward_backward(inputs, targets)
    _sync(device)
    backward_end = time.perf_counter()
    pm.sync_gradients()
    r.states.gradients(r.params)
    _sync(device)
    sync_end = time.perf_counter()
    lr = r.scheduler.get_last_lr()[0]
    norm = update(r.params, r.optimizer, r.scheduler, r.scaler, r.recipe.max_norm, **r.norm_kw)
    if pm.cast_cache is not None:
        pm.cast_cache.clear()
    r.states.optimizer(r.optimizer)
    _sync(device)
    end = time.perf_counter()
    phases.end_step(backward_end - start, sync_end - backward_end, end - sync_end)
    peak = meter.peak_bytes if device.type == "cpu" else torch.cuda.max_memory_allocated(device)
    return local, end - start, peak, lr, norm
