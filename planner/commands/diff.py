"""`autopar diff A.json B.json`: which knobs changed between two plans and what each accounts for.

Knobs are applied one at a time from A towards B in this order (``ORDER``): the inputs first
(what is trained, on what: model, cluster, then the training fields), then the mesh degrees
(dp, tp, pp, cp, ep), then the per-rank knobs (schedule with its virtual stages as one knob,
micro-batch, ZeRO, HSDP replicas, sequence parallelism), and last the stage split and per-block recompute,
which are only defined for a given model and pipeline shape.

Attribution (sequential, "one at a time"): x_0 = estimate(A), x_k = estimate after the first k
changed knobs, x_n = estimate(B); knob k accounts for x_k − x_{k−1} of each figure (step time,
tokens/s, peak memory), so the parts sum to x_n − x_0 (telescoping; the last part is taken as
the remainder so the floating-point sum is exact too). The split is order-dependent, as every
one-at-a-time attribution is; ``ORDER`` is fixed so the same two plans always get the same one.
When an intermediate combination is invalid (tp changed but not yet dp, so dp·tp·pp·cp is not
the GPU count), the knob is merged with the next one and the step says why.

Carrying knobs across shapes: a uniform recompute is one option for any layer count; a stage
split equal to the default even split (``cost.chunks.split_layers``) is carried as "even", and a
split whose length no longer matches pp·vpp uses the even split of the new shape until the
split step. Both plans are re-estimated with the current cost model (not their recorded figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.errors import SpecError
from planner.config import Parallel, Training
from planner.cost.chunks import split_layers
from planner.cost.estimate import estimate
from planner.knobs import KNOBS, field_path, recompute_summary
from planner.planfile.load import load_plan, plan_inputs

TRAIN_KEYS = ("global_batch", "seq_len", "dtype", "attention_impl", "grad_reduce_dtype", "norm_impl", "tp_overlap")
PAR_KEYS = tuple(k.name for k in KNOBS)


def _knob_order() -> tuple[tuple[tuple[str, ...], str], ...]:
    """The knobs in registry order (mesh, schedule, per-rank knobs, placement). The schedule and
    its virtual stages are one knob: virtual stages only mean something for interleaved 1F1B."""
    out: list[tuple[tuple[str, ...], str]] = []
    for k in KNOBS:
        if k.name == "vpp":
            continue
        if k.name == "schedule":
            out.append((("schedule", "vpp"), "parallelism.schedule+virtual_stages"))
        else:
            out.append(((k.name,), k.path))
    return tuple(out)


# (state keys, the plan path they are read from), in the order the knobs are applied: the inputs
# (what is trained, on what), then the knobs.
ORDER = (
    (("model",), "inputs.model"),
    (("cluster",), "inputs.cluster"),
    *(
        ((key,), f"inputs.training.{field}")
        for key, field in (
            ("global_batch", "global_batch_size"),
            ("seq_len", "seq_len"),
            ("dtype", "dtype"),
            ("attention_impl", "attention_impl"),
            ("grad_reduce_dtype", "grad_reduce_dtype"),
            ("norm_impl", "norm_impl"),
            ("tp_overlap", "tp_overlap"),
        )
    ),
    *_knob_order(),
)
PATHS = {k: field_path(k) for k in ("schedule", "vpp")}
FIGURES = ("step_time_s", "tokens_per_s", "peak_memory_bytes")


def flat_changes(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """(dotted path, value in a, value in b) of every leaf that differs between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += flat_changes(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [(prefix, a, b)]


@dataclass
class Step:
    """One attribution step: the knob(s) applied together and the change of each figure."""

    knobs: list[str]  # plan paths, e.g. ["parallelism.dp", "parallelism.tp"] when merged
    changes: list[dict]  # {"field", "a", "b"} per changed value (model/cluster: per key)
    delta: dict  # figure -> change this step accounts for
    after: dict  # figures after this step
    merged_because: list[str] = field(default_factory=list)


@dataclass
class DiffResult:
    a: str
    b: str
    a_predicted: dict
    b_predicted: dict
    total: dict
    steps: list[Step]

    def as_json(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "order": [p for _, p in ORDER],
            "a_predicted": self.a_predicted,
            "b_predicted": self.b_predicted,
            "total_change": self.total,
            "steps": [asdict(s) for s in self.steps],
        }


def plan_state(doc: dict) -> dict:
    """The knobs of a plan file, with a uniform recompute and the default even split normalised."""
    model, cluster, train, par = plan_inputs(doc)
    state = (
        {"model": model, "cluster": cluster}
        | {k: getattr(train, k) for k in TRAIN_KEYS}
        | {k: getattr(par, k) for k in PAR_KEYS}
    )
    if len(set(state["recompute"])) == 1:
        state["recompute"] = state["recompute"][0]
    if list(state["stage_layers"] or []) == split_layers(model.num_layers, par.chunks):
        state["stage_layers"] = None
    return state


def score(state: dict) -> dict:
    """Step time, tokens/s and peak memory of a state (SpecError when the combination is invalid)."""
    par = Parallel(**{k: state[k] for k in PAR_KEYS})
    if par.stage_layers is not None and len(par.stage_layers) != par.chunks:
        par = par.with_(stage_layers=None)  # a new pipeline shape: its even split until the split step
    est = estimate(state["model"], state["cluster"], Training(**{k: state[k] for k in TRAIN_KEYS}), par)
    return {k: getattr(est.predicted, k) for k in FIGURES} | {"fits": est.fits}


def _describe(key: str, path: str, a: Any, b: Any) -> list[dict]:
    if key in ("model", "cluster"):
        pairs = flat_changes(a.model_dump(), b.model_dump(), "")
        return [{"field": f"{path}.{p}", "a": x, "b": y} for p, x, y in pairs]
    if key == "stage_layers":
        a, b = ("even" if v is None else ",".join(map(str, v)) for v in (a, b))
    if key == "recompute":
        a, b = (recompute_summary(v) for v in (a, b))
    return [{"field": path, "a": a, "b": b}]


# Two adjacent steps whose step-time parts mostly cancel are one step: each larger than this share
# of A's step time, and their sum less than OFFSET_LEFT of the smaller (a "+10 s then -10 s" pair
# says only that the order split one change in two).
OFFSET_MIN, OFFSET_LEFT = 0.01, 0.5


def merge_offsetting(steps: list[Step], base_s: float) -> list[Step]:
    """Adjacent steps whose step-time changes offset each other, merged (see OFFSET_MIN)."""
    out: list[Step] = []
    for s in steps:
        if out:
            p, a, b = out[-1], out[-1].delta["step_time_s"], s.delta["step_time_s"]
            big = min(abs(a), abs(b)) > OFFSET_MIN * base_s
            if big and a * b < 0 and abs(a + b) < OFFSET_LEFT * min(abs(a), abs(b)):
                why = f"{' + '.join(p.knobs)} ({a:+.3f} s) and {' + '.join(s.knobs)} ({b:+.3f} s) offset each other"
                delta = {f: p.delta[f] + s.delta[f] for f in FIGURES}
                out[-1] = Step(
                    p.knobs + s.knobs,
                    p.changes + s.changes,
                    delta,
                    s.after,
                    p.merged_because + s.merged_because + [why],
                )
                continue
        out.append(s)
    return out


def diff_plans(a_path: Path, b_path: Path) -> DiffResult:
    """Attribute the change of step time, tokens/s and peak memory from plan A to plan B (docstring)."""
    a_doc, b_doc = load_plan(a_path), load_plan(b_path)
    a, b = plan_state(a_doc), plan_state(b_doc)
    ends = []
    for plan_path, state in ((a_path, a), (b_path, b)):
        try:
            ends.append(score(state))
        except (SpecError, RuntimeError) as exc:
            raise SpecError(f"{plan_path}: cannot be estimated with the current cost model: {exc}") from None
    steps, cur, prev, pending, why = [], dict(a), ends[0], [], []
    for keys, path in ORDER:
        changed = [k for k in keys if a[k] != b[k]]
        if not changed:
            continue
        cur |= {k: b[k] for k in keys}
        pending.append((path, changed))
        try:
            now = score(cur)
        except (SpecError, RuntimeError) as exc:  # RuntimeError: a schedule the simulator cannot run
            why.append(f"{' + '.join(p for p, _ in pending)} alone is invalid: {exc}")
            continue
        changes = [c for p, ks in pending for k in ks for c in _describe(k, PATHS.get(k, p), a[k], b[k])]
        steps.append(Step([p for p, _ in pending], changes, {f: now[f] - prev[f] for f in FIGURES}, now, why))
        prev, pending, why = now, [], []
    steps = merge_offsetting(steps, ends[0]["step_time_s"])
    total = {f: ends[1][f] - ends[0][f] for f in FIGURES}
    if steps:  # the remainder, so the parts sum to the total in floating point as well
        steps[-1].delta = {f: total[f] - sum(s.delta[f] for s in steps[:-1]) for f in FIGURES}
    return DiffResult(str(a_path), str(b_path), ends[0], ends[1], total, steps)
