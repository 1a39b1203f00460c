"""The registry of plan knobs: every decision a plan makes, declared once.

An entry (``Knob``) says, for one knob: its name (the ``Parallel`` field, the ``--vary`` key), its
key in plan files (``parallelism.<json_key>``), its command-line flag and help, its type and the
values it may take, its default in a hand-written plan, its ``auto`` range in the search (which
may depend on the knobs chosen before it), the wider range ``explain`` forces it through, and how
it is described (``short``: ``tp8``; ``long``: ``tp 8``). The CLI options of ``estimate``,
``plan`` and ``sweep``, candidate enumeration, the plan-file schema, ``explain``'s decisions,
``diff``'s attribution order, ``sweep``'s columns, ``validate`` and the runtime's plan reader all
iterate this registry. Cross-knob rules (``dp·tp·pp·cp = GPUs``, ...) are checked in one place,
``planner.config.check_plan``.

Registry order is the order knobs are applied in (``diff``: mesh degrees, then the schedule, then
what each rank does, then the placement the MILP decides); ``shown_at`` orders them where they are
shown: descriptions and the plan file's ``parallelism`` block.

Adding a knob: one ``Knob`` entry here and a ``Parallel`` field; then its cost (planner/cost),
its constraint if it has one (planner/search/milp), the runtime's apply step and the exports.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.errors import SpecError
from planner.kept_sets import check_kept_value, is_kept_set, short_label
from planner.schedules import SCHEDULES

RECOMPUTE_OPTIONS = ("none", "selective", "full")
# Knobs whose default in a hand-written plan is the stack's (planner/stacks ``defaults``).
STACK_DEFAULTS = ("zero", "sequence_parallel", "recompute")
# Virtual stages per rank the exact search tries when --vpp is auto (deeper ones: search/polish.py).
AUTO_VPP = (2,)
Kind = Literal["int", "bool", "choice", "per_block", "layers"]
BOOL_TEXT = {"on": True, "true": True, "off": False, "false": False}


@dataclass(frozen=True)
class Space:
    """What auto ranges depend on: the cluster, the model's depth and experts, the batch."""

    num_gpus: int
    gpus_per_node: int
    num_layers: int
    num_experts: int | None
    seq_len: int
    global_batch: int


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def powers_of_two(n: int) -> list[int]:
    """Divisors of n that are powers of two."""
    return [d for d in divisors(n) if d & (d - 1) == 0]


Chosen = Mapping[str, Any]  # knobs chosen before this one, in registry order (and dp, derived)


@dataclass(frozen=True)
class Knob:
    """One plan knob; see the module docstring."""

    name: str
    json_key: str
    flag: str
    kind: Kind
    default: Any  # value in a hand-written plan (estimate) when not given; "1 means off" for degrees
    help: str  # what the knob is (CLI help, docs)
    auto_help: str  # what ``auto`` searches
    choices: tuple = ()
    minimum: int = 1
    maximum: int | None = None
    since: str = "1.0"  # plan schema version that added the JSON key (older files: the default)
    searched: bool = True  # False: decided by the placement MILP, or derived
    shown_at: int = 0  # position in descriptions and in plan files' ``parallelism`` block
    stage_key: str = ""  # per-stage knob: its key in each ``stages[]`` entry (else in ``parallelism``)
    auto: Callable[[Space, Chosen], tuple] | None = None
    widened: Callable[[Space, Chosen], list] | None = None  # explain's counterfactual values
    applies: Callable[[Chosen], bool] = field(default=lambda chosen: True)  # else only the default
    short: Callable[[Any, Chosen], str] = field(default=lambda v, c: "")
    long: Callable[[Any, Chosen], str] = field(default=lambda v, c: "")

    def check(self, value: Any) -> Any:
        """``value`` if it is one this knob takes, else SpecError naming the flag."""
        bad = f"{self.flag} {value!r}"
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{bad}: expected an integer")
            top = f" and <= {self.maximum}" if self.maximum is not None else ""
            if value < self.minimum or (self.maximum is not None and value > self.maximum):
                raise SpecError(f"{self.flag} must be >= {self.minimum}{top} (got {value})")
        elif self.kind == "bool" and not isinstance(value, bool):
            raise SpecError(f"{bad}: expected on or off")
        elif self.kind == "per_block" and is_kept_set(value):
            check_kept_value(value)  # a named kept set (planner/kept_sets.py)
        elif self.kind in ("choice", "per_block") and value not in self.choices:
            raise SpecError(f"{self.flag} must be one of {', '.join(self.choices)} (got {value!r})")
        return value

    @property
    def path(self) -> str:
        """Where the knob lives in a plan file (``parallelism.zero_stage``, ``stages[].layers``)."""
        return f"stages[].{self.stage_key}" if self.stage_key else f"parallelism.{self.json_key}"

    @property
    def listable(self) -> bool:
        """A user may give it as a search-space list (not the per-stage split, the MILP's own)."""
        return self.kind != "layers"

    def parse(self, text: str) -> Any:
        """One value from its command-line text (``8``, ``on``, ``interleaved``)."""
        t = str(text).strip()
        if self.kind == "int":
            try:
                return self.check(int(t))
            except ValueError:
                raise SpecError(f"{self.flag} {text!r}: expected auto, an integer or a list like 1,2,4") from None
        if self.kind == "bool":
            if t.lower() not in BOOL_TEXT:
                raise SpecError(f"{self.flag} {text!r}: expected auto, on, off or on,off")
            return BOOL_TEXT[t.lower()]
        return self.check(t)

    def parse_space(self, text: str | None) -> tuple | None:
        """``auto`` (or None) -> None; ``v`` or ``v1,v2`` -> the values, each checked."""
        if text is None or str(text).strip() == "auto":
            return None
        items = [x.strip() for x in str(text).split(",") if x.strip()]
        if not items:
            raise SpecError(f"{self.flag} {text!r}: expected auto, one value or a comma list")
        if self.kind == "choice" or self.kind == "per_block":
            bad = [x for x in items if x not in self.choices and not (self.kind == "per_block" and is_kept_set(x))]
            if bad:
                raise SpecError(
                    f"{self.flag}: unknown value(s) {', '.join(bad)}; choose from {', '.join(self.choices)}"
                )
        return tuple(self.parse(x) for x in items)

    def values(self, space: Space, chosen: Chosen, given: tuple | None) -> tuple:
        """The values a candidate may take: ``given`` (the user's list) or the auto range; the
        default alone where the knob does not apply to the knobs chosen so far."""
        if not self.applies(chosen):
            return (self.default,)
        if given is not None:
            return tuple(given)
        return self.auto(space, chosen) if self.auto else (self.default,)


