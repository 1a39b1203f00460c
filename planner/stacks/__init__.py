"""Software-stack profiles: what a training framework does by default, as data.

One YAML file per stack in ``planner/stacks/presets/<name>.yaml`` (like the GPU presets), every
field with its source in the file's ``sources`` block. A profile says which kernels run
(attention, fused norms, compiled elementwise chains), how the framework overlaps its
communication (TP backward overlap, gradient reduction, ZeRO-3 gathers), what its "selective"
recompute keeps, how it computes the loss and what its allocator reserves, and which plan knobs
it uses when the user does not say (``defaults``). The cost model reads the profile of
``Training.stack``; ``--stack NAME`` picks it and ``--set stack.FIELD=VALUE`` overrides a field.

The constants fitted to published runs (``bench/fit.py --write``) live beside the presets in
``fitted.yaml``: a compute scale per GPU generation and per stack with enough runs, and the
leave-one-source-out residuals that give every prediction its
interval. A profile as loaded carries them (``compute_scale``, ``interval``).
"""

from __future__ import annotations

import difflib
import json
import math
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import SpecError, format_validation_error

PRESETS_DIR = Path(__file__).parent / "presets"
FITTED = Path(__file__).parent / "fitted.yaml"
DEFAULT_STACK = "megatron-core"
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KnobDefaults(_Strict):
    """Plan knobs the stack uses when the user does not fix them (``estimate`` of a partial plan)."""

    zero: int = Field(ge=0, le=3, description="Optimizer/gradient/parameter sharding stage (FSDP = 3).")
    sequence_parallel: bool = Field(description="Sequence parallelism whenever tp > 1.")
    recompute: Literal["none", "selective", "full"] = Field(description="Activation recompute per block.")


class Zero3Spec(_Strict):
    """How the stack runs ZeRO-3/FSDP's parameter gathers and gradient reduce-scatters."""

    span: Literal["node", "gpu"] = Field(
        description="Bandwidth of a shard group spanning nodes: 'node' = NCCL rings over all of a node's "
        "NICs (hardware.comm.bus_bandwidth_Bps); 'gpu' = each rank's own NIC."
    )
    prefetch_elements: float | None = Field(
        description="Parameters the gather prefetch may hold in flight (DeepSpeed "
        "stage3_prefetch_bucket_size); null = the whole next block (FSDP). A phase's gathers hide under "
        "the share min(1, prefetch / largest local weight matrix) of its compute "
        "(cost.data_parallel.zero3_overlap)."
    )
    reshard_after_forward_with_pp: bool = Field(
        description="With pp > 1, free the gathered weights after forward and gather again for backward "
        "(else they stay unsharded from forward to backward: no backward gather, more memory)."
    )


class MemorySpec(_Strict):
    """Memory the stack holds beyond the model states and activations."""

    loss_fp32_logit_copies: float = Field(
        ge=0.0,
        description="fp32 copies of the (tp-sharded) logits alive at the loss's peak, beside the 16-bit "
        "logits: upcast, log-softmax output kept for backward, its gradient.",
    )
    loss_parallel_fp32_logit_copies: float | None = Field(
        default=None,
        ge=0.0,
        description="The same with tp > 1 where the loss runs vocab-parallel through another code path "
        "(DTensor loss_parallel); null: as without tp.",
    )
    reserve_fraction: float = Field(
        ge=0.0, lt=1.0, description="Caching-allocator memory reserved beyond the allocated peak, as a fraction of it."
    )


class Interval(_Strict):
    """Quantiles of log(measured / predicted) throughput, leave-one-source-out (bench/fit.py)."""

    q10: float = 0.0
    q90: float = 0.0
    runs: int = 0  # residuals they come from (0: no fit yet, the interval is the point)


