"""What autograd saves for one micro-batch of one pipeline chunk, traced by a dry run — the
buffer sizes of ``--memory-plan arena`` (runtime.arena).

:func:`trace_chunk` runs a chunk's forward (and loss, on the last stage) and its backward once,
under ``torch.autograd.graph.saved_tensors_hooks``, and records in order:

* every pack: the slot it goes to, or None for a tensor that stays where it is (by reference);
* every slot: the layout its copy takes (shape, strides, dtype, bytes), the position of its first
  pack, and the position of its release among the releases that happen during backward (None
  when autograd drops it only with the graph, after backward).

A slot is one copy in the arena. Two packs of the same live tensor view (an input several ops
save) share a slot, as autograd without hooks shares the tensor: the identity is the storage's
address, offset, shape, strides, dtype and version, and it only counts while that storage is
alive (a weak reference), so a new tensor the allocator puts at a freed address is a new slot.

Kept by reference, never copied (:func:`by_reference_reason`): parameters and their views and
16-bit parameter copies (``runtime.memory.is_parameter_like``: autograd saves them by
reference; a copy would duplicate model state), the chunk's buffers (RoPE tables), wrapper
subclasses such as DTensor (no storage of their own), tensors with overlapping or negative strides
(``copy_`` cannot write them), and empty tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from runtime.memory import is_parameter_like

Identity = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, int]


@dataclass(frozen=True)
class SlotSpec:
    """One arena copy per micro-batch: the layout it takes and when it lives within the
    micro-batch's forward (``packed_at``: pack position) and backward (``released_at``)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    packed_at: int
    released_at: int | None  # None: released with the graph, after backward


@dataclass(frozen=True)
class ChunkTrace:
    """A chunk's saves for one micro-batch (module docstring)."""

    slots: tuple[SlotSpec, ...]
    pack_slots: tuple[int | None, ...]  # per pack, in order: its slot, or None (by reference)
    by_reference: tuple[str, ...]  # per by-reference pack: why it was not placed
    releases: int  # slots released during backward

    @property
    def packs(self) -> int:
        return len(self.pack_slots)


def by_reference_reason(t: Any, excluded: set[int]) -> str | None:
    """Why ``t`` is kept by reference rather than copied into the arena (module docstring), or
    None when it is placed. ``excluded``: storage addresses of the chunk's parameters and buffers."""
    if not isinstance(t, torch.Tensor) or is_traceable_wrapper_subclass(t):
        return "tensor subclass"
    if is_parameter_like(t):
        return "parameter"
    if t.device.type == "meta" or t.numel() == 0:
        return "no data"
    if t.untyped_storage().data_ptr() in excluded:
        return "buffer"
    if any(s < 0 for s in t.stride()) or torch._debug_has_internal_overlap(t) != 0:
        return "overlapping strides"
    return None


def identity(t: torch.Tensor) -> Identity:
    """What makes two saves the same tensor view (module docstring)."""
    storage = t.untyped_storage()
    return (storage.data_ptr(), int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s strides are a permutation of a contiguous layout (dims of size 1 aside)."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def slot_layout(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(shape, strides, bytes) of ``t``'s copy: its own strides when it is dense (a permutation
    of a contiguous layout, which the copy can reproduce in ``numel`` elements), else contiguous."""
    stride = tuple(t.stride()) if _dense(t) else torch.empty(t.shape, device="meta").stride()
    return tuple(t.shape), tuple(stride), t.numel() * t.element_size()


class _Saved:
    """What autograd stores for a traced save; ``release`` runs when autograd drops it."""

    __slots__ = ("_release", "tensor")

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None]):
        self.tensor, self._release = tensor, release

    def __del__(self) -> None:
        self._release()


def _unpack(packed: Any) -> Any:
    return packed.tensor if isinstance(packed, _Saved) else packed


class _Tracer:
    """The pack/release recorder of :func:`trace_chunk`."""

    def __init__(self, excluded: set[int]):
        self.excluded = excluded
        self.specs: list[dict] = []
        self.pack_slots: list[int | None] = []
        self.reasons: list[str] = []
        self.live: dict[Identity, tuple[int, StorageWeakRef]] = {}
        self.count: dict[int, int] = {}
        self.released: dict[int, int] = {}
        self.phase = "forward"

    def pack(self, t: torch.Tensor) -> Any:
        if self.phase != "forward":
            raise ValueError("--memory-plan arena: a tensor was saved during backward (recomputation is not supported)")
        reason = by_reference_reason(t, self.excluded)
        if reason is not None:
            self.pack_slots.append(None)
            self.reasons.append(reason)
            return t
        key = identity(t)
        known = self.live.get(key)
        if known is None or known[1].expired():
            shape, stride, nbytes = slot_layout(t)
            slot = len(self.specs)
            self.specs.append(
                dict(shape=shape, stride=stride, dtype=t.dtype, nbytes=nbytes, packed_at=len(self.pack_slots))
            )
            self.live[key], self.count[slot] = (slot, StorageWeakRef(t.untyped_storage())), 0
        else:
            slot = known[0]
        self.count[slot] += 1
        self.pack_slots.append(slot)
        return _Saved(t, lambda: self._release(slot, key))

    def _release(self, slot: int, key: Identity) -> None:
        self.count[slot] -= 1
        if self.count[slot] == 0:
            self.live.pop(key, None)
            if self.phase == "backward":
                self.released[slot] = len(self.released)


def trace_chunk(
    forward: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None], excluded: set[int]
) -> ChunkTrace:
    """Run ``backward(forward())`` once under recording hooks (module docstring)."""
    tracer = _Tracer(excluded)
    with torch.autograd.graph.saved_tensors_hooks(tracer.pack, _unpack):
        out = forward()
        tracer.phase = "backward"
        backward(out)
        tracer.phase = "after"
        del out
    slots = tuple(SlotSpec(**s, released_at=tracer.released.get(k)) for k, s in enumerate(tracer.specs))
    return ChunkTrace(slots, tuple(tracer.pack_slots), tuple(tracer.reasons), len(tracer.released))