def _pp_applies(chosen: Chosen) -> bool:
    return chosen.get("pp", 1) > 1 and SCHEDULES[chosen.get("schedule", "1f1b")].virtual_stages


def _hsdp_short(v: int, c: Chosen) -> str:
    return f" hsdp{v}x{c['dp'] * c.get('cp', 1) // v}" if v > 1 else ""


def _hsdp_long(v: int, c: Chosen) -> str:
    return f"hsdp {v} replicas x {c['dp'] * c.get('cp', 1) // v} shards" if v > 1 else ""


KNOBS: tuple[Knob, ...] = (
    Knob(
        "dp",
        "dp",
        "--dp",
        "int",
        None,
        "Data-parallel degree",
        "GPUs/(tp*pp*cp)",
        shown_at=1,
        auto=None,
        widened=lambda s, c: [d for d in divisors(s.num_gpus) if s.global_batch % d == 0],
        short=lambda v, c: f"dp{v}",
        long=lambda v, c: f"dp {v}",
    ),
    Knob(
        "tp",
        "tp",
        "--tp",
        "int",
        1,
        "Tensor-parallel degree (1 = off)",
        "powers of 2 up to a node, max 8",
        shown_at=2,
        auto=lambda s, c: tuple(t for t in powers_of_two(s.num_gpus) if t <= min(s.gpus_per_node, 8)),
        widened=lambda s, c: [t for t in powers_of_two(s.num_gpus) if t <= min(s.gpus_per_node, 8)],
        short=lambda v, c: f"tp{v}",
        long=lambda v, c: f"tp {v}",
    ),
    Knob(
        "pp",
        "pp",
        "--pp",
        "int",
        1,
        "Pipeline-parallel degree (1 = off)",
        "divisors up to the layer count",
        shown_at=3,
        auto=lambda s, c: tuple(p for p in divisors(s.num_gpus) if p <= s.num_layers),
        widened=lambda s, c: [p for p in divisors(s.num_gpus) if p <= s.num_layers],
        short=lambda v, c: f"pp{v}",
        long=lambda v, c: f"pp {v}",
    ),
    Knob(
        "cp",
        "cp",
        "--cp",
        "int",
        1,
        "Context-parallel degree (1 = off)",
        "1, or 1-8 from 16k tokens",
        shown_at=4,
        auto=lambda s, c: tuple(x for x in powers_of_two(s.num_gpus) if x <= 8) if s.seq_len >= 16384 else (1,),
        widened=lambda s, c: [x for x in powers_of_two(s.num_gpus) if x <= 8],
        short=lambda v, c: f"cp{v}",
        long=lambda v, c: f"cp {v}",
    ),
    Knob(
        "ep",
        "ep",
        "--ep",
        "int",
        1,
        "Expert-parallel degree, carved out of dp*cp (1 = off)",
        "1 for dense models, powers of 2 dividing the experts for MoE",
        shown_at=5,
        auto=lambda s, c: (
            tuple(e for e in powers_of_two(s.num_gpus) if s.num_experts % e == 0) if s.num_experts else (1,)
        ),
        widened=lambda s, c: (
            [e for e in powers_of_two(s.num_gpus) if s.num_experts % e == 0] if s.num_experts else [1, 2]
        ),
        short=lambda v, c: f"ep{v}",
        long=lambda v, c: f"ep {v}",
    ),
    Knob(
        "schedule",
        "schedule",
        "--schedule",
        "choice",
        "1f1b",
        "Pipeline schedule",
        ", ".join(SCHEDULES),
        choices=tuple(SCHEDULES),
        shown_at=9,
        auto=lambda s, c: tuple(SCHEDULES),
        widened=lambda s, c: list(SCHEDULES),
        short=lambda v, c: v,
        long=lambda v, c: v,
    ),
    Knob(
        "vpp",
        "virtual_stages",
        "--vpp",
        "int",
        1,
        "Virtual stages (model chunks) per pipeline rank, interleaved schedule",
        "2; deeper counts are tried after the search",
        shown_at=10,
        auto=lambda s, c: AUTO_VPP,
        widened=lambda s, c: [1, 2, 4],
        applies=_pp_applies,
        short=lambda v, c: f" v{v}" if v > 1 else "",
        long=lambda v, c: f"vpp {v}" if v > 1 else "",
    ),
    Knob(
        "micro_batch",
        "micro_batch_size",
        "--micro-batch",
        "int",
        1,
        "Sequences per micro-batch per data-parallel rank",
        "1,2,4,8",
        shown_at=8,
        auto=lambda s, c: (1, 2, 4, 8),
        widened=lambda s, c: [1, 2, 4, 8],
        short=lambda v, c: f"mb{v}",
        long=lambda v, c: f"micro-batch {v}" + (f" x {c['num_micro_batches']}" if "num_micro_batches" in c else ""),
    ),
    Knob(
        "zero",
        "zero_stage",
        "--zero",
        "int",
        0,
        "ZeRO stage: 0 none, 1 optimizer, 2 +gradients, 3 +weights (FSDP)",
        "0,1,2,3",
        minimum=0,
        maximum=3,
        shown_at=6,
        auto=lambda s, c: (0, 1, 2, 3),
        widened=lambda s, c: [0, 1, 2, 3],
        short=lambda v, c: f"zero{v}",
        long=lambda v, c: f"zero {v}",
    ),
    # HSDP is searched where the user lists replica counts (``--dp-replicate 1,8``): auto keeps the
    # space (and the answers) of plain ZeRO sharding over all of dp·cp.
    Knob(
        "dp_replicate",
        "dp_replicate",
        "--dp-replicate",
        "int",
        1,
        "HSDP replicas: ZeRO-2/3 shards over "
        "dp*cp/dp_replicate ranks and gradients are all-reduced across the replicas (1 = shard over all of dp*cp)",
        "1; list replica counts, e.g. 1,8, to search HSDP",
        since="1.1",
        shown_at=7,
        auto=lambda s, c: (1,),
        widened=lambda s, c: [1],
        short=_hsdp_short,
        long=_hsdp_long,
    ),
    Knob(
        "sequence_parallel",
        "sequence_parallel",
        "--sequence-parallel",
        "bool",
        False,
        "Split the tp-replicated regions (norms, dropout) by sequence",
        "on when tp>1",
        shown_at=11,
        auto=lambda s, c: (True,),
        widened=lambda s, c: [False, True],
    ),
    Knob(
        "stage_layers",
        "stage_layers",
        "--stage-layers",
        "layers",
        None,
        "Blocks per pipeline chunk, e.g. 7,8,...,7",
        "the placement MILP decides",
        searched=False,
        shown_at=13,
        stage_key="layers",
    ),
    Knob(
        "recompute",
        "recompute",
        "--recompute",
        "per_block",
        "none",
        "Activation recompute per block: none, selective, full or a kept set keep:<tensor>+<tensor>",
        "none, selective, full per block, and where none does not fit kept sets of the block's Pareto front (the placement MILP decides)",
        choices=RECOMPUTE_OPTIONS,
        searched=False,
        shown_at=12,
        stage_key="recompute",
        auto=lambda s, c: RECOMPUTE_OPTIONS,
    ),
)
BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
SHOWN: tuple[Knob, ...] = tuple(sorted(KNOBS, key=lambda k: k.shown_at))
BY_JSON: dict[str, Knob] = {k.json_key: k for k in KNOBS}
# Knobs a user may give as a search-space list (``plan``, ``sweep``, a plan file's inputs.knobs).
SPACE_KNOBS: tuple[str, ...] = tuple(k.name for k in KNOBS if k.listable)
# Decisions ``explain`` forces to each alternative (the placement's are its per-stage rows).
DECISIONS: tuple[str, ...] = tuple(k.name for k in KNOBS if k.searched)


