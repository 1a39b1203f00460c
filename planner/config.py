"""A fully specified parallel plan (what ``estimate`` scores and ``plan`` searches over), the
training numerics, and the one place cross-knob rules are checked (``check_plan``).

Mesh order (innermost first, adjacent ranks share the innermost dimension):
``tp`` → ``cp`` → ``dp`` → ``pp``; world = dp · tp · pp · cp. Expert parallelism carves ``ep``
out of the dp · cp ranks (Megatron-Core / torchtitan convention), so it does not change the world.
HSDP splits dp into ``dp_replicate`` (outer) × dp/dp_replicate (inner): ZeRO shards over the
inner dp · cp ranks, a node when the planner picks it, and gradients are all-reduced across the
replicas (PyTorch FSDP ``HYBRID_SHARD``; torchtitan ``data_parallel_replicate_degree``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from models.errors import SpecError
from planner.knobs import KNOBS, describe, field_path, recompute_summary
from planner.schedules import SCHEDULES, Schedule
from planner.stacks import StackProfile, default_stack

# "none", "selective", "full", or a kept set "keep:<tensor>+<tensor>" (planner/kept_sets.py).
Recompute = str
# Default memory headroom: the median |error| of the memory model on the published runs with a
# measured peak (bench/accuracy.py: 4.7% on the shared reference's 12, 7.0% on all 20), rounded up.
DEFAULT_HEADROOM = "5%"
DTYPES = ("bf16", "fp16", "fp8", "fp32")
__all__ = ["DTYPES", "Parallel", "PlanError", "Training", "check_plan", "grad_reduce_bytes"]


class PlanError(SpecError):
    """A plan that is not valid for the model and cluster (exit code 2); the message shows the
    arithmetic, ``field`` names the knob it concerns (``tp``, ``micro_batch``, ``stage_layers``)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


TP_OVERLAP = ("backward", "none", "full")  # Training.tp_overlap's values


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
    # default); full: also the forward and gradient all-gathers / reduce-scatters of sequence
    # parallelism under the GEMMs beside them (Transformer Engine --tp-comm-overlap, torchtitan async
    # TP); none: every TP collective is exposed (cost.layer._tp_comm_s). Values: TP_OVERLAP.
    tp_overlap: Literal["backward", "none", "full"] = "backward"
    # The software stack whose behaviour the cost model prices (planner/stacks); the four fields
    # above take its values when built from the command line (planner.inputs.build_training).
    stack: StackProfile = field(default_factory=default_stack)
    # Memory kept free on every GPU: "5%" of HBM or "4GiB" (cost.memory.headroom_bytes).
    memory_headroom: str = DEFAULT_HEADROOM

    @property
    def act_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2


def parse_headroom(text: str) -> tuple[float, str]:
    """``5%`` -> (0.05, "%"), ``4GiB`` / ``4`` -> (4.0, "GiB"); SpecError otherwise."""
    t = str(text).strip().replace(" ", "")
    try:
        if t.endswith("%"):
            value, unit = float(t[:-1]) / 100, "%"
        else:
            value, unit = float(t[:-3] if t.lower().endswith("gib") else t), "GiB"
    except ValueError:
        raise SpecError(f"--memory-headroom {text!r}: expected a percentage (5%) or GiB (4GiB)") from None
    if not math.isfinite(value) or value < 0 or (unit == "%" and value >= 1):
        raise SpecError(f"--memory-headroom {text!r}: must be a finite value >= 0 (and below 100%)")
    return value, unit


