"""Glue for `autopar plan`: knob parsing, running the search, rendering, infeasibility advice."""

from __future__ import annotations

import shlex

from rich.console import Console
from rich.table import Table

from models.errors import SpecError
from planner.config import RECOMPUTE_OPTIONS, SCHEDULES
from planner.estimate import estimate, time_components
from planner.search import Knobs, SearchResult

INT_KNOBS = ("dp", "tp", "pp", "cp", "ep", "micro_batch", "zero", "vpp")


def check_search_settings(solver: str, gap: float, time_limit_s: float) -> None:
    """--solver, --gap and --time-limit as `plan` and `sweep` take them (bad input: exit 2)."""
    if solver not in ("ortools", "pulp"):
        raise SpecError(f"--solver must be ortools or pulp (got {solver!r})")
    if gap < 0 or time_limit_s <= 0:
        raise SpecError("--gap must be >= 0 and --time-limit > 0")


def parse_knobs(raw: dict[str, str | None]) -> Knobs:
    """Each knob: 'auto' (or absent), one value, or a comma list: --tp 1,2,4,8."""
    values: dict[str, tuple | None] = {}
    for name, text in raw.items():
        flag = "--" + name.replace("_", "-")
        if text is None or str(text).strip() == "auto":
            values[name] = None
            continue
        items = [x.strip() for x in str(text).split(",") if x.strip()]
        if name in INT_KNOBS:
            try:
                vals = tuple(int(x) for x in items)
            except ValueError:
                raise SpecError(f"{flag} {text!r}: expected auto, an integer or a list like 1,2,4") from None
            if any(x < (0 if name == "zero" else 1) for x in vals) or (name == "zero" and any(x > 3 for x in vals)):
                raise SpecError(f"{flag} {text!r}: values out of range")
        elif name == "sequence_parallel":
            table = {"on": True, "true": True, "off": False, "false": False}
            if any(x not in table for x in items):
                raise SpecError(f"{flag} {text!r}: expected auto, on, off or on,off")
            vals = tuple(table[x] for x in items)
        else:
            allowed = RECOMPUTE_OPTIONS if name == "recompute" else SCHEDULES
            bad = [x for x in items if x not in allowed]
            if bad:
                raise SpecError(f"{flag}: unknown value(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
            vals = tuple(items)
        values[name] = vals
    return Knobs(values)


def reproduce_command(refs: dict, train, raw: dict, extra: dict) -> str:
    """The `autopar plan` command line that reproduces a plan from the same inputs."""
    args = ["autopar", "plan", "--model", refs["model"], "--cluster", refs["cluster"], "--global-batch",
            str(train.global_batch), "--seq-len", str(train.seq_len), "--dtype", train.dtype,
            "--attention", train.attention_impl]
    for name, value in raw.items():
        if value is not None and str(value) != "auto":
            args += ["--" + name.replace("_", "-"), str(value)]
    for target, kv in refs.get("sets", {}).items():
        args += [a for k, v in kv.items() for a in ("--set", f"{target}.{k}={v}")]
    for name, value in extra.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(a) for a in args)


def solver_block(res: SearchResult, backend: str) -> dict:
    c = res.certificate
    solved = [r for r in res.candidates if r.iterations]
    return {"backend": {"ortools": "ortools-highs"}.get(backend, backend), "status": c["status"],
            "objective": c["incumbent_s"], "best_bound": c["best_bound_s"], "gap": c["gap"],
            "wall_time_s": res.phases_s["total_s"], "phases_s": res.phases_s, "certificate": c,
            "model_sizes": {"milps_solved": sum(r.iterations for r in solved),
                            "max_variables": max((r.model_size.get("variables", 0) for r in solved), default=0),
                            "max_integer_variables": max((r.model_size.get("integer_variables", 0) for r in solved), default=0),
                            "max_constraints": max((r.model_size.get("constraints", 0) for r in solved), default=0)}}


def alternatives_block(res: SearchResult) -> list[dict]:
    best = res.best.predicted["step_time_s"]
    out = []
    for r in res.alternatives:
        p, par = r.best.predicted, r.best.par
        out.append({"parallelism": f"dp{par.dp} tp{par.tp} pp{par.pp} cp{par.cp} ep{par.ep} zero{par.zero} "
                                   f"mb{par.micro_batch} {par.schedule}{f' v{par.vpp}' if par.vpp > 1 else ''}",
                    "step_time_s": p["step_time_s"], "slower_by": p["step_time_s"] / best - 1,
                    "why": _why(res.best.predicted, p),
                    # milp: this candidate's optimal placement; heuristic: its even split with the
                    # least uniform recompute that fits (pruned by a bound, never placed).
                    "placement": "heuristic" if r.status == "heuristic" else "milp"})
    return out