def recompute_summary(options: str | Sequence[str]) -> str:
    """``full`` for one option everywhere, else counts in option order: ``2 none, 30 full``."""
    if isinstance(options, str) or len(set(options)) == 1:
        return short_label(options if isinstance(options, str) else options[0])
    order = [o for o in RECOMPUTE_OPTIONS if o in options] + sorted({o for o in options} - set(RECOMPUTE_OPTIONS))
    return ", ".join(f"{list(options).count(o)} {short_label(o)}" for o in order)


def field_path(name: str) -> str:
    """The plan-file path of a knob (``zero`` -> ``parallelism.zero_stage``, ``recompute`` ->
    ``stages[].recompute``); names outside the registry (``num_micro_batches``) live in
    ``parallelism`` too."""
    return BY_NAME[name].path if name in BY_NAME else f"parallelism.{name}"


def describe(values: Chosen, style: Literal["compact", "long"] = "compact") -> str:
    """``dp8 tp1 pp1 cp1 ep1 zero3 mb1 1f1b`` (compact) or ``dp 8 · tp 1 · ...`` (long), built
    from each knob's own fragment in ``shown_at`` order; fragments may be empty (``v1``)."""
    if style == "compact":
        text = ""
        for k in SHOWN:
            part = k.short(values.get(k.name, k.default), values)
            text += part if not part or part.startswith(" ") or not text else " " + part
        return text
    parts = [k.long(values.get(k.name, k.default), values) for k in SHOWN]
    return " · ".join(p for p in parts if p)


