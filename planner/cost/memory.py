"""Per-GPU memory of one pipeline rank: model states by ZeRO stage, activations, transients.

Model states (Rajbhandari et al. 2020, "ZeRO", §3 and Fig. 1): mixed-precision Adam keeps
16-bit weights (2 bytes), gradients, and 12 bytes of fp32 master weights, momentum and variance.
The gradients are held in the dtype they are accumulated and reduced in
(``config.grad_reduce_bytes``): 2 bytes for fp16 (ZeRO's 16 bytes per parameter), 4 bytes for
bf16, as Megatron-LM does ("bf16 param, fp32 grads: 18 bytes per parameter, 6 + 12/d with the
distributed optimizer", Megatron-LM README, distributed optimizer). fp32 training: 4 + 4 + 8.
ZeRO-1 shards the optimizer states, ZeRO-2 also the gradients, ZeRO-3 (= FSDP full sharding)
also the weights, over the data-parallel group (dp · cp ranks for dense weights, dp · cp / ep for
experts), or with HSDP over one replica's share of it (``Parallel.dense_shard``/``expert_shard``).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.graph import LayerGraph
from planner.config import Parallel, Training, grad_reduce_bytes, parse_headroom
from planner.records import JsonRecord

GiB = 2**30
# cuBLAS/cuDNN workspaces and NCCL channel buffers allocated through the caching allocator.
WORKSPACE_BYTES = 0.5 * GiB
# Device memory the CUDA context, NCCL and the driver take before the allocator sees any.
CONTEXT_BYTES = 1.0 * GiB


@dataclass(frozen=True)
class StateBytes:
    weights: float
    gradients: float
    optimizer: float


def bytes_per_param(train: Training, zero: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter before sharding.

    A stack whose parameters are the fp32 masters (``stack.master_weights = parameters``: FSDP2's
    MixedPrecisionPolicy and its like): 4/4/8 whatever the compute dtype (fp32 weights and
    gradients, Adam's two moments), plus the compute copies of ``unsharded_bytes_per_param``;
    the reduce dtype changes only the wire.

    fp32: 4/4/8. 16-bit below ZeRO-3: 2 / grad_reduce_bytes / 12, so 2/4/12 = 18 for bf16 (Megatron)
    and 2/2/12 = 16 for fp16 (ZeRO). ZeRO-3 (FSDP2): 2/2/12 = 16 whatever the reduce dtype, because
    FSDP2 keeps no 16-bit shard: its sharded fp32 parameter is the master copy and its sharded
    gradient is fp32, 4 + 4 + 8 = 16 bytes in all (the 16-bit weights exist only gathered)."""
    if train.dtype == "fp32" or train.stack.master_weights == "parameters":
        return 4, 4, 8
    if zero >= 3:
        return 2, 2, 12
    return 2, grad_reduce_bytes(train, zero), 12


def fragmentation(train: Training) -> float:
    """Allocator memory reserved beyond the allocated peak, as a fraction of it (the stack's
    ``memory.reserve_fraction``): published peaks are ``max_memory_reserved``."""
    return train.stack.memory.reserve_fraction


def holds_unsharded(train: Training, par: Parallel) -> bool:
    """ZeRO-3 under pipeline parallelism in a stack that keeps the gathered weights from forward
    to backward (torchtitan ``reshard_after_forward = not pp_enabled``): the rank holds every one
    of its layers' 16-bit weights unsharded."""
    return par.zero == 3 and par.pp > 1 and not train.stack.zero3.reshard_after_forward_with_pp


def weight_shard_stage(train: Training) -> int:
    """The ZeRO stage from which weights are sharded: 3, or 2 where the parameters are the fp32
    masters (FSDP2 shards them at ZeRO-2 too, and holds gathered copies: ``unsharded_bytes_per_param``)."""
    return 2 if train.stack.master_weights == "parameters" else 3


def unsharded_bytes_per_param(train: Training, par: Parallel) -> float:
    """Bytes per local parameter held unsharded beyond the model states: under ``holds_unsharded``
    the unsharded 16-bit weights and the unsharded fp32 gradients accumulated over the
    micro-batches (FSDP2 ``to_accumulated_grad_if_needed``). Where the fp32 parameters are the
    masters, also the compute-dtype copies held from forward to backward: FSDP2's gathered
    weights under ZeRO-2 (``reshard_after_forward=False``), or, without FSDP (ZeRO 0/1, or dp·cp 1),
    the 16-bit casts of a 16-bit run (runtime/precision.py ``CastCache``); ZeRO-3 gathers per
    block (``zero3_gather_bytes``)."""
    w = 4 if train.dtype == "fp32" else 2
    held = (w + 4) if holds_unsharded(train, par) else 0.0
    if train.stack.master_weights == "parameters":
        fsdp = par.zero >= 2 and par.dp * par.cp > 1  # FSDP shards over dp x cp (torchtitan's dp_shard x cp)
        if (fsdp and par.zero == 2) or (not fsdp and train.dtype != "fp32"):
            held += w
    return held


