"""Bytes held for backward, measured rather than modelled.

``SavedTensorMeter`` counts every tensor a forward pass keeps for its backward:

* what autograd saves, seen through ``torch.autograd.graph.saved_tensors_hooks``; a
  non-reentrant checkpoint saves its region inputs through these same hooks (before it installs
  its own), so full recompute is counted as "the block input", correctly;
* what selective checkpointing caches (outputs of MUST_SAVE ops), which never passes through
  saved-tensor hooks: the SAC policy in :mod:`runtime.recompute` reports them with
  :meth:`SavedTensorMeter.add`.

Tensors are counted once per storage (a view saved twice is one allocation), parameters and
buffers and their views are excluded, and a tensor stops counting when autograd releases it (or,
if SAC-cached, when it is freed), so ``peak_bytes`` is the high-water mark across the
micro-batches of a pipeline schedule.

``measure_saved_bytes_per_layer`` applies the meter to one block; docs/runtime.md lists the
tensors it finds, which the planner's activation model must reproduce.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from models.spec import ModelSpec


def _plain_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The plain tensors holding ``t``'s bytes: wrapper subclasses (DTensor, the async
    collective result, ...) have no storage of their own, so look inside them."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        for name in names:
            inner = getattr(t, name)
            if isinstance(inner, torch.Tensor):
                yield from _plain_tensors(inner)
    else:
        yield t


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


class _Held:
    """What autograd stores for a saved tensor while a meter counts: the tensor, and a release
    callback run when autograd drops it (after its backward, or with the whole graph)."""

    __slots__ = ("tensor", "_release")

    def __init__(self, tensor: torch.Tensor, release):
        self.tensor, self._release = tensor, release

    def __del__(self) -> None:
        self._release()


class SavedTensorMeter:
    """Context manager: live and peak bytes of tensors held for backward (see module doc).

    Saved tensors are reference-counted per storage through :class:`_Held` (O(1) per event);
    SAC-cached outputs, which have no release event, are weak references checked when counting.
    """

    _active: "SavedTensorMeter | None" = None

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        """``exclude``: tensors that are not activations (see :func:`state_tensors`)."""
        self._excluded = {p.untyped_storage().data_ptr() for t in exclude for p in _plain_tensors(t)}
        self._saves: dict[int, list[int]] = {}  # storage -> [live saves of it, bytes]
        self._saved_bytes = 0
        self._cached: dict[int, tuple[StorageWeakRef, int]] = {}  # storage -> (weak ref, bytes)
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._previous: SavedTensorMeter | None = None

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        self._previous, SavedTensorMeter._active = SavedTensorMeter._active, self
        return self

    def __exit__(self, *exc) -> None:
        SavedTensorMeter._active = self._previous
        self._hooks.__exit__(*exc)

    def _storages(self, t: torch.Tensor) -> Iterator[tuple[int, torch.UntypedStorage]]:
        """(key, storage) of each activation storage behind ``t``; none for parameters/buffers."""
        if not isinstance(t, torch.Tensor) or _is_parameter_like(t):
            return
        # Only the outer tensor says whether it is a parameter: a DTensor made by from_local
        # wraps its input as a grad-requiring leaf, which is an activation all the same.
        for local in _plain_tensors(t):
            if local.device.type == "meta":
                continue
            storage = local.untyped_storage()
            key = storage.data_ptr()
            if key not in self._excluded and storage.nbytes() > 0:
                yield key, storage

    def _pack(self, t: torch.Tensor):
        keys = []
        for key, storage in self._storages(t):
            entry = self._saves.setdefault(key, [0, storage.nbytes()])
            if entry[0] == 0:
                self._saved_bytes += entry[1]
            entry[0] += 1
            keys.append(key)
        if not keys:
            return t
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())
        return _Held(t, lambda: self._release(keys))

    def _release(self, keys: list[int]) -> None:
        for key in keys:
            entry = self._saves[key]
            entry[0] -= 1
            if entry[0] == 0:
                self._saved_bytes -= entry[1]
                del self._saves[key]

    def add(self, t: torch.Tensor) -> None:
        """Count ``t`` as held for backward until it is freed (for tensors kept outside autograd)."""
        for key, storage in self._storages(t):
            known = self._cached.get(key)
            if known is None or known[0].expired():
                self._cached[key] = (StorageWeakRef(storage), storage.nbytes())
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())

    def live_bytes(self) -> int:
        """Bytes held for backward now (each storage once)."""
        for key in [k for k, (ref, _) in self._cached.items() if ref.expired()]:
            del self._cached[key]
        cached = sum(nbytes for key, (_, nbytes) in self._cached.items() if key not in self._saves)
        return self._saved_bytes + cached

    @classmethod
    def note_cached(cls, tensors) -> None:
        """Called by the SAC policy for outputs it keeps; counted by the innermost active meter."""
        if cls._active is not None:
            for t in tensors if isinstance(tensors, (tuple, list)) else (tensors,):
                cls._active.add(t)


def _unpack(packed):
    return packed.tensor if isinstance(packed, _Held) else packed


@contextlib.contextmanager
def _fake_tp_mesh(tp: int) -> Iterator[object]:
    """A one-process mesh of ``tp`` ranks on the 'fake' backend: real local shapes, no traffic."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    try:
        yield init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()


def _measure(spec: ModelSpec, recompute: str, b: int, s: int, dtype: torch.dtype, tp: int, sp: bool, layer: int) -> int:
    # Imported here: runtime.recompute imports this module for the meter.
    from runtime.model import Block, rope_table
    from runtime.recompute import checkpoint_block

    torch.manual_seed(0)
    block = Block(spec, layer).to(dtype)
    rope = rope_table(spec, dtype)[:, :s] if spec.position == "rope" else None
    x = torch.randn(b, s // tp if sp else s, spec.hidden_size, dtype=dtype, requires_grad=True) * 1.0
    with contextlib.ExitStack() as stack:
        if tp > 1:
            from runtime.tp import parallelize_block

            parallelize_block(block, stack.enter_context(_fake_tp_mesh(tp)), sp)
        block = checkpoint_block(block, recompute)
        with SavedTensorMeter([*state_tensors(block), *([rope] if rope is not None else [])]) as meter:
            y = block(x, rope)
        held = meter.live_bytes()
        del y
    return held


def _child(conn, args: tuple) -> None:
    try:
        conn.send(("ok", _measure(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


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
    tensor-parallelised on a fake process group in a forked child process: DTensor's caches
    outlive ``destroy_process_group`` and, measured, made a later real tp=2 run in (or forked
    from) the same process train on the fake groups' no-op collectives.
    """
    if sp and tp == 1:
        raise ValueError("sequence parallel needs tp > 1")
    args = (spec, recompute, micro_batch, seq_len, dtype, tp, sp, layer_index)
    if tp == 1:
        return _measure(*args)
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if dist.is_initialized():
        raise RuntimeError("measure_saved_bytes_per_layer(tp>1) forks: call it from a process without a process group")
    from runtime.launch import cpu_context  # fork-server: safe when the caller has other threads

    ctx = cpu_context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, args))
    child.start()
    status, value = receive.recv()
    child.join()
    if status != "ok":
        raise RuntimeError(f"measuring a tp={tp} block failed in the child process:\n{value}")
    return value
