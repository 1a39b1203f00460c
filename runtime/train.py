"""The training loop one rank runs, and the single-process reference it must reproduce.

Both draw the same global batch each step from :class:`TokenSource` (seeded synthetic tokens, or
windows of a token file), build the model from the same seed, and use SGD: SGD, not Adam, so a
gradient scaled wrongly shows in the parameters (Adam is scale-invariant and would hide it).
A data-parallel rank takes rows ``[r * B/dp, (r + 1) * B/dp)`` of the global batch, r its index
in the whole dp group (under HSDP r = replicate_rank * dp_shard + shard_rank); under context
parallelism each of the cp ranks sharing those rows takes its two chunks of every sequence
(runtime.context).
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.checkpoint_files import CheckpointOptions
from runtime.context import shard_sequence
from runtime.defaults import DEFAULT_LR
from runtime.hf_weights import Checkpoint, load_part
from runtime.memory import SavedTensorMeter, state_tensors
from runtime.metrics import StepLog, current_lr
from runtime.model import DTYPES, build_model, next_token_loss
from runtime.parallelize import MESH_DIMS, apply_plan, build_mesh, dp_mesh
from runtime.phases import PhaseTimer
from runtime.plan_io import model_spec
from runtime.profile import profile_comm
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


def _dtype(plan: dict) -> torch.dtype:
    return DTYPES[plan["inputs"]["training"]["dtype"]]


def run_reference(
    plan: dict,
    steps: int,
    lr: float = DEFAULT_LR,
    data: str | None = None,
    *,
    data_dtype: str | None = None,
    init_weights: str | None = None,
) -> dict:
    """One process, no parallelism: per-step losses and the final parameters by name.
    init_weights: a Hugging Face checkpoint directory to start from (:mod:`runtime.hf_weights`)."""
    torch.set_num_threads(1)
    spec = model_spec(plan)
    model = build_model(spec, plan["inputs"]["training"]["seed"], _dtype(plan))
    if init_weights is not None:
        load_part(model, Checkpoint(init_weights))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    source, losses = TokenSource(plan, data, data_dtype), []
    for step in range(steps):
        batch = source.batch(step)
        loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"losses": losses, "params": params}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rank(
    plan: dict,
    steps: int,
    lr: float,
    data: str | None,
    device_type: str,
    keep_state: bool = False,
    data_dtype: str | None = None,
    checkpoint: CheckpointOptions | None = None,
    optimizer_class: type[torch.optim.Optimizer] = torch.optim.SGD,
    *,
    init_weights: str | None = None,
    metrics: str | None = None,
    progress: bool = False,
) -> dict:
    """Train up to step ``steps`` (the total: a resumed run starts at its checkpoint's step) as
    this rank of the initialised default process group, saving checkpoints as ``checkpoint`` says.

    Returns this rank's record: the first step, losses (global mean, the same on every rank), step
    times, peak memory and phase times per step and, with keep_state, its chunks' unsharded
    parameters (collective). init_weights: a Hugging Face checkpoint directory to start from;
    metrics: a JSONL file rank 0 writes a line to per step; progress: rank 0 prints a line per step.
    """
    torch.set_num_threads(1)  # measured: more threads per rank on a shared CPU cost 35-75x
    mesh, pm, device = _build(plan, device_type, init_weights)
    optimizer = pm.build_optimizer(lr, optimizer_class)
    ckpt = checkpoint or CheckpointOptions()
    first_step = 0 if ckpt.resume is None else load_checkpoint(ckpt.resume, pm, optimizer)
    batches = _RankBatches(TokenSource(plan, data, data_dtype), plan, mesh, device)
    memory_kind = "cuda_max_memory_allocated" if device.type == "cuda" else "saved_for_backward"
    phases, log = PhaseTimer(pm.parts), StepLog(plan, steps, metrics, progress, memory_kind, device)
    record: dict[str, Any] = {
        "rank": dist.get_rank(),
        "first_step": first_step,
        "losses": [],
        "step_time_s": [],
        "peak_memory_bytes_per_step": [],
    }
    profiled = steps - 1 if steps - first_step >= 3 else None  # the last step, once two ran unprofiled
    for step in range(first_step, steps):
        inputs, targets = batches(step)
        with profile_comm(step == profiled) as comm:
            local, step_time_s, peak = _train_step(pm, optimizer, inputs, targets, phases)
        record["step_time_s"].append(step_time_s)
        record["losses"].append(pm.global_loss(local))
        record["peak_memory_bytes_per_step"].append(peak)
        log.step(step, record["losses"][-1], step_time_s, peak, current_lr(optimizer, lr), None, step == profiled)
        if step == profiled:
            record["comm_s"] = comm.seconds
        if ckpt.due(step + 1, steps):
            assert ckpt.directory is not None  # due() is False without one
            save_checkpoint(ckpt.directory, step + 1, pm, optimizer)
    log.close()
    record.update(memory_kind=memory_kind, phases_s=phases.per_step, profiled_step=profiled)
    record.setdefault("comm_s", {})
    if keep_state:
        record["state"] = pm.full_state()
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


def _build(plan: dict, device_type: str, init_weights: str | None):
    """This rank's mesh, its share of the model (seeded, or loaded from ``init_weights``) and device."""
    cuda = device_type == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    mesh = build_mesh(plan, device_type)
    spec, seed = model_spec(plan), plan["inputs"]["training"]["seed"]
    load = partial(load_part, ckpt=Checkpoint(init_weights)) if init_weights else None
    model = build_model(spec, seed, _dtype(plan), device="meta")
    return mesh, apply_plan(model, plan, mesh, device=device, seed=seed, load=load), device


def _train_step(pm, optimizer, inputs: torch.Tensor, targets: torch.Tensor, phases: PhaseTimer):
    """One timed step: (the local loss, the step's seconds, its peak memory); phase times go to
    ``phases``."""
    device = pm.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # CUDA has allocator statistics; on CPU count what is held for backward instead.
    meter = SavedTensorMeter(state_tensors(*pm.parts)) if device.type == "cpu" else contextlib.nullcontext()
    _sync(device)
    start = time.perf_counter()
    with meter:
        local = pm.forward_backward(inputs, targets)
    _sync(device)
    backward_end = time.perf_counter()
    pm.sync_gradients()
    _sync(device)
    sync_end = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    end = time.perf_counter()
    phases.end_step(backward_end - start, sync_end - backward_end, end - sync_end)
    peak = meter.peak_bytes if isinstance(meter, SavedTensorMeter) else torch.cuda.max_memory_allocated(device)
    return local, end - start, peak
