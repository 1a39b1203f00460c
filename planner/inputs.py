"""Resolve command-line inputs into typed specs (model, cluster, training, parallel plan).

Precedence: ``--set`` overrides > spec file > preset > defaults. Every failure is a SpecError
with one line that names the offending input.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ValidationError

from hardware.cluster import ClusterSpec, load_cluster
from models.errors import SpecError, format_validation_error
from models.load import load_model
from models.spec import ModelSpec
from planner.config import DEFAULT_HEADROOM, DTYPES, TP_OVERLAP, Parallel, Training, parse_headroom
from planner.knobs import KNOBS, STACK_DEFAULTS
from planner.stacks import DEFAULT_STACK, StackProfile, list_stacks, load_stack

# Training fields only `--set` reaches. grad_reduce_dtype: the dtype gradients are reduced in over
# data parallelism; auto = what Megatron-LM and torchtitan do (config.grad_reduce_bytes).
# tp_overlap: which TP collectives hide under the GEMMs beside them (cost.layer._tp_comm_s).
TRAINING_SETS = {"grad_reduce_dtype": ("auto", "fp32", "bf16"), "tp_overlap": TP_OVERLAP}
# The cpu preset is what the bundled runtime runs on: its stack (planner/stacks/presets/autopar.yaml).
CPU_STACK = "autopar"


@dataclass(frozen=True)
class Opt:
    """A command-line option (or, with ``argument``, a positional argument) as data: the command
    modules declare theirs, and cli.py turns each into a typer parameter (``planner.commands.common.parameters``)."""

    name: str  # the Python name the command receives
    kind: Any  # its type (typer parses and checks it)
    default: Any  # ``...``: required
    flags: tuple[str, ...]
    help: str
    argument: bool = False


# What is trained, on what (estimate, plan, sweep, explain): optional options so `estimate --plan`
# can omit them; build_inputs reports missing ones (exit 2).
PROBLEM_OPTIONS = (
    Opt("model", str | None, None, ("--model", "-m"), "Preset name, spec file or HF config.json."),
    Opt("cluster", str | None, None, ("--cluster", "-c"), "GPU:N, a GPU preset or a cluster file."),
    Opt("global_batch", int | None, None, ("--global-batch", "-b"), "Sequences per optimizer step."),
    Opt("seq_len", int | None, None, ("--seq-len", "-s"), "Tokens per sequence."),
    Opt("dtype", str, "bf16", ("--dtype",), "Compute dtype: bf16, fp16, fp8 or fp32."),
    Opt(
        "attention",
        str | None,
        None,
        ("--attention",),
        "Attention kernel: flash (fused, no s^2 tensors) or eager (default: the stack's).",
    ),
    Opt(
        "stack",
        str | None,
        None,
        ("--stack",),
        f"Training software whose defaults and behaviour are priced: {', '.join(list_stacks())} "
        f"(default: {DEFAULT_STACK}; {CPU_STACK} on the cpu preset). Fields: --set stack.KEY=VALUE.",
    ),
    Opt(
        "memory_headroom",
        str | None,
        None,
        ("--memory-headroom",),
        f"Memory to keep free on every GPU: a share of HBM (5%) or GiB (4GiB); default {DEFAULT_HEADROOM}, "
        "the memory model's median error on published runs.",
    ),
)


@dataclass
class Inputs:
    model: ModelSpec
    cluster: ClusterSpec
    training: Training
    parallel: Parallel | None
    refs: dict = field(default_factory=dict)  # what the user passed: {"model": "llama3-8b", ...}
    defaulted: dict = field(default_factory=dict)  # knobs the user left out and the value they took


def parse_sets(items: list[str]) -> dict[str, dict[str, object]]:
    """``--set model.num_layers=4`` -> {"model": {"num_layers": 4}, ...}; values parsed as YAML
    scalars. ``training.KEY`` sets the numerics the command line has no flag for (TRAINING_SETS);
    ``stack.KEY`` a field of the stack profile (``stack.zero3.span=gpu``)."""
    out: dict[str, dict[str, object]] = {"model": {}, "cluster": {}, "training": {}, "stack": {}}
    for item in items:
        key, sep, value = item.partition("=")
        target, dot, path = key.partition(".")
        if not sep or not dot or target not in out or not path:
            raise SpecError(
                f"--set {item!r}: expected model.KEY=VALUE, cluster.KEY=VALUE, stack.KEY=VALUE or "
                f"training.KEY=VALUE ({', '.join(TRAINING_SETS)})"
            )
        try:
            out[target][path] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: cannot parse value: {exc}") from None
    return out


# Upper bounds (issue 21): 2**20 sequences of up to 2**24 tokens is far beyond any run; an
# unbounded batch made the micro-batch enumeration run for minutes and divide by zero at 10**18.
MAX_GLOBAL_BATCH = 2**20
MAX_SEQ_LEN = 2**24


def _positive(name: str, value: int | None, most: int) -> int:
    flag = f"--{name.replace('_', '-')}"
    if value is None:
        raise SpecError(f"missing option {flag}")
    if not 0 < value <= most:
        raise SpecError(f"{flag} must be in 1..{most:,} (got {value})")
    return value


def build_training(
    global_batch: int | None,
    seq_len: int | None,
    dtype: str,
    attention: str | None,
    sets: dict | None = None,
    stack: StackProfile | None = None,
    memory_headroom: str | None = None,
) -> Training:
    """Training from the command line: the kernels and numerics the stack runs unless
    ``--attention`` or ``--set training.KEY`` says otherwise."""
    prof = stack or load_stack(DEFAULT_STACK)
    attention = attention or prof.attention_impl
    if dtype not in DTYPES:
        raise SpecError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if attention not in ("flash", "eager"):
        raise SpecError(f"--attention must be flash or eager (got {attention!r})")
    impl = cast(Literal["flash", "eager"], attention)  # checked just above
    train = Training(
        _positive("global_batch", global_batch, MAX_GLOBAL_BATCH),
        _positive("seq_len", seq_len, MAX_SEQ_LEN),
        dtype,
        impl,
        prof.grad_reduce_dtype,
        prof.norm_impl,
        prof.tp_overlap,
        prof,
        memory_headroom or DEFAULT_HEADROOM,
    )
    parse_headroom(train.memory_headroom)  # SpecError (exit 2) when it does not parse
    return apply_training_sets(train, sets)


def apply_training_sets(train: Training, sets: dict | None) -> Training:
    """``train`` with the ``--set training.KEY=VALUE`` overrides applied (TRAINING_SETS)."""
    for key, value in (sets or {}).items():
        if key not in TRAINING_SETS:
            raise SpecError(f"--set training.{key}: unknown key (known: {', '.join(TRAINING_SETS)})")
        if str(value) not in TRAINING_SETS[key]:
            raise SpecError(f"--set training.{key} must be one of {', '.join(TRAINING_SETS[key])} (got {value!r})")
        change: dict[str, Any] = {key: str(value)}  # a TRAINING_SETS key with one of its values
        train = replace(train, **change)
    return train


def fill_defaults(knobs: dict, stack: StackProfile | None) -> tuple[dict, dict]:
    """The knobs of a partially given plan: given ones as they are, ZeRO, sequence parallelism
    (with tp > 1) and recompute from the stack's defaults, the rest from the registry. Returns
    (all knobs, {knob: value} of those defaulted)."""
    given = {k: v for k, v in knobs.items() if v is not None}
    out, defaulted = dict(given), {}
    for kn in KNOBS:
        if kn.name in given or kn.name == "dp":
            continue
        value = kn.default
        if stack is not None and kn.name in STACK_DEFAULTS:
            value = getattr(stack.defaults, kn.name)
            if kn.name == "sequence_parallel":
                value = bool(value) and int(given.get("tp", 1)) > 1
        out[kn.name] = value
        if kn.name != "stage_layers":
            defaulted[kn.name] = value
    return out, defaulted


def build_parallel(knobs: dict, num_gpus: int) -> Parallel:
    """A fixed plan from single values (a knob not given takes its registry default); dp
    defaults to GPUs / (tp·pp·cp)."""
    k = {kn.name: knobs.get(kn.name, kn.default) for kn in KNOBS}
    for kn in KNOBS:
        if k[kn.name] is not None and kn.kind in ("int", "choice", "per_block"):
            kn.check(k[kn.name])
    if k["dp"] is None:
        rest = k["tp"] * k["pp"] * k["cp"]
        if num_gpus % rest:
            raise SpecError(
                f"{num_gpus} GPUs % (tp({k['tp']}) * pp({k['pp']}) * cp({k['cp']}) = {rest}) "
                f"= {num_gpus % rest}: cannot derive dp"
            )
        k["dp"] = num_gpus // rest
    if k["stage_layers"]:
        try:
            k["stage_layers"] = tuple(int(x) for x in str(k["stage_layers"]).split(","))
        except ValueError:
            raise SpecError(f"--stage-layers {k['stage_layers']!r}: expected integers like 7,8,8,7") from None
    else:
        k["stage_layers"] = None
    return Parallel(**k)


def build_inputs(
    model: str | None,
    cluster: str | None,
    global_batch: int | None,
    seq_len: int | None,
    dtype: str,
    attention: str | None,
    sets: dict,
    knobs: dict | None,
    stack: str | None = None,
    memory_headroom: str | None = None,
) -> Inputs:
    if not model:
        raise SpecError("missing option --model (a preset such as llama3-8b, a spec file or a config.json)")
    if not cluster:
        raise SpecError("missing option --cluster (e.g. h100-sxm-80gb:8)")
    spec = load_model(model, sets.get("model") or None)
    clus = load_cluster(cluster, sets.get("cluster") or None)
    name = stack or (CPU_STACK if clus.gpu.name == "cpu" else DEFAULT_STACK)
    prof = load_stack(name, sets.get("stack") or None)
    train = build_training(global_batch, seq_len, dtype, attention, sets.get("training"), prof, memory_headroom)
    par: Parallel | None = None
    defaulted: dict[str, Any] = {}
    if knobs is not None:
        filled, defaulted = fill_defaults(knobs, prof)
        par = build_parallel(filled, clus.num_gpus)
    refs = {"model": model, "cluster": cluster, "sets": sets, "stack": name}
    return Inputs(spec, clus, train, par, refs, defaulted)


def override(obj: BaseModel, overrides: dict, cls: type[BaseModel], what: str) -> Any:
    """A resolved spec with ``--set`` dotted-path overrides applied and re-validated."""
    data = obj.model_dump()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {what}.{dotted}: {key} is not a section")
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"{what} with --set overrides")) from None
