"""The training loop one rank runs, and the single-process reference it must reproduce.

Both draw the same global batch each step from :class:`TokenSource` (seeded synthetic tokens, or
windows of a token file), build the model from the same seed in fp32 (the master copy) and follow
the same :class:`runtime.recipe.Recipe`: optimizer, precision policy (runtime.precision), clipping
by global norm and schedule (runtime.optim). The parity tests use SGD as well as AdamW: Adam is
scale-invariant and would hide a wrongly scaled gradient.
A data-parallel rank takes rows ``[r * B/dp, (r + 1) * B/dp)`` of the global batch, r its index
in the whole dp group (under HSDP r = replicate_rank * dp_shard + shard_rank).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from runtime.memory import SavedTensorMeter, state_tensors
from runtime.model import build_model, next_token_loss
from runtime.model_state import ModelStateMeter
from runtime.optim import build_optimizer, build_scheduler, tied_copies, update
from runtime.parallelize import apply_plan, build_mesh, dp_mesh
from runtime.plan_io import model_spec
from runtime.precision import CastCache, LossScaler, cast_buffers, cast_parameters, fsdp_shards, precision_for
from runtime.recipe import Recipe

TOKEN_DTYPES = ("uint16", "int32")


def token_dtype(vocab_size: int) -> str:
    """The narrowest token-id type that holds every id of the vocabulary: uint16 up to 65,536
    ids (GPT-2's 50,257), int32 beyond (Llama 3's 128,256)."""
    return "uint16" if vocab_size <= 2**16 else "int32"


def check_token_file(path: str, plan: dict, data_dtype: str | None = None) -> str:
    """The dtype a token file is read with, after checking it can be: the size is a whole number of
    ids, it holds one sequence, and every id is below the vocabulary (an id beyond it would fail
    inside every rank's embedding). ValueError with one line otherwise."""
    vocab, seq = plan["inputs"]["model"]["vocab_size"], plan["inputs"]["training"]["seq_len"]
    dtype = data_dtype or token_dtype(vocab)
    if dtype not in TOKEN_DTYPES:
        raise ValueError(f"--data-dtype must be one of {', '.join(TOKEN_DTYPES)} (got {dtype!r})")
    size, item = Path(path).stat().st_size, np.dtype(dtype).itemsize
    if size % item:
        raise ValueError(f"token file {path}: {size} bytes is not a whole number of {dtype} ids ({item} bytes)")
    tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    if len(tokens) < seq + 1:
        raise ValueError(f"token file {path} holds {len(tokens)} {dtype} ids; one sequence needs {seq + 1}")
    top = int(tokens.max())
    if top >= vocab or int(tokens.min()) < 0:
        other = next(d for d in TOKEN_DTYPES if d != dtype)
        raise ValueError(
            f"token file {path} read as {dtype} holds id {top}, outside the model's vocabulary of {vocab}: "
            f"a file of another tokenizer, or written as {other} (--data-dtype {other})"
        )
    return dtype


class TokenSource:
    """Global batches ``[B, seq_len + 1]`` of token ids (inputs = [:, :-1], targets = [:, 1:]).

    data: None for synthetic tokens drawn from a generator seeded by (seed, step); or a path to
    a flat file of token ids (``data_dtype`` uint16 or int32, nanoGPT's .bin format; default: the
    narrowest that holds the model's vocabulary, ``token_dtype``), read as consecutive windows of
    seq_len + 1 tokens, wrapping around. ``check_token_file`` vets the file first.
    """

    def __init__(self, plan: dict, data: str | None = None, data_dtype: str | None = None):
        t = plan["inputs"]["training"]
        self.batch_size, self.seq_len, self.seed = t["global_batch_size"], t["seq_len"], t["seed"]
        self.vocab_size = plan["inputs"]["model"]["vocab_size"]
        dtype = data_dtype or token_dtype(self.vocab_size)
        self.tokens = None if data is None else np.memmap(data, dtype=np.dtype(dtype), mode="r")

    def batch(self, step: int) -> torch.Tensor:
        n, width = self.batch_size, self.seq_len + 1
        if self.tokens is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return torch.randint(0, self.vocab_size, (n, width), generator=g)
        windows = len(self.tokens) // width
        starts = [((step * n + j) % windows) * width for j in range(n)]
        rows = np.stack([np.asarray(self.tokens[s : s + width], dtype=np.int64) for s in starts])
        return torch.from_numpy(rows)


def run_reference(plan: dict, steps: int, recipe: Recipe | None = None, data: str | None = None) -> dict:
    """One process, no parallelism, the same recipe (optimizer, precision policy, clipping,
    schedule): per-step losses and gradient norms (before clipping), the final parameters by name."""
    torch.set_num_threads(1)
    recipe = recipe or Recipe()
    precision = precision_for(plan, recipe)
    model = build_model(model_spec(plan), plan["inputs"]["training"]["seed"], torch.float32)
    cache = CastCache(precision.compute) if precision.mixed else None
    if cache is not None:  # the policy of every plan (FSDP2's casts are the same arithmetic)
        cast_buffers(model, precision.compute)
        cast_parameters(model, cache)
    params = list(model.parameters())
    optimizer = build_optimizer(params, recipe)
    scheduler, scaler = build_scheduler(optimizer, recipe, steps), LossScaler(precision.compute == torch.float16)
    source, losses, norms = TokenSource(plan, data), [], []
    for step in range(steps):
        batch = source.batch(step)
        loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
        (loss * scaler.scale).backward()
        norms.append(update(params, optimizer, scheduler, scaler, recipe.max_norm))
        if cache is not None:
            cache.clear()
        losses.append(loss.item())
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"losses": losses, "grad_norms": norms, "params": state}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rank(
    plan: dict,
    steps: int,
    recipe: Recipe,
    data: str | None,
    device_type: str,
    keep_state: bool = False,
    data_dtype: str | None = None,
) -> dict:
    """Train ``steps`` steps as this rank of the initialised default process group.

    Returns this rank's record: losses (global mean, the same on every rank), gradient norms,
    learning rates, step times, peak memory per step, model-state bytes and, with keep_state, its
    chunks' unsharded parameters (collective).
    """
    torch.set_num_threads(1)  # measured: more threads per rank on a shared CPU cost 35-75x
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    mesh = build_mesh(plan, device_type)
    spec, seed, precision = model_spec(plan), plan["inputs"]["training"]["seed"], precision_for(plan, recipe)
    model = build_model(spec, seed, torch.float32, device="meta")  # fp32 parameters: the master copy
    pm = apply_plan(model, plan, mesh, device=device, seed=seed, precision=precision)
    params = pm.parameters()
    optimizer, states = pm.build_optimizer(recipe), ModelStateMeter(list(pm.parts), params, pm.cast_cache)
    scheduler, scaler = build_scheduler(optimizer, recipe, steps), LossScaler(precision.compute == torch.float16)
    norm_kw = dict(skip=tied_copies(list(pm.parts)), dp_rank=dp_mesh(mesh).get_local_rank(), fsdp=fsdp_shards(plan))
    source, dp = TokenSource(plan, data, data_dtype), plan["parallelism"]["dp"]
    rows = source.batch_size // dp
    first_row = norm_kw["dp_rank"] * rows
    record: dict[str, Any] = {"rank": dist.get_rank(), "pp_rank": mesh.get_local_rank("pp")}
    record |= {key: [] for key in ("losses", "grad_norms", "lrs", "step_time_s", "peak_memory_bytes_per_step")}
    for step in range(steps):
        batch = source.batch(step)[first_row : first_row + rows].to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # CUDA has allocator statistics; on CPU count what is held for backward instead.
        meter = SavedTensorMeter(state_tensors(*pm.parts)) if device.type == "cpu" else contextlib.nullcontext()
        _sync(device)
        start = time.perf_counter()
        pm.loss_scale = scaler.scale
        with meter:
            local = pm.forward_backward(batch[:, :-1], batch[:, 1:])
        pm.sync_gradients()
        states.gradients(params)
        record["lrs"].append(scheduler.get_last_lr()[0])
        record["grad_norms"].append(update(params, optimizer, scheduler, scaler, recipe.max_norm, **norm_kw))
        if pm.cast_cache is not None:
            pm.cast_cache.clear()
        states.optimizer(optimizer)
        _sync(device)
        record["step_time_s"].append(time.perf_counter() - start)
        record["losses"].append(pm.global_loss(local))
        peak = meter.peak_bytes if isinstance(meter, SavedTensorMeter) else torch.cuda.max_memory_allocated(device)
        record["peak_memory_bytes_per_step"].append(peak)
    record["memory_kind"] = "cuda_max_memory_allocated" if device.type == "cuda" else "saved_for_backward"
    record["model_state_bytes"] = states.record()
    if keep_state:
        record["state"] = pm.full_state()
    return record