def loss_transient_bytes(tokens: float, vocab: int, tp: int, train: Training) -> float:
    """fp32 logit copies the loss holds at its peak beyond the fp32 logits the head saves
    (``memory.loss_fp32_logit_copies`` − 1 of them, vocab-sharded by tp): Megatron's gradient of the
    logits (Korthikanti et al. 2022 §4.3); torchtitan's upcast, log-softmax output and gradient,
    and with tp > 1 ``memory.loss_parallel_fp32_logit_copies`` (DTensor's vocab-parallel loss)."""
    m = train.stack.memory
    copies = m.loss_fp32_logit_copies
    if tp > 1 and m.loss_parallel_fp32_logit_copies is not None:
        copies = m.loss_parallel_fp32_logit_copies
    return max(copies - 1.0, 0.0) * tokens * vocab / tp * 4


def model_state_bytes(
    dense: float,
    expert: float,
    zero: int,
    dp_dense: int,
    dp_expert: int,
    train: Training,
    unsharded_per_param: float = 0.0,
) -> StateBytes:
    """Weights, gradients and optimizer bytes on one GPU after ZeRO sharding (ZeRO §3) over
    ``dp_dense`` ranks for dense parameters and ``dp_expert`` for routed experts (the shard groups),
    plus ``unsharded_per_param`` bytes of weights per local parameter (``holds_unsharded``)."""
    w, g, o = bytes_per_param(train, zero)

    def shard(nbytes_per_param: float, stage_needed: int) -> float:
        if zero >= stage_needed:
            return nbytes_per_param * (dense / dp_dense + expert / dp_expert)
        return nbytes_per_param * (dense + expert)

    weights = shard(w, weight_shard_stage(train)) + unsharded_per_param * (dense + expert)
    return StateBytes(weights=weights, gradients=shard(g, 2), optimizer=shard(o, 1))


def largest_matrix_params(graph: LayerGraph, par: Parallel) -> float:
    """Parameters of the largest dense weight matrix on one GPU (tp-split), over the blocks."""
    return max(
        (
            op.fwd_flops / 2 / (par.tp if op.shard == "tp" else 1)
            for layer in graph.blocks
            for op in layer.ops
            if op.kind == "matmul" and not op.expert
        ),
        default=0.0,
    )


def zero3_gather_bytes(largest_layer_params: float, dtype: str) -> float:
    """FSDP keeps the unsharded weights of the running layer and of the prefetched next one,
    plus the unsharded fp32 gradient of the layer being reduce-scattered (FSDP2 design notes)."""
    w = 4 if dtype == "fp32" else 2
    return largest_layer_params * (2 * w + 4)


def zero3_parameter_gather_bytes(largest_matrix: float, train: Training) -> float | None:
    """A stack that gathers per weight matrix with a prefetch of P parameters (DeepSpeed stage 3,
    ``zero3.prefetch_elements``) holds the running matrix and its fp32 gradient and the prefetched
    P parameters: ``largest·(w + 4) + P·w``, whatever the placement. None for block-granular FSDP."""
    prefetch = train.stack.zero3.prefetch_elements
    if prefetch is None:
        return None
    w = 4 if train.dtype == "fp32" else 2
    return largest_matrix * (w + 4) + prefetch * w


@dataclass(frozen=True)
class StageMemory(JsonRecord):
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
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.transient_bytes
            + self.comm_buffer_bytes
            + self.workspace_bytes
            + self.fragmentation_bytes
        )

    def to_json(self) -> dict[str, float]:
        d = {k: float(getattr(self, k)) for k in self.__dataclass_fields__}
        d["total_bytes"] = float(self.total_bytes)
        return d


def stage_memory(
    states: StateBytes, activations: float, inflight: float, transient: float, comm_buffers: float, frag: float
) -> StageMemory:
    live = states.weights + states.gradients + states.optimizer + activations + transient + comm_buffers
    return StageMemory(
        states.weights,
        states.gradients,
        states.optimizer,
        activations,
        inflight,
        transient,
        comm_buffers,
        WORKSPACE_BYTES,
        frag * live,
    )


def headroom_bytes(hbm_bytes: float, train: Training | None) -> float:
    """The memory the user keeps free (``--memory-headroom``): a share of HBM or GiB."""
    if train is None:
        return 0.0
    value, unit = parse_headroom(train.memory_headroom)
    return value * hbm_bytes if unit == "%" else value * GiB


def capacity_bytes(hbm_bytes: float, train: Training | None = None) -> float:
    """What a plan may use: HBM minus context/driver reservations and the user's headroom."""
    return hbm_bytes - CONTEXT_BYTES - headroom_bytes(hbm_bytes, train)
