"""Per-GPU memory of one pipeline rank: model states by ZeRO stage, activations, transients.

Model states (Rajbhandari et al. 2020, "ZeRO", §3 and Fig. 1): mixed-precision Adam keeps
2 bytes of 16-bit weights + 2 bytes of 16-bit gradients + 12 bytes of fp32 master weights,
momentum and variance = 16 bytes per parameter (fp32 training: 4 + 4 + 8). ZeRO-1 shards the
optimizer states, ZeRO-2 also the gradients, ZeRO-3 (= FSDP full sharding) also the weights,
over the data-parallel group (dp · cp ranks for dense weights, dp · cp / ep for experts).
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30
# Allocator slack: the caching allocator reserves whole segments and rounds blocks; PyTorch's
# own guidance puts fragmentation at a few percent of live tensors for training loops.
FRAGMENTATION = 0.05
# cuBLAS/cuDNN workspaces and NCCL channel buffers allocated through the caching allocator.
WORKSPACE_BYTES = 0.5 * GiB
# Device memory the CUDA context, NCCL and the driver take before the allocator sees any.
CONTEXT_BYTES = 1.0 * GiB


@dataclass(frozen=True)
class StateBytes:
    weights: float
    gradients: float
    optimizer: float


def bytes_per_param(dtype: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter before sharding: 2/2/12 or 4/4/8."""
    return (4, 4, 8) if dtype == "fp32" else (2, 2, 12)


def model_state_bytes(dense: float, expert: float, zero: int, dp_dense: int, dp_expert: int,
                      dtype: str) -> StateBytes:
    """Weights, gradients and optimizer bytes on one GPU after ZeRO sharding (ZeRO §3)."""
    w, g, o = bytes_per_param(dtype)

    def shard(nbytes_per_param: float, stage_needed: int) -> float:
        if zero >= stage_needed:
            return nbytes_per_param * (dense / dp_dense + expert / dp_expert)
        return nbytes_per_param * (dense + expert)

    return StateBytes(weights=shard(w, 3), gradients=shard(g, 2), optimizer=shard(o, 1))


def zero3_gather_bytes(largest_layer_params: float, dtype: str) -> float:
    """FSDP keeps the unsharded weights of the running layer and of the prefetched next one,
    plus the unsharded fp32 gradient of the layer being reduce-scattered (FSDP2 design notes)."""
    w = 4 if dtype == "fp32" else 2
    return largest_layer_params * (2 * w + 4)


@dataclass(frozen=True)
class StageMemory:
    """Peak bytes on one GPU of a pipeline rank, by category."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float  # in-flight micro-batches x their saved tensors
    inflight_microbatches: float
    transient_bytes: float  # rematerialised layer in backward, logits grad, FSDP gathers
    comm_buffer_bytes: float
    workspace_bytes: float
    fragmentation_bytes: float

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.transient_bytes + self.comm_buffer_bytes + self.workspace_bytes + self.fragmentation_bytes)

    def as_dict(self) -> dict[str, float]:
        d = {k: float(getattr(self, k)) for k in self.__dataclass_fields__}
        d["total_bytes"] = float(self.total_bytes)
        return d


def stage_memory(states: StateBytes, activations: float, inflight: float, transient: float,
                 comm_buffers: float) -> StageMemory:
    live = states.weights + states.gradients + states.optimizer + activations + transient + comm_buffers
    return StageMemory(states.weights, states.gradients, states.optimizer, activations, inflight,
                       transient, comm_buffers, WORKSPACE_BYTES, FRAGMENTATION * live)


def capacity_bytes(hbm_bytes: float) -> float:
    """What the caching allocator can use: HBM minus context/driver reservations."""
    return hbm_bytes - CONTEXT_BYTES
