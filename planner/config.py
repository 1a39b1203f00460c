"""A fully specified parallel plan (what ``estimate`` scores and ``plan`` searches over).

Mesh order (innermost first, adjacent ranks share the innermost dimension):
``tp`` → ``cp`` → ``dp`` → ``pp``; world = dp · tp · pp · cp. Expert parallelism carves ``ep``
out of the dp · cp ranks (Megatron-Core / torchtitan convention), so it does not change the world.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from models.errors import SpecError

Recompute = Literal["none", "selective", "full"]
Schedule = Literal["gpipe", "1f1b", "interleaved"]
RECOMPUTE_OPTIONS: tuple[Recompute, ...] = ("none", "selective", "full")
SCHEDULES: tuple[Schedule, ...] = ("gpipe", "1f1b", "interleaved")
DTYPES = ("bf16", "fp16", "fp8", "fp32")


class PlanError(SpecError):
    """A plan that is not valid for the model and cluster (exit code 2); message shows the arithmetic."""


@dataclass(frozen=True)
class Training:
    """What is being trained: tokens per step and numerics."""

    global_batch: int  # sequences per optimizer step
    seq_len: int
    dtype: str = "bf16"  # compute dtype of matmuls; fp8 keeps bf16 activations (torchao/TE recipes)
    attention_impl: Literal["flash", "eager"] = "flash"
    grad_reduce_dtype: str = "auto"  # auto: fp32, fp16 for fp16 below ZeRO-3 (grad_reduce_bytes)
    # fused: fused norm and bias-dropout-add kernels (GPU frameworks); unfused: composite ops (PyTorch on CPU)
    norm_impl: Literal["fused", "unfused"] = "fused"
    # backward: TP collectives of column-parallel linears overlap their backward GEMMs (Megatron-LM
    # default); none: every TP collective is exposed (layer_cost._tp_comm_s).
    tp_overlap: Literal["backward", "none"] = "backward"

    @property
    def act_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2


def grad_reduce_bytes(train: Training, zero: int) -> int:
    """Bytes per gradient element as accumulated and reduced (on the wire and, below ZeRO-3, in the
    gradient buffer: memory.bytes_per_param), unless the training spec says: what the frameworks
    do by default. bf16 (and fp8, whose gradients are bf16) -> fp32: Megatron-LM forces
    ``accumulate_allreduce_grads_in_fp32`` for bf16 unless ``--grad-reduce-in-bf16`` (arguments.py,
    "bfloat16 requires gradient accumulation and all-reduce to be done in fp32"); torchtitan's
    FSDP2 ``reduce_dtype`` is float32. fp16 -> fp16 (Megatron's fp16 default) except under
    ZeRO-3/FSDP, which reduces in float32."""
    if train.dtype == "fp32":
        return 4
    if train.grad_reduce_dtype == "auto":
        return 2 if train.dtype == "fp16" and zero < 3 else 4
    return 4 if train.grad_reduce_dtype == "fp32" else 2


@dataclass(frozen=True)
class Parallel:
    """Degrees and knobs of one plan. ``stage_layers`` is blocks per pipeline chunk (None = even)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    micro_batch: int = 1
    zero: int = 0
    recompute: Recompute | tuple[Recompute, ...] = "none"  # one value or one per block
    schedule: Schedule = "1f1b"
    vpp: int = 1  # virtual stages (model chunks) per pipeline rank, interleaved schedule only
    sequence_parallel: bool = False
    stage_layers: tuple[int, ...] | None = field(default=None)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def chunks(self) -> int:
        return self.pp * self.vpp

    def num_micro_batches(self, global_batch: int) -> int:
        return global_batch // (self.dp * self.micro_batch)

    def recompute_of(self, block: int) -> Recompute:
        return self.recompute if isinstance(self.recompute, str) else self.recompute[block]

    def with_(self, **kw) -> "Parallel":
        return replace(self, **kw)


def check_plan(par: Parallel, train: Training, spec, num_gpus: int) -> None:
    """Reject a plan the model or cluster cannot run, showing the arithmetic (PlanError, exit 2)."""
    for name in ("dp", "tp", "pp", "cp", "ep", "micro_batch", "vpp"):
        if getattr(par, name) < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(par, name)})")
    if par.world != num_gpus:
        raise PlanError(f"dp({par.dp}) * tp({par.tp}) * pp({par.pp}) * cp({par.cp}) = {par.world} "
                        f"!= {num_gpus} GPUs in the cluster")
    if par.zero not in (0, 1, 2, 3):
        raise PlanError(f"--zero must be 0, 1, 2 or 3 (got {par.zero})")
    _check_heads(par, spec)
    _check_batch(par, train)
    _check_pipeline(par, train, spec)
    if par.ep > 1:
        if spec.moe is None:
            raise PlanError(f"--ep {par.ep} needs a mixture-of-experts model ({spec.name} is dense)")
        if (par.dp * par.cp) % par.ep or spec.moe.num_experts % par.ep:
            raise PlanError(f"ep({par.ep}) must divide dp*cp ({par.dp}*{par.cp} = {par.dp * par.cp}) and "
                            f"num_experts ({spec.moe.num_experts})")
    if not isinstance(par.recompute, str) and len(par.recompute) != spec.num_layers:
        raise PlanError(f"{len(par.recompute)} recompute choices for {spec.num_layers} layers")


