"""Bytes held for backward, measured rather than modelled.

``SavedTensorMeter`` counts every tensor a forward pass keeps for its backward:

* what autograd saves, seen through ``torch.autograd.graph.saved_tensors_hooks``; a
  non-reentrant checkpoint saves its region inputs through these same hooks (before it installs
  its own), so full recompute is counted as "the block input", correctly;
* what selective checkpointing caches (outputs of MUST_SAVE ops), which never passes through
  saved-tensor hooks: the SAC policy in :mod:`runtime.recompute` reports them with
  :meth:`SavedTensorMeter.add`.

Tensors are counted once per storage (a view saved twice is one allocation), parameters and
buffers and their views are excluded, and a storage stops counting when it is freed (weak
references), so ``peak_bytes`` is the true high-water mark across micro-batches of a pipeline.

``measure_saved_bytes_per_layer`` applies the meter to one block; docs/runtime.md lists the
tensors it finds, which the planner's activation model must reproduce.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from models.spec import ModelSpec


def _unwrap(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (the bytes this rank holds), else ``t``."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        with torch.no_grad():
            return t.to_local()
    return t


def _is_parameter_like(t: torch.Tensor) -> bool:
    """A leaf that requires grad (a parameter, FSDP's unsharded copy too) or a view of one."""
    while t is not None:
        if t.is_leaf and t.requires_grad:
            return True
        t = t._base
    return False


def state_tensors(*modules: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of ``modules``: what a meter must not count as activations."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


class SavedTensorMeter:
    """Context manager: live and peak bytes of tensors held for backward (see module doc)."""

    _active: "SavedTensorMeter | None" = None

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        """``exclude``: tensors that are not activations (see :func:`state_tensors`)."""
        self._excluded = {_unwrap(t).untyped_storage().data_ptr() for t in exclude}
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._previous: SavedTensorMeter | None = None

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        self._previous, SavedTensorMeter._active = SavedTensorMeter._active, self
        return self

    def __exit__(self, *exc) -> None:
        SavedTensorMeter._active = self._previous
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    def add(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage as held for backward (no-op for parameters and buffers)."""
        if not isinstance(t, torch.Tensor) or _is_parameter_like(t):
            return
        local = _unwrap(t)
        if local.device.type == "meta" or _is_parameter_like(local):
            return
        storage = local.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or storage.nbytes() == 0:
            return
        known = self._live.get(key)
        if known is None or known[0].expired():
            self._live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.peak_bytes = max(self.peak_bytes, self.live_bytes())

    def live_bytes(self) -> int:
        """Bytes of counted storages still allocated; forgets the freed ones."""
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        return sum(nbytes for _, nbytes in self._live.values())

    @classmethod
    def note_cached(cls, tensors) -> None:
        """Called by the SAC policy for outputs it keeps; counted by the innermost active meter."""
        if cls._active is not None:
            for t in tensors if isinstance(tensors, (tuple, list)) else (tensors,):
                cls._active.add(t)


@contextlib.contextmanager
def _fake_tp_mesh(tp: int) -> Iterator[object]:
    """A one-process mesh of ``tp`` ranks on the 'fake' backend: real local shapes, no traffic."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("measure_saved_bytes_per_layer(tp>1) needs a process without a default process group")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    try:
        yield init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()


def measure_saved_bytes_per_layer(
    spec: ModelSpec,
    recompute: str,
    micro_batch: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    tp: int = 1,
    sp: bool = False,
    layer_index: int = 0,
) -> int:
    """Bytes one block holds for backward after its forward (one rank's share under tp/sp).

    recompute: "none" | "selective" | "full" (see runtime.recompute). With tp > 1 the block is
    tensor-parallelised on a fake one-process group, so shapes are those of one TP rank.
    """
    # Imported here: runtime.recompute imports this module for the meter.
    from runtime.model import Block, rope_table
    from runtime.recompute import checkpoint_block

    torch.manual_seed(0)
    block = Block(spec, layer_index).to(dtype)
    rope = rope_table(spec, dtype)[:, :seq_len] if spec.position == "rope" else None
    s_local = seq_len // tp if sp else seq_len
    x = torch.randn(micro_batch, s_local, spec.hidden_size, dtype=dtype, requires_grad=True) * 1.0
    with contextlib.ExitStack() as stack:
        if tp > 1:
            from runtime.tp import parallelize_block

            parallelize_block(block, stack.enter_context(_fake_tp_mesh(tp)), sp)
        elif sp:
            raise ValueError("sequence parallel needs tp > 1")
        block = checkpoint_block(block, recompute)
        with SavedTensorMeter([*state_tensors(block), *([rope] if rope is not None else [])]) as meter:
            y = block(x, rope)
        held = meter.live_bytes()
        del y
    return held
