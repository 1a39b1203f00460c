"""The saved-tensor hooks of ``--memory-plan arena``: each save is copied into its planned slot,
a view of one pre-allocated byte buffer (runtime.arena plans the offsets).

The pack hook walks the plan: the k-th save of the e-th forward event of the step is pack ``k``
of that event's chunk trace, so its slot is ``(chunk, micro-batch, trace.pack_slots[k])``. It
checks the save against the trace (the same layout, the same by-reference decision, the same
tensor as the slot's first pack when the trace says it is a repeat) and raises
:class:`ArenaMismatch` when the step saves something else. A new slot is checked against the
slots occupied now: its bytes may overlap none of them (if the step's order differed from the
plan's, two live tensors would share bytes; that is an error, never a silent overwrite). Then
the tensor is copied into a view of the slot with its shape, strides and dtype, and the unpack
hook returns that view. A slot is free again when autograd drops its last save.

Measured per step: ``high_water_bytes``, the largest ``offset + reserved bytes`` among the slots
occupied at any moment, and ``peak_bytes``, the largest sum of the occupied slots' reserved
bytes (what the arena holds live; it takes the place of runtime.memory.SavedTensorMeter's
figure on CPU).
"""

from __future__ import annotations

from typing import Any, Self

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from runtime.arena import ArenaLayout, SlotKey
from runtime.arena_trace import by_reference_reason, identity, slot_layout
from runtime.memory import state_storages


class ArenaMismatch(RuntimeError):
    """The step saved a tensor the plan's trace did not foresee, or at a time it did not."""


class _Held:
    """What autograd stores for a placed save: the slot's view; ``release`` runs when dropped."""

    __slots__ = ("_key", "_owner", "view")

    def __init__(self, view: torch.Tensor, owner: ArenaHooks, key: SlotKey):
        self.view, self._owner, self._key = view, owner, key

    def __del__(self) -> None:
        self._owner._release(self._key)


def _unpack(packed: Any) -> Any:
    return packed.view if isinstance(packed, _Held) else packed


class ArenaHooks:
    """Context manager for one step's forward and backward (module docstring)."""

    def __init__(self, layout: ArenaLayout, modules, device: torch.device):
        self.layout = layout
        self.arena = torch.empty(layout.arena_bytes, dtype=torch.uint8, device=device)
        self._excluded = state_storages(*modules)
        self._occupied: dict[SlotKey, list] = {}  # key -> [saves alive, identity, weak ref, view]
        self._live = 0
        self.high_water_bytes = self.peak_bytes = 0
        self.high_water_per_step: list[int] = []
        self._event, self._pack = 0, 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_hook, _unpack)

    def __enter__(self) -> Self:
        self._event, self._pack = 0, 0
        self.high_water_bytes = self.peak_bytes = 0
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.high_water_per_step.append(self.high_water_bytes)

    def record(self) -> dict[str, Any]:
        """The plan's figures and the high-water mark measured each step (for the run report)."""
        return self.layout.summary() | {"measured_high_water_bytes_per_step": self.high_water_per_step}

    def _next(self) -> tuple[int, int, int | None]:
        """(chunk, micro-batch, planned slot or None) of the save now arriving."""
        forwards = self.layout.forwards
        while self._event < len(forwards) and self._pack == self.layout.traces[forwards[self._event][0]].packs:
            self._event, self._pack = self._event + 1, 0
        if self._event == len(forwards):
            raise ArenaMismatch("a tensor was saved after the step's last planned forward")
        c, i = forwards[self._event]
        slot = self.layout.traces[c].pack_slots[self._pack]
        self._pack += 1
        return c, i, slot

    def _pack_hook(self, t: torch.Tensor) -> Any:
        c, i, slot = self._next()
        where = f"chunk {c}, micro-batch {i}, save {self._pack - 1}"
        if (by_reference_reason(t, self._excluded) is None) != (slot is not None):
            raise ArenaMismatch(f"{where}: the trace decided otherwise whether to keep it by reference")
        if slot is None:
            return t  # by reference: autograd keeps the tensor itself (a parameter, ...)
        key = (c, i, slot)
        entry = self._occupied.get(key)
        if entry is not None:  # a repeat of the slot's tensor: share the copy
            if identity(t) != entry[1] or entry[2].expired():
                raise ArenaMismatch(f"{where}: the trace saved the tensor of slot {slot} again; this is another")
            entry[0] += 1
            return _Held(entry[3], self, key)
        spec = self.layout.traces[c].slots[slot]
        shape, stride, nbytes = slot_layout(t)  # strides: the tensor's own (dims of size 1 may differ from the trace's)
        if (shape, nbytes, t.dtype) != (spec.shape, spec.nbytes, spec.dtype):
            raise ArenaMismatch(f"{where}: {shape} {t.dtype} saved where the trace had {spec.shape} {spec.dtype}")
        view = self._claim(key, t.dtype, shape, stride)
        with torch.no_grad():
            view.copy_(t.detach())
        self._occupied[key] = [1, identity(t), StorageWeakRef(t.untyped_storage()), view]
        return _Held(view, self, key)

    def _claim(self, key: SlotKey, dtype: torch.dtype, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        """The slot's view, after checking that no occupied slot shares its bytes."""
        lo, size = self.layout.offsets[key], self.layout.slot_bytes[key]
        for other in self._occupied:
            o_lo = self.layout.offsets[other]
            if lo < o_lo + self.layout.slot_bytes[other] and o_lo < lo + size:
                raise ArenaMismatch(
                    f"slot {key} would overwrite slot {other}, still alive: the step's order is not the plan's"
                )
        self._live += size
        self.peak_bytes = max(self.peak_bytes, self._live)
        self.high_water_bytes = max(self.high_water_bytes, lo + size)
        raw = self.arena[lo : lo + size].view(dtype)
        return raw.as_strided(shape, stride)

    def _release(self, key: SlotKey) -> None:
        entry = self._occupied[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._occupied[key]
            self._live -= self.layout.slot_bytes[key]
