"""`autopar diff A.json B.json`: which knobs changed between two plans and what each accounts for.

Knobs are applied one at a time from A towards B in this order (``ORDER``): the inputs first
(what is trained, on what: model, cluster, then the training fields), then the mesh degrees
(dp, tp, pp, cp, ep), then the per-rank knobs (schedule with its virtual stages as one knob,
micro-batch, ZeRO, sequence parallelism), and last the stage split and per-block recompute,
which are only defined for a given model and pipeline shape.

Attribution (sequential, "one at a time"): x_0 = estimate(A), x_k = estimate after the first k
changed knobs, x_n = estimate(B); knob k accounts for x_k − x_{k−1} of each figure (step time,
tokens/s, peak memory), so the parts sum to x_n − x_0 (telescoping; the last part is taken as
the remainder so the floating-point sum is exact too). The split is order-dependent, as every
one-at-a-time attribution is; ``ORDER`` is fixed so the same two plans always get the same one.
When an intermediate combination is invalid (tp changed but not yet dp, so dp·tp·pp·cp is not
the GPU count), the knob is merged with the next one and the step says why.

Carrying knobs across shapes: a uniform recompute is one option for any layer count; a stage
split equal to the default even split (``estimate.split_layers``) is carried as "even", and a
split whose length no longer matches pp·vpp uses the even split of the new shape until the
split step. Both plans are re-estimated with the current cost model (not their recorded figures).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from models.errors import SpecError
from planner.config import Parallel, Training
from planner.estimate import estimate, split_layers
from planner.plan import load_plan, plan_inputs

TRAIN_KEYS = ("global_batch", "seq_len", "dtype", "attention_impl", "grad_reduce_dtype", "norm_impl", "tp_overlap")
PAR_KEYS = ("dp", "tp", "pp", "cp", "ep", "schedule", "vpp", "micro_batch", "zero", "sequence_parallel",
            "stage_layers", "recompute")
# (state keys, the plan path they are read from), in the order the knobs are applied. The schedule
# and its virtual stages are one knob: virtual stages only mean something for interleaved 1F1B.
ORDER = ((("model",), "inputs.model"), (("cluster",), "inputs.cluster"),
         (("global_batch",), "inputs.training.global_batch_size"), (("seq_len",), "inputs.training.seq_len"),
         (("dtype",), "inputs.training.dtype"), (("attention_impl",), "inputs.training.attention_impl"),
         (("grad_reduce_dtype",), "inputs.training.grad_reduce_dtype"),
         (("norm_impl",), "inputs.training.norm_impl"), (("tp_overlap",), "inputs.training.tp_overlap"),
         (("dp",), "parallelism.dp"), (("tp",), "parallelism.tp"),
         (("pp",), "parallelism.pp"), (("cp",), "parallelism.cp"), (("ep",), "parallelism.ep"),
         (("schedule", "vpp"), "parallelism.schedule+virtual_stages"),
         (("micro_batch",), "parallelism.micro_batch_size"), (("zero",), "parallelism.zero_stage"),
         (("sequence_parallel",), "parallelism.sequence_parallel"), (("stage_layers",), "stages[].layers"),
         (("recompute",), "stages[].recompute"))
PATHS = {"vpp": "parallelism.virtual_stages", "schedule": "parallelism.schedule"}
FIGURES = ("step_time_s", "tokens_per_s", "peak_memory_bytes")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; SpecError (exit 2) when unreadable, not JSON or not an object."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the {what} ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}; "
                        f"truncated?)") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a JSON object (a {what}), got a JSON {type(doc).__name__}")
    return doc


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
        return {"a": self.a, "b": self.b, "order": [p for _, p in ORDER], "a_predicted": self.a_predicted,
                "b_predicted": self.b_predicted, "total_change": self.total, "steps": [asdict(s) for s in self.steps]}


def plan_state(doc: dict) -> dict:
    """The knobs of a plan file, with a uniform recompute and the default even split normalised."""
    model, cluster, train, par = plan_inputs(doc)
    state = {"model": model, "cluster": cluster} | {k: getattr(train, k) for k in TRAIN_KEYS} | \
            {k: getattr(par, k) for k in PAR_KEYS}
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
    return {k: est.predicted[k] for k in FIGURES} | {"fits": est.fits}


def _describe(key: str, path: str, a: Any, b: Any) -> list[dict]:
    if key in ("model", "cluster"):
        pairs = flat_changes(a.model_dump(), b.model_dump(), "")
        return [{"field": f"{path}.{p}", "a": x, "b": y} for p, x, y in pairs]
    if key == "stage_layers":
        a, b = ("even" if v is None else ",".join(map(str, v)) for v in (a, b))
    if key == "recompute":
        a, b = (v if isinstance(v, str) else ", ".join(f"{v.count(o)} {o}" for o in sorted(set(v))) for v in (a, b))
    return [{"field": path, "a": a, "b": b}]


def diff_plans(a_path: Path, b_path: Path) -> DiffResult:
    """Attribute the change of step time, tokens/s and peak memory from plan A to plan B (docstring)."""
    a_doc, b_doc = load_plan(a_path), load_plan(b_path)
    a, b = plan_state(a_doc), plan_state(b_doc)
    ends = []
    for path, state in ((a_path, a), (b_path, b)):
        try:
            ends.append(score(state))
        except (SpecError, RuntimeError) as exc:
            raise SpecError(f"{path}: cannot be estimated with the current cost model: {exc}") from None
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
    total = {f: ends[1][f] - ends[0][f] for f in FIGURES}
    if steps:  # the remainder, so the parts sum to the total in floating point as well
        steps[-1].delta = {f: total[f] - sum(s.delta[f] for s in steps[:-1]) for f in FIGURES}
    return DiffResult(str(a_path), str(b_path), ends[0], ends[1], total, steps)


def _fmt(fig: str, x: float, signed: bool = True) -> str:
    sign = "+" if signed else ""
    if fig == "step_time_s":
        return f"{x:{sign}.4f} s"
    if fig == "tokens_per_s":
        return f"{x:{sign},.0f}"
    return f"{x / 2**30:{sign}.2f} GiB"


def render(out: Console, res: DiffResult, fmt: str) -> None:
    """JSON document, or a table of steps (change of each figure, share of the total) with totals."""
    if fmt == "json":
        print(json.dumps(res.as_json(), indent=2))
        return
    head = Table("figure", "A", "B", "change", title=escape(f"{res.a} -> {res.b} (re-estimated)"),
                 title_justify="left")
    for f in FIGURES:
        rel = res.total[f] / res.a_predicted[f] if res.a_predicted[f] else 0.0
        head.add_row(f, _fmt(f, res.a_predicted[f], False), _fmt(f, res.b_predicted[f], False),
                     f"{_fmt(f, res.total[f])} ({rel:+.1%})")
    out.print(head)
    if not res.steps:
        out.print("no knob changed between the two plans")
        return
    t = Table("#", "knob", "A -> B", *(f"Δ {f}" for f in FIGURES), title="attribution (knobs applied in this order)",
              title_justify="left")
    for i, s in enumerate(res.steps, 1):
        shown = "; ".join(f"{c['field']}: {c['a']} -> {c['b']}" for c in s.changes[:4])
        more = f" (+{len(s.changes) - 4} more)" if len(s.changes) > 4 else ""
        t.add_row(str(i), escape(" + ".join(s.knobs)), escape(shown + more), *(_fmt(f, s.delta[f]) for f in FIGURES))
        for note in s.merged_because:
            t.add_row("", f"[dim]merged: {escape(note)}[/dim]", "", "", "", "")
    t.add_row("", "total", "", *(_fmt(f, res.total[f]) for f in FIGURES))
    out.print(t)
