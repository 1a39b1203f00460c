"""A recompute value that names a kept set: ``keep:attn.q+attn.v+ffn.down_out``.

Beside the three hand-written options (none / selective / full) a block may keep exactly a set of
its saved tensors (``models/graph.py`` names, the block input always kept) and recompute the
rest in backward: one point of the block's (recompute time, kept bytes) Pareto set
(``planner/search/milp/recompute.py``), or a hand-written list. One spelling everywhere — the
command line (``--recompute keep:...``), ``Parallel.recompute``, the plan file's
``stages[].recompute`` and the runtime — so the value is a plain string that every table, diff
and JSON reader already carries. Names are sorted and de-duplicated (one plan, one spelling);
the cost model prices the value (``planner/cost/kept_set.py``) and the runtime keeps exactly
those tensors (``runtime/recompute.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from models.errors import SpecError

KEEP_PREFIX = "keep:"
SEPARATOR = "+"
# The block input: checkpointing keeps it whatever the policy, so it is not spelled.
BLOCK_INPUT = "attn.norm_in"
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


def is_kept_set(value: object) -> bool:
    return isinstance(value, str) and value.startswith(KEEP_PREFIX)


def kept_names(value: str) -> tuple[str, ...]:
    """The tensor names of ``keep:a+b`` (SpecError with the bad name when malformed)."""
    if not is_kept_set(value):
        raise SpecError(f"recompute {value!r} is not a kept set (expected keep:<tensor>+<tensor>...)")
    body = value[len(KEEP_PREFIX) :]
    names = tuple(n for n in body.split(SEPARATOR)) if body else ()
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise SpecError(
            f"recompute {value!r}: {bad[0]!r} is not a tensor name like attn.q (a kept set is keep:<tensor>+<tensor>...)"
        )
    return names


def kept_value(names: Iterable[str]) -> str:
    """The canonical value keeping ``names`` (sorted, unique, the block input left out)."""
    keep = sorted(set(names) - {BLOCK_INPUT})
    return KEEP_PREFIX + SEPARATOR.join(keep)


def check_kept_value(value: str) -> str:
    """``value`` when it is a well-formed, canonical kept set; SpecError otherwise."""
    names = kept_names(value)
    canonical = kept_value(names)
    if canonical != value:
        raise SpecError(
            f"recompute {value!r}: write the kept set sorted, without duplicates or the block input: {canonical!r}"
        )
    return value


def short_label(value: str) -> str:
    """``keep(a.q,a.context,f.down_out)`` for tables (``attn.`` → ``a.``, ``ffn.`` → ``f.``);
    other values unchanged."""
    if not is_kept_set(value):
        return value
    return "keep(" + ",".join(n.replace("attn.", "a.").replace("ffn.", "f.") for n in kept_names(value)) + ")"


# What the bundled runtime can keep (runtime/recompute.py): the outputs of a dense block's
# matmuls, found by their order in the forward, and of its attention kernel (one SDPA call
# returns the context and the log-sum-exp together, so they are kept together).
MATMUL_OUTPUTS = {
    True: ("attn.q", "attn.k", "attn.v", "attn.out_proj_out", "ffn.gate", "ffn.up", "ffn.down_out"),
    False: ("attn.q", "attn.k", "attn.v", "attn.out_proj_out", "ffn.fc1_out", "ffn.down_out"),
}
ATTENTION_OUTPUTS = ("attn.context", "attn.lse")


def runtime_refusal(value: str, gated: bool | None = None) -> str | None:
    """Why the bundled runtime cannot keep exactly ``value`` (None when it can); ``gated``: the
    block's FFN has a gate (None: either kind)."""
    names = set(kept_names(value))
    known = set(ATTENTION_OUTPUTS).union(*(MATMUL_OUTPUTS[g] for g in ((True, False) if gated is None else (gated,))))
    if names - known:
        return (
            f"recompute {value!r}: the runtime keeps matmul and attention outputs ({', '.join(sorted(known))}), "
            f"not {', '.join(sorted(names - known))}"
        )
    if len(names & set(ATTENTION_OUTPUTS)) == 1:
        return f"recompute {value!r}: attn.context and attn.lse come from one attention kernel; keep both or neither"
    return None