def grad_reduce_bytes(train: Training, zero: int) -> int:
    """Bytes per gradient element as accumulated and reduced (on the wire and, below ZeRO-3, in the
    gradient buffer: cost.memory.bytes_per_param), unless the training spec says: what the
    frameworks do by default. bf16 (and fp8, whose gradients are bf16) -> fp32: Megatron-LM forces
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
    """Degrees and knobs of one plan (planner.knobs describes each). ``stage_layers`` is blocks
    per pipeline chunk (None = the even split)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    micro_batch: int = 1
    zero: int = 0
    recompute: Recompute | tuple[Recompute, ...] = "none"  # one value or one per block
    schedule: str = "1f1b"
    vpp: int = 1  # virtual stages (model chunks) per pipeline rank, interleaved schedule only
    sequence_parallel: bool = False
    stage_layers: tuple[int, ...] | None = field(default=None)
    dp_replicate: int = 1  # HSDP replicas (1: ZeRO shards over all dp·cp ranks)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def chunks(self) -> int:
        return self.pp * self.vpp

    @property
    def dense_dp(self) -> int:
        """Ranks that hold replicas of a dense weight: the data-parallel group, context ranks included."""
        return self.dp * self.cp

    @property
    def expert_dp(self) -> int:
        """Ranks that hold replicas of a routed expert: dp·cp/ep."""
        return self.dp * self.cp // self.ep

    @property
    def dense_shard(self) -> int:
        """Ranks a ZeRO-sharded dense state is split over: dp·cp, or one HSDP replica's dp·cp/dp_replicate."""
        return self.dense_dp // self.dp_replicate

    @property
    def expert_shard(self) -> int:
        """Ranks a ZeRO-sharded expert state is split over: dp·cp/(ep·dp_replicate)."""
        return self.expert_dp // self.dp_replicate

    @property
    def schedule_spec(self) -> Schedule:
        return SCHEDULES[self.schedule]

    def num_micro_batches(self, global_batch: int) -> int:
        return global_batch // (self.dp * self.micro_batch)

    def recompute_of(self, block: int) -> Recompute:
        return self.recompute if isinstance(self.recompute, str) else self.recompute[block]

    def recompute_summary(self) -> str:
        """``full``, or ``2 none, 30 full`` for per-block recompute."""
        return recompute_summary(self.recompute)

    def knob_values(self, **extra: Any) -> dict[str, Any]:
        return {k.name: getattr(self, k.name) for k in KNOBS} | extra

    def describe(
        self, style: Literal["compact", "full", "long"] = "compact", num_micro_batches: int | None = None
    ) -> str:
        """compact: ``dp8 tp2 pp4 cp1 ep1 zero1 mb1 interleaved v2`` (the mesh and per-rank knobs);
        full: compact + `` sp · recompute 2 none, 30 full``; long: ``dp 8 · tp 2 · ... · sp`` for tables."""
        extra = {} if num_micro_batches is None else {"num_micro_batches": num_micro_batches}
        values = self.knob_values(**extra)
        if style == "long":
            text = describe(values, "long") + f" · recompute {self.recompute_summary()}"
            return text + (" · sp" if self.sequence_parallel else "")
        text = describe(values, "compact")
        if style == "full":
            text += (" sp" if self.sequence_parallel else "") + f" · recompute {self.recompute_summary()}"
        return text

    def with_(self, **kw: Any) -> Parallel:
        return replace(self, **kw)


def check_plan(par: Parallel, train: Training, spec: Any, num_gpus: int) -> None:
    """Reject a plan the model or cluster cannot run, showing the arithmetic (PlanError, exit 2)."""
    for knob in KNOBS:
        if knob.kind == "int" and getattr(par, knob.name) is not None:
            try:
                knob.check(getattr(par, knob.name))
            except SpecError as exc:
                raise PlanError(str(exc), knob.name) from None
    if par.world != num_gpus:
        raise PlanError(
            f"dp({par.dp}) * tp({par.tp}) * pp({par.pp}) * cp({par.cp}) = {par.world} "
            f"!= {num_gpus} GPUs in the cluster",
            "dp",
        )
    _check_heads(par, spec)
    _check_batch(par, train)
    _check_pipeline(par, train, spec)
    _check_data_parallel(par, spec)
    if not isinstance(par.recompute, str) and len(par.recompute) != spec.num_layers:
        raise PlanError(f"{len(par.recompute)} recompute choices for {spec.num_layers} layers", "recompute")


def _check_heads(par: Parallel, spec: Any) -> None:
    tp = par.tp
    if spec.num_heads % tp:
        raise PlanError(
            f"num_heads ({spec.num_heads}) % tp ({tp}) = {spec.num_heads % tp}: "
            f"tensor parallelism splits heads, so tp must divide them",
            "tp",
        )
    if spec.mla is None and spec.kv_heads % tp and tp % spec.kv_heads:
        raise PlanError(
            f"num_kv_heads ({spec.kv_heads}) and tp ({tp}) must divide one another "
            f"(kv heads are split or replicated across tp ranks)",
            "tp",
        )
    ffn = spec.moe.expert_ffn_hidden_size if spec.moe else spec.ffn_hidden_size
    if spec.ffn_hidden_size % tp or ffn % tp:
        raise PlanError(
            f"ffn_hidden_size ({spec.ffn_hidden_size}) and expert ffn ({ffn}) must be divisible by tp ({tp})", "tp"
        )
    if par.sequence_parallel and tp == 1:
        raise PlanError("--sequence-parallel needs tp > 1 (it splits the tp-replicated regions)", "sequence_parallel")