def _check_heads(par: Parallel, spec) -> None:
    tp = par.tp
    if spec.num_heads % tp:
        raise PlanError(f"num_heads ({spec.num_heads}) % tp ({tp}) = {spec.num_heads % tp}: "
                        f"tensor parallelism splits heads, so tp must divide them")
    if spec.mla is None and spec.kv_heads % tp and tp % spec.kv_heads:
        raise PlanError(f"num_kv_heads ({spec.kv_heads}) and tp ({tp}) must divide one another "
                        f"(kv heads are split or replicated across tp ranks)")
    ffn = spec.moe.expert_ffn_hidden_size if spec.moe else spec.ffn_hidden_size
    if spec.ffn_hidden_size % tp or ffn % tp:
        raise PlanError(f"ffn_hidden_size ({spec.ffn_hidden_size}) and expert ffn ({ffn}) must be divisible by tp ({tp})")
    if par.sequence_parallel and tp == 1:
        raise PlanError("--sequence-parallel needs tp > 1 (it splits the tp-replicated regions)")


def _check_batch(par: Parallel, train: Training) -> None:
    per_step = par.dp * par.micro_batch
    if train.global_batch % per_step:
        raise PlanError(f"global batch ({train.global_batch}) % (dp({par.dp}) * micro-batch({par.micro_batch}) "
                        f"= {per_step}) = {train.global_batch % per_step}: the batch must split evenly")
    if train.seq_len % par.cp:
        raise PlanError(f"seq_len ({train.seq_len}) % cp ({par.cp}) = {train.seq_len % par.cp}")
    if par.cp > 1 and (train.seq_len // par.cp) % 2:
        raise PlanError(f"seq_len/cp = {train.seq_len // par.cp} must be even (load-balanced causal chunks)")


def _check_pipeline(par: Parallel, train: Training, spec) -> None:
    m = par.num_micro_batches(train.global_batch)
    if par.vpp > 1 and par.schedule != "interleaved":
        raise PlanError(f"--vpp {par.vpp} needs --schedule interleaved")
    if par.schedule == "interleaved" and par.pp == 1:
        raise PlanError("--schedule interleaved needs --pp > 1 (it interleaves chunks of several pipeline ranks)")
    if par.schedule == "interleaved" and par.pp > 1 and m % par.pp:
        raise PlanError(f"interleaved 1F1B needs micro-batches ({m}) % pp ({par.pp}) == 0")
    if par.schedule in ("1f1b", "interleaved") and par.pp > 1 and m < par.pp:
        raise PlanError(f"{par.schedule} needs at least pp ({par.pp}) micro-batches, got "
                        f"global batch {train.global_batch} / (dp {par.dp} * micro-batch {par.micro_batch}) = {m}")
    if par.chunks > spec.num_layers:
        raise PlanError(f"pp*vpp = {par.chunks} pipeline chunks > {spec.num_layers} layers")
    if par.stage_layers is not None:
        if len(par.stage_layers) != par.chunks:
            raise PlanError(f"--stage-layers has {len(par.stage_layers)} entries, expected pp*vpp = {par.chunks}")
        if sum(par.stage_layers) != spec.num_layers or min(par.stage_layers) < 0:
            raise PlanError(f"--stage-layers sum to {sum(par.stage_layers)}, expected {spec.num_layers} layers")
