"""`autopar explain`: command glue (inputs, progress, exit code) and the rich tables.

Exit codes: 0 the report was produced; 1 a negative verdict (the plan does not fit under the
given inputs, or --infeasible finds no plan); bad input raises SpecError (exit 2 in cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from models.errors import SpecError
from planner.explain import GiB, explain_plan, load_problem
from planner.explain_infeasible import explain_infeasible
from planner.inputs import build_inputs
from planner.plan import load_plan
from planner.search import Knobs

SEARCH = {"optimal": "optimal", "within_gap": "within gap", "time_limit": "time limit",
          "infeasible": "none fits", "no_candidates": "-"}


def run_cli(out: Console, err: Console, plan_file: Path | None, infeasible: bool, problem: dict,
            time_limit_s: float, sets: dict, fmt: str) -> int:
    """Run explain (or --infeasible), print the report, return the exit code."""
    if time_limit_s <= 0:
        raise SpecError(f"--time-limit must be > 0 (got {time_limit_s})")
    given = [k for k in ("model", "cluster", "global_batch", "seq_len") if problem.get(k) is not None]
    if plan_file is not None and given:
        raise SpecError(f"give a plan file or --{given[0].replace('_', '-')} (with --infeasible), not both")
    if plan_file is None and not infeasible:
        raise SpecError("missing PLAN (a plan JSON), or --infeasible with --model, --cluster, --global-batch, --seq-len")
    with err.status("explaining") as status:
        def progress(done: int, total: int) -> None:
            status.update(f"counterfactuals {done}/{total}")

        if infeasible:
            report = _infeasible(plan_file, problem, sets, time_limit_s)
        else:
            report = explain_plan(load_plan(plan_file), sets, time_limit_s, progress)
    if fmt == "json":
        print(json.dumps(report, indent=2))
    elif infeasible:
        render_infeasible(out, report)
    else:
        render_explain(out, report)
    wall_s = report["wall_s"] if infeasible else report["search"]["wall_s"]
    err.print(f"explained in {wall_s:.1f} s", highlight=False)
    if infeasible:
        return 0 if report["verdict"] == "feasible" else 1
    if not report["plan"]["fits"]:
        err.print(report["binding"]["text"], highlight=False)
        return 1
    return 0


def _infeasible(plan_file: Path | None, problem: dict, sets: dict, time_limit_s: float) -> dict:
    if plan_file is not None:
        prob = load_problem(load_plan(plan_file), sets)
        return explain_infeasible(prob.spec, prob.cluster, prob.train, prob.knobs, time_limit_s)
    i = build_inputs(problem["model"], problem["cluster"], problem["global_batch"], problem["seq_len"],
                     problem["dtype"], problem["attention"], sets, None)
    return explain_infeasible(i.model, i.cluster, i.training, Knobs({}), time_limit_s)


def _delta(row: dict) -> tuple[str, str, str, str]:
    """(step s, Δ step, peak GiB, Δ peak GiB) cells of a scored row."""
    return (f"{row['step_time_s']:.3f}", f"{row['delta_step_time_s']:+.3f} s ({row['delta_step_time_pct']:+.1f}%)",
            f"{row['peak_memory_bytes'] / GiB:.2f}", f"{row['delta_peak_memory_bytes'] / GiB:+.2f}")


def _value(v) -> str:
    return {True: "on", False: "off"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _search(row: dict) -> str:
    """How good the row's plan is known to be: optimal, within the gap target, or cut short."""
    s = row.get("search") or {}
    text = SEARCH.get(s.get("status"), s.get("status") or "-")
    if s.get("gap") is not None and s.get("status") != "optimal":
        text += f" ({s['gap']:.1%})"
    return text


def render_explain(out: Console, r: dict) -> None:
    p, b = r["plan"], r["binding"]
    cert = p["certificate"]
    gap = f", gap {cert['gap']:.2%}" if cert.get("gap") is not None else ""
    out.print(f"[bold]why[/bold] {escape(p['plan'])}  ({p['model']} on {p['cluster']})", highlight=False)
    out.print(f"step {p['step_time_s']:.3f} s · {p['tokens_per_s']:,.0f} tokens/s · peak "
              f"{p['peak_memory_bytes'] / GiB:.2f} of {p['memory_capacity_bytes'] / GiB:.2f} GiB · plan search "
              f"{cert['status']}{gap}", highlight=False)
    out.print(f"[bold]binding constraint: {b['binds']}[/bold] — {escape(b['text'])}", highlight=False)
    out.print("step time: " + ", ".join(f"{k} {v:.3f} s" for k, v in b["time_components_s"].items()), highlight=False)
    out.print(_decision_table(r["decisions"]))
    out.print(_recompute_table(r["recompute_per_stage"]))
    out.print(_what_if_table(r["what_if"]))


def _decision_table(decisions: list[dict]) -> Table:
    t = Table("decision", "value", "step s", "Δ step", "peak GiB", "Δ peak", "best plan with it", "search",
              title="counterfactuals: the best plan with one decision forced (Δ against this plan)",
              title_justify="left")
    for d in decisions:
        for k, a in enumerate(d["alternatives"]):
            name = f"{d['decision']} (now {_value(d['chosen'])})" if k == 0 else ""
            if a["status"] == "fits":
                t.add_row(name, _value(a["value"]), *_delta(a), a["plan"], _search(a))
            else:
                t.add_row(name, _value(a["value"]), "-", a["status"].replace("_", " "), "-", "-", escape(a["reason"]),
                          _search(a))
    return t


def _recompute_table(stages: list[dict]) -> Table:
    t = Table("stage", "blocks", "now", "forced to", "step s", "Δ step", "peak GiB", "Δ peak", "fits",
              title="recompute per stage (every block of the stage forced)", title_justify="left")
    for st in stages:
        for a in st["alternatives"]:
            t.add_row(str(st["stage"]), f"{st['layers'][0]}-{st['layers'][1] - 1}", st["chosen"], a["value"],
                      *_delta(a), "yes" if a["status"] == "fits" else f"no: {a['reason']}")
    return t


def _what_if_table(rows: list[dict]) -> Table:
    t = Table("what if", "step s", "Δ step", "tokens/s", "peak GiB", "best plan", "search",
              title="what one more GiB or node buys (re-planned)", title_justify="left")
    for a in rows:
        if a["status"] == "fits":
            cells = _delta(a)
            t.add_row(a["change"], cells[0], cells[1], f"{a['tokens_per_s']:,.0f}", cells[2], a["plan"], _search(a))
        else:
            t.add_row(a["change"], "-", a["status"].replace("_", " "), "-", "-", escape(a["reason"]), _search(a))
    return t


def render_infeasible(out: Console, r: dict) -> None:
    out.print(f"[bold]{r['model']} on {r['cluster']}[/bold], global batch {r['global_batch']}, seq {r['seq_len']}: "
              f"{escape(r['text'])} ({r['candidates']} candidates, {r.get('memory_pruned', 0)} ruled out by model "
              f"states alone)", highlight=False)
    for c in r["conflicts"]:
        out.print(f"[bold]conflict[/bold] ({' + '.join(c['constraints'])}): {escape(c['text'])}", highlight=False)
    for a in r["advice"]:
        out.print(f"[bold]advice:[/bold] {escape(a['text'])}", highlight=False)
