"""``measure_saved_bytes_per_layer``: the bytes one block holds for backward, measured.

It builds one :class:`runtime.model.Block`, wraps it for the recompute mode
(:mod:`runtime.recompute`), tensor-parallelises it on a fake process group when tp > 1
(:mod:`runtime.tp`), runs a forward under :class:`runtime.memory.SavedTensorMeter` and returns the
bytes held afterwards. docs/runtime.md lists the tensors it finds, which the planner's activation
model must reproduce (tests/test_runtime_memory.py, tests/test_activation_model_vs_runtime.py).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from models.spec import ModelSpec
from runtime.forkserver import cpu_context
from runtime.memory import SavedTensorMeter, state_tensors
from runtime.model import Block, rope_table
from runtime.recompute import checkpoint_block

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


@contextlib.contextmanager
def _fake_tp_mesh(tp: int) -> Iterator[DeviceMesh]:
    """A one-process mesh of ``tp`` ranks on the 'fake' backend: real local shapes, no traffic."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    try:
        yield init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()


def _measure(spec: ModelSpec, recompute: str, b: int, s: int, dtype: torch.dtype, tp: int, sp: bool, layer: int) -> int:
    torch.manual_seed(0)
    block: torch.nn.Module = Block(spec, layer).to(dtype)
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
        conn.send(("error", traceback.format_exc()))  # the parent blocks on recv: always answer
        raise


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
    tensor-parallelised on a fake process group in a child process (from the fork server,
    :mod:`runtime.forkserver`: safe when the caller has other threads): DTensor's caches
    outlive ``destroy_process_group`` and, measured, made a later real tp=2 run in (or forked
    from) the same process train on the fake groups' no-op collectives.
    """
    if sp and tp == 1:
        raise ValueError("sequence parallel needs tp > 1")
    args = (spec, recompute, micro_batch, seq_len, dtype, tp, sp, layer_index)
    if tp == 1:
        return _measure(*args)
    if dist.is_initialized():
        raise RuntimeError("measure_saved_bytes_per_layer(tp>1) forks: call it from a process without a process group")
    ctx = cpu_context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, args))
    child.start()
    status, value = receive.recv()
    child.join()
    if status != "ok":
        raise RuntimeError(f"measuring a tp={tp} block failed in the child process:\n{value}")
    return value
