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

``runtime.measure.measure_saved_bytes_per_layer`` applies the meter to one block. This module
imports no other runtime module (the SAC policy in :mod:`runtime.recompute` imports it), so it
can sit under everything that counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Self

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


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


def is_parameter_like(t: torch.Tensor | None) -> bool:
    """A leaf that requires grad (a parameter, FSDP's unsharded copy too), a 16-bit copy of a
    parameter (runtime.precision.CastCache marks them: model state, not activations), or a view
    of one of these."""
    while t is not None:
        if (t.is_leaf and t.requires_grad) or getattr(t, "_autopar_parameter_copy", False):
            return True
        t = t._base
    return False


def state_tensors(*modules: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of ``modules``: what a meter must not count as activations."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def state_storages(*modules: nn.Module) -> set[int]:
    """Storage addresses of the parameters and buffers of ``modules`` (inside wrapper subclasses)."""
    return {p.untyped_storage().data_ptr() for t in state_tensors(*modules) for p in _plain_tensors(t)}


class _Held:
    """What autograd stores for a saved tensor while a meter counts: the tensor, and a release
    callback run when autograd drops it (after its backward, or with the whole graph)."""

    __slots__ = ("_release", "tensor")

    def __init__(self, tensor: torch.Tensor, release):
        self.tensor, self._release = tensor, release

    def __del__(self) -> None:
        self._release()


class SavedTensorMeter:
    """Context manager: live and peak bytes of tensors held for backward (see module doc).

    Saved tensors are reference-counted per storage through :class:`_Held` (O(1) per event);
    SAC-cached outputs, which have no release event, are weak references checked when counting.
    """

    _active: SavedTensorMeter | None = None

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        """``exclude``: tensors that are not activations (see :func:`state_tensors`)."""
        self._excluded = {p.untyped_storage().data_ptr() for t in exclude for p in _plain_tensors(t)}
        self._saves: dict[int, list[int]] = {}  # storage -> [live saves of it, bytes]
        self._saved_bytes = 0
        self._cached: dict[int, tuple[StorageWeakRef, int]] = {}  # storage -> (weak ref, bytes)
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._previous: SavedTensorMeter | None = None

    def __enter__(self) -> Self:
        self._hooks.__enter__()
        self._previous, SavedTensorMeter._active = SavedTensorMeter._active, self
        return self

    def __exit__(self, *exc) -> None:
        SavedTensorMeter._active = self._previous
        self._hooks.__exit__(*exc)

    def _storages(self, t: torch.Tensor) -> Iterator[tuple[int, torch.UntypedStorage]]:
        """(key, storage) of each activation storage behind ``t``; none for parameters/buffers."""
        if not isinstance(t, torch.Tensor) or is_parameter_like(t):
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