@dataclass
class Knobs:
    """The search space: allowed values per knob; None (or absent) means its auto range."""

    values: dict[str, tuple | None] = field(default_factory=dict)

    def get(self, name: str, auto: tuple | list) -> tuple:
        v = self.values.get(name)
        return tuple(auto) if v is None else tuple(v)

    def given(self, name: str) -> tuple | None:
        return self.values.get(name)

    def options(self) -> tuple[str, ...]:
        """Recompute options the placement may use."""
        return self.get("recompute", RECOMPUTE_OPTIONS)

    @staticmethod
    def parse(raw: Mapping[str, str | None]) -> Knobs:
        """Each knob as the command line gives it: ``auto`` (or absent), one value, or a comma list."""
        out: dict[str, tuple | None] = {}
        for name, text in raw.items():
            if name not in SPACE_KNOBS:
                raise SpecError(f"unknown knob {name!r} (known: {', '.join(SPACE_KNOBS)})")
            out[name] = BY_NAME[name].parse_space(text)
        return Knobs(out)


def cli_parameters(mode: Literal["space", "fixed"], option: Callable[..., Any]) -> list[inspect.Parameter]:
    """One command-line parameter per knob, built with the CLI framework's ``option(default, flag,
    help=...)``: in ``space`` mode (``plan``, ``sweep``) a string, auto, a value or a list; in
    ``fixed`` mode (``estimate``) the knob's typed single value with its default."""
    out = []
    kind: type | types.UnionType
    for k in KNOBS:
        if mode == "space" and k.name not in SPACE_KNOBS:
            continue
        if mode == "space":
            values = "auto, on, off or on,off" if k.kind == "bool" else "auto, one value, or a comma list"
            opt, kind = option("auto", k.flag, help=f"{k.help}: {values} (auto: {k.auto_help})."), str
        else:
            extra = (
                " (default: GPUs / (tp*pp*cp))" if k.name == "dp" else f": {', '.join(k.choices)}" if k.choices else ""
            )
            if k.name in STACK_DEFAULTS:
                extra += " (default: the stack's)"
            elif k.name != "dp" and k.default is not None:
                extra += f" (default: {k.default})"
            # None = not given: estimate fills it from the stack or the registry and says so.
            opt = option(None, k.flag, help=f"{k.help}{extra}.")
            kind = {"int": int, "bool": bool, "choice": str, "per_block": str, "layers": str}[k.kind] | None
        out.append(inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=opt, annotation=kind))
    return out