class StackProfile(_Strict):
    """One training software stack and its defaults (see the module docstring)."""

    name: str = Field(description="Preset name, the value of --stack.")
    title: str = Field(description="How it is named in prose.")
    description: str = Field(description="What it is and which versions the fields describe.")
    export_target: Literal["megatron", "torchtitan", "deepspeed"] | None = Field(
        description="The `autopar export --to` target whose default stack this is (null: none)."
    )
    defaults: KnobDefaults
    attention_impl: Literal["flash", "eager"] = Field(description="Attention kernel (training.attention_impl).")
    norm_impl: Literal["fused", "unfused"] = Field(
        description="Fused norm, bias-dropout-add and activation kernels (a fused SwiGLU keeps no activation output)."
    )
    fp8_saves_inputs: bool = Field(
        description="Under FP8, linears keep their inputs in FP8 for the weight gradient (Transformer Engine); "
        "else in 16-bit (torchao Float8Linear saves the high-precision input and casts again in backward)."
    )
    tp_overlap: Literal["backward", "none", "full"] = Field(
        description="TP collectives under GEMMs: backward (column linears' backward), full (also forward and "
        "the gradient all-gather, sequence parallel only), none."
    )
    cp_grad_fp32: bool = Field(
        description="Context parallel: the cp ranks' K/V gradients are accumulated and exchanged in fp32 "
        "(torch's context_parallel); else in the compute dtype (Transformer Engine's P2P ring)."
    )
    grad_reduce_dtype: Literal["auto", "fp32", "bf16"] = Field(description="Gradient accumulation/reduce dtype.")
    sp_keeps_gathered_input: bool = Field(
        description="Under sequence parallelism a column-parallel linear saves the all-gathered "
        "(full-sequence) input for backward; else the sequence-sharded one, re-gathered in backward."
    )
    selective_recompute: Literal["attention_core", "op_policy", "matmul_outputs"] = Field(
        description="What 'selective' recomputes: the attention core (Megatron; with flash attention its "
        "inputs are kept and nothing s^2 is stored); an op-level policy that keeps every matmul output "
        "but every second one and recomputes the rest (torchtitan 'op' SAC); or every matmul and "
        "attention output kept, the elementwise ops recomputed (autopar's runtime)."
    )
    zero2_reduce_every_microbatch: bool = Field(
        description="ZeRO-2 reduce-scatters the gradients of every micro-batch (DeepSpeed, FSDP "
        "SHARD_GRAD_OP); else once per step under the last backward, as the distributed optimizer."
    )
    dp_grad_overlap: bool = Field(
        description="Gradient all-reduce/reduce-scatter in buckets under the remaining backward "
        "(else it starts after the last backward)."
    )
    master_weights: Literal["optimizer", "parameters"] = Field(
        description="Where the fp32 master weights of a 16-bit run live: 'optimizer' = 16-bit parameters "
        "with fp32 copies in the optimizer (Megatron, DeepSpeed: 2 + grads + 12 bytes per parameter); "
        "'parameters' = the parameters themselves are fp32 and compute casts them (FSDP2 "
        "MixedPrecisionPolicy, torch.autocast: 4 + 4 + 8 bytes, weights sharded from ZeRO-2 on, plus the "
        "16-bit copies ZeRO-2 keeps gathered from forward to backward)."
    )
    zero3: Zero3Spec
    memory: MemorySpec
    sources: dict[str, str] = Field(description="Where each field's value comes from, by field path.")
    compute_scale: dict[str, float] = Field(
        default_factory=dict,
        description="Fitted: multiplier on the GPU preset's matmul and attention efficiency, per GPU "
        "generation (missing: 1). Written by bench/fit.py into fitted.yaml, not by hand.",
    )
    interval: Interval = Field(default_factory=Interval, description="Fitted: 80% residual band.")

    def __hash__(self) -> int:  # dict fields: hash the canonical JSON
        return hash(self.model_dump_json())

    def scale(self, generation: str) -> float:
        return self.compute_scale.get(generation, 1.0)

    def band(self, value: float, throughput: bool = False) -> tuple[float, float]:
        """The 80% interval of a predicted step time (or, ``throughput``, of a rate)."""
        lo, hi = math.exp(self.interval.q10), math.exp(self.interval.q90)
        return (value * lo, value * hi) if throughput else (value / hi, value / lo)


def list_stacks() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


@cache
def fitted() -> dict[str, Any]:
    """fitted.yaml as a mapping (empty before the first fit)."""
    if not FITTED.exists():
        return {}
    data = yaml.safe_load(FITTED.read_text()) or {}
    return data if isinstance(data, dict) else {}


def with_fitted(profile: StackProfile, fit: dict[str, Any]) -> StackProfile:
    """``profile`` with the fitted constants of ``fit`` (fitted.yaml's layout) applied."""
    gens = fit.get("generation_scale", {}) or {}
    own = (fit.get("stack_scale", {}) or {}).get(profile.name, 1.0)
    scale = {g: float(v) * float(own) for g, v in gens.items()}
    band = (fit.get("residuals", {}) or {}).get(profile.name) or (fit.get("residuals", {}) or {}).get("all")
    update: dict[str, Any] = {"compute_scale": scale}
    if band:
        update["interval"] = Interval(q10=float(band["q10"]), q90=float(band["q90"]), runs=int(band["runs"]))
    return profile.model_copy(update=update)


@cache
def _load(name: str) -> StackProfile:
    data = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
    try:
        prof = StackProfile.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"stack profile {name}")) from None
    if prof.name != name:
        raise SpecError(f"stack profile file {name}.yaml declares name {prof.name!r}; they must match")
    return with_fitted(prof, fitted())


def load_stack(name: str, overrides: dict[str, Any] | None = None) -> StackProfile:
    """The profile ``name`` with fitted constants and ``--set stack.KEY=VALUE`` overrides applied."""
    key = name.strip().lower()
    known = list_stacks()
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        raise SpecError(f"unknown stack {name!r}; {hint}")
    prof = _load(key)
    if not overrides:
        return prof
    data = json.loads(prof.model_dump_json())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise SpecError(f"--set stack.{dotted}: {part} is not a section of the stack profile")
        if leaf not in node:
            raise SpecError(f"--set stack.{dotted}: unknown field (known: {', '.join(sorted(node))})")
        node[leaf] = value
    try:
        return StackProfile.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, "stack with --set overrides")) from None


_FITTED_FIELDS = {"compute_scale", "interval"}


def stack_overrides(profile: StackProfile) -> dict[str, Any]:
    """The ``--set stack.KEY`` overrides that turn the preset ``profile.name`` into ``profile``
    (dotted paths; fitted constants are not overrides)."""
    base = json.loads(_load(profile.name).model_dump_json(exclude=_FITTED_FIELDS))
    mine = json.loads(profile.model_dump_json(exclude=_FITTED_FIELDS))
    out: dict[str, Any] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in b:
                walk(a.get(k), b[k], f"{path}.{k}" if path else k)
        elif a != b:
            out[path] = b

    walk(base, mine, "")
    return out


def default_stack() -> StackProfile:
    return load_stack(DEFAULT_STACK)


def stack_for_target(target: str) -> str | None:
    """The stack whose ``export_target`` is ``target`` (the export's default stack)."""
    return next((n for n in list_stacks() if _load(n).export_target == target), None)