def _check_batch(par: Parallel, train: Training) -> None:
    per_step = par.dp * par.micro_batch
    if train.global_batch % per_step:
        raise PlanError(
            f"global batch ({train.global_batch}) % (dp({par.dp}) * micro-batch({par.micro_batch}) "
            f"= {per_step}) = {train.global_batch % per_step}: the batch must split evenly",
            "micro_batch",
        )
    if train.seq_len % par.cp:
        raise PlanError(f"seq_len ({train.seq_len}) % cp ({par.cp}) = {train.seq_len % par.cp}", "cp")
    if par.cp > 1 and (train.seq_len // par.cp) % 2:
        raise PlanError(f"seq_len/cp = {train.seq_len // par.cp} must be even (load-balanced causal chunks)", "cp")


def _check_pipeline(par: Parallel, train: Training, spec: Any) -> None:
    m, sched = par.num_micro_batches(train.global_batch), SCHEDULES.get(par.schedule)
    if sched is None:
        raise PlanError(f"--schedule must be one of {', '.join(SCHEDULES)} (got {par.schedule!r})", "schedule")
    if par.vpp > 1 and not sched.virtual_stages:
        raise PlanError(f"--vpp {par.vpp} needs --schedule interleaved", "vpp")
    if sched.virtual_stages and par.pp == 1:
        raise PlanError(
            f"--schedule {par.schedule} needs --pp > 1 (it interleaves chunks of several pipeline ranks)", "schedule"
        )
    if sched.microbatches_multiple_of_pp and par.pp > 1 and m % par.pp:
        raise PlanError(f"{sched.title} needs micro-batches ({m}) % pp ({par.pp}) == 0", "num_micro_batches")
    if sched.min_microbatches_pp and par.pp > 1 and m < par.pp:
        raise PlanError(
            f"{par.schedule} needs at least pp ({par.pp}) micro-batches, got global batch "
            f"{train.global_batch} / (dp {par.dp} * micro-batch {par.micro_batch}) = {m}",
            "pp",
        )
    if par.chunks > spec.num_layers:
        raise PlanError(f"pp*vpp = {par.chunks} pipeline chunks > {spec.num_layers} layers", "pp")
    if par.stage_layers is not None:
        if len(par.stage_layers) != par.chunks:
            raise PlanError(
                f"--stage-layers has {len(par.stage_layers)} entries, expected pp*vpp = {par.chunks}", "stage_layers"
            )
        if sum(par.stage_layers) != spec.num_layers:
            raise PlanError(
                f"--stage-layers sum to {sum(par.stage_layers)}, expected {spec.num_layers} layers", "stage_layers"
            )
        if min(par.stage_layers) < 1:
            raise PlanError(
                f"--stage-layers {','.join(map(str, par.stage_layers))}: every pipeline chunk needs at least one "
                "block (a chunk of only the embedding or the head is a stage the runtime refuses)",
                "stage_layers",
            )


def _check_data_parallel(par: Parallel, spec: Any) -> None:
    """Experts carve ep out of dp·cp; HSDP replicas split dp and need sharded states (ZeRO-2/3)."""
    if par.ep > 1:
        if spec.moe is None:
            raise PlanError(f"--ep {par.ep} needs a mixture-of-experts model ({spec.name} is dense)", "ep")
        if par.dense_dp % par.ep or spec.moe.num_experts % par.ep:
            raise PlanError(
                f"ep({par.ep}) must divide dp*cp ({par.dp}*{par.cp} = {par.dense_dp}) and "
                f"num_experts ({spec.moe.num_experts})",
                "ep",
            )
    r = par.dp_replicate
    if r > 1:
        if par.zero < 2:
            raise PlanError(
                f"--dp-replicate {r} needs --zero 2 or 3: HSDP replicates a sharded model, and "
                f"ZeRO-{par.zero} shards no gradients or weights",
                "dp_replicate",
            )
        if par.dp % r:
            raise PlanError(
                f"dp_replicate ({r}) must divide dp ({par.dp}): dp % dp_replicate = {par.dp % r}", "dp_replicate"
            )
        if par.dense_shard % par.ep:
            raise PlanError(
                f"ep({par.ep}) must divide the HSDP shard group dp*cp/dp_replicate ({par.dp}*{par.cp}/"
                f"{r} = {par.dense_shard})",
                "dp_replicate",
            )


def plan_warnings(par: Parallel, train: Training, spec: Any, gpus_per_node: int) -> list[str]:
    """Valid but probably unintended: tensor parallelism across nodes (its collectives cross the
    network every layer), beyond the KV heads (K and V are replicated, not split), and a sequence
    longer than the model's positions."""
    out = []
    if par.tp > gpus_per_node:
        out.append(
            f"tp {par.tp} spans {par.tp // gpus_per_node} nodes of {gpus_per_node} GPUs: every layer's "
            "tensor-parallel collectives cross the network"
        )
    kv = spec.kv_heads if spec.mla is None else spec.num_heads
    if par.tp > kv:
        out.append(f"tp {par.tp} > {kv} KV heads: K and V are replicated on {par.tp // kv} ranks each, not split")
    if train.seq_len > spec.max_seq_len:
        out.append(
            f"seq_len {train.seq_len} > the model's max_seq_len {spec.max_seq_len}: positions it was not built for"
        )
    return out


def knob_field(name: str) -> str:
    """The plan-file path a ``PlanError.field`` points at (per-stage knobs: ``stages``)."""
    if not name:
        return "parallelism"
    path = field_path(name)
    return "stages" if path.startswith("stages[]") else path