def _why(best: dict, other: dict) -> str:
    """The component of the step where the alternative loses most time."""
    a, b = time_components(best), time_components(other)
    name, delta = max(((k, b[k] - a[k]) for k in a if k != "optimizer"), key=lambda kv: kv[1])
    return f"{name} +{delta:.3f} s"


def render_plan(out: Console, doc: dict, est) -> None:
    from planner.render import estimate_table

    s = doc["solver"]
    out.print(f"[bold]plan[/bold] ({s['status']}, gap {s['gap']:.2%} against bound {s['best_bound']:.3f} s, "
              f"{s['certificate']['candidates']} candidates in {s['wall_time_s']:.2f} s)")
    deeper = s["certificate"].get("deeper_interleaving")
    if deeper:
        out.print(f"then interleaved with {deeper['vpp'][1]} virtual stages per rank (searched plan: "
                  f"{deeper['vpp'][0]}): {deeper['step_time_s'][0]:.3f} s -> {deeper['step_time_s'][1]:.3f} s. The "
                  f"bound covers the searched space (at most {max(deeper['searched_vpp'])} virtual stages; "
                  "--vpp widens it).")
    estimate_table(out, est)
    t = Table("stage", "pp rank", "blocks", "recompute", "ranks", title="stages", title_justify="left")
    for st in doc["stages"]:
        rc = st["recompute"]
        summary = ", ".join(f"{rc.count(o)} {o}" for o in RECOMPUTE_OPTIONS if rc.count(o))
        extra = ("E " if st["has_embedding"] else "") + ("H" if st["has_head"] else "")
        t.add_row(str(st["index"]), str(st["pp_rank"]), f"{st['layers'][0]}-{st['layers'][1] - 1} {extra}".strip(),
                  summary or "-", f"{st['ranks'][0]}..{st['ranks'][-1]}")
    out.print(t)
    if doc["alternatives"]:
        a = Table("alternative", "step s", "slower by", "why it lost", "placement", title="next best",
                  title_justify="left")
        for alt in doc["alternatives"]:
            a.add_row(alt["parallelism"], f"{alt['step_time_s']:.3f}", f"{alt['slower_by']:.1%}", alt["why"],
                      "solved" if alt["placement"] == "milp" else "even split")
        out.print(a)


def closest_plan(spec, cluster, train, pars) -> tuple | None:
    """(Estimate, bytes over capacity) of the candidate that comes closest to fitting with full
    recompute on the even split (the least activation memory a candidate can have), or None."""
    closest = None
    for par in pars:
        try:
            e = estimate(spec, cluster, train, par.with_(recompute="full", stage_layers=None))
        except SpecError:
            continue
        over = max((o for _, o in e.over), default=0.0)
        if closest is None or over < closest[1]:
            closest = (e, over)
    return closest


def infeasible_advice(spec, cluster, train, res: SearchResult) -> str:
    """Quantified advice from the plan that comes closest to fitting."""
    closest = closest_plan(spec, cluster, train, [r.par for r in res.candidates])
    if closest is None:
        return "no candidate could be scored"
    e, over = closest
    gib = 2**30
    stage = max(e.over, key=lambda x: x[1])[0] if e.over else 0
    m = e.predicted["stages"][stage]["memory"]
    states = m["weights_bytes"] + m["gradients_bytes"] + m["optimizer_bytes"]
    p = e.par
    return (f"binding constraint: memory of pipeline stage {stage} in the closest plan (dp{p.dp} tp{p.tp} pp{p.pp} "
            f"zero{p.zero} micro-batch {p.micro_batch}, full recompute) is {over / gib:.2f} GiB over the "
            f"{e.predicted['memory_capacity_bytes'] / gib:.2f} GiB usable. It would fit with GPUs of at least "
            f"{(e.predicted['memory_capacity_bytes'] + over) / gib + 1:.0f} GiB, or with more GPUs: its model states "
            f"take {states / gib:.2f} GiB per GPU and shrink in proportion to the data-parallel (ZeRO-3) or "
            f"pipeline degree; activations take {m['activations_bytes'] / gib:.2f} GiB (smaller micro-batch or "
            f"shorter sequences reduce them).")
