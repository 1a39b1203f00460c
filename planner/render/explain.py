"""`autopar explain` and `explain --infeasible` reports as rich tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from planner.commands.explain_rows import GiB

SEARCH = {
    "optimal": "optimal",
    "within_gap": "within gap",
    "time_limit": "time limit",
    "interrupted": "interrupted",
    "infeasible": "none fits",
    "no_candidates": "-",
}


def _delta(row: dict) -> tuple[str, str, str, str]:
    """(step s, Δ step, peak GiB, Δ peak GiB) cells of a scored row."""
    return (
        f"{row['step_time_s']:.3f}",
        f"{row['delta_step_time_s']:+.3f} s ({row['delta_step_time_pct']:+.1f}%)",
        f"{row['peak_memory_bytes'] / GiB:.2f}",
        f"{row['delta_peak_memory_bytes'] / GiB:+.2f}",
    )


def _value(v) -> str:
    return {True: "on", False: "off"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _search(row: dict) -> str:
    """How good the row's plan is known to be: optimal, within the gap target, or cut short."""
    s: Any = row.get("search") or {}  # the plan's JSON search block
    text = SEARCH.get(s.get("status"), s.get("status") or "-")
    if s.get("gap") is not None and s.get("status") != "optimal":
        text += f" ({s['gap']:.1%})"
    return text


def render_explain(out: Console, r: dict) -> None:
    p, b = r["plan"], r["binding"]
    cert = p["certificate"]
    gap = f", gap {cert['gap']:.2%}" if cert.get("gap") is not None else ""
    out.print(f"[bold]why[/bold] {escape(p['plan'])}  ({p['model']} on {p['cluster']})", highlight=False)
    out.print(
        f"step {p['step_time_s']:.3f} s · {p['tokens_per_s']:,.0f} tokens/s · peak "
        f"{p['peak_memory_bytes'] / GiB:.2f} of {p['memory_capacity_bytes'] / GiB:.2f} GiB · plan search "
        f"{cert['status']}{gap}",
        highlight=False,
    )
    if r["search"].get("interrupted"):
        out.print("[bold]interrupted[/bold]: the answers known at Ctrl-C; open questions say so", highlight=False)
    out.print(f"[bold]binding constraint: {b['binds']}[/bold] — {escape(b['text'])}", highlight=False)
    out.print("step time: " + ", ".join(f"{k} {v:.3f} s" for k, v in b["time_components_s"].items()), highlight=False)
    out.print(_decision_table(r["decisions"]))
    out.print(_recompute_table(r["recompute_per_stage"]))
    out.print(_what_if_table(r["what_if"]))


def _decision_table(decisions: list[dict]) -> Table:
    t = Table(
        "decision",
        "value",
        "step s",
        "Δ step",
        "peak GiB",
        "Δ peak",
        "best plan with it",
        "search",
        title="counterfactuals: the best plan with one decision forced (Δ against this plan)",
        title_justify="left",
    )
    for d in decisions:
        for k, a in enumerate(d["alternatives"]):
            name = f"{d['decision']} (now {_value(d['chosen'])})" if k == 0 else ""
            if a["status"] == "fits":
                t.add_row(name, _value(a["value"]), *_delta(a), a["plan"], _search(a))
            else:
                t.add_row(
                    name,
                    _value(a["value"]),
                    "-",
                    a["status"].replace("_", " "),
                    "-",
                    "-",
                    escape(a["reason"]),
                    _search(a),
                )
    return t


def _recompute_table(stages: list[dict]) -> Table:
    t = Table(
        "stage",
        "blocks",
        "now",
        "forced to",
        "step s",
        "Δ step",
        "peak GiB",
        "Δ peak",
        "fits",
        title="recompute per stage (every block of the stage forced)",
        title_justify="left",
    )
    for st in stages:
        for a in st["alternatives"]:
            t.add_row(
                str(st["stage"]),
                f"{st['layers'][0]}-{st['layers'][1] - 1}",
                st["chosen"],
                a["value"],
                *_delta(a),
                "yes" if a["status"] == "fits" else f"no: {a['reason']}",
            )
    return t


def _what_if_table(rows: list[dict]) -> Table:
    t = Table(
        "what if",
        "step s",
        "Δ step",
        "tokens/s",
        "peak GiB",
        "best plan",
        "search",
        title="what one more GiB or node buys (re-planned)",
        title_justify="left",
    )
    for a in rows:
        if a["status"] == "fits":
            cells = _delta(a)
            t.add_row(a["change"], cells[0], cells[1], f"{a['tokens_per_s']:,.0f}", cells[2], a["plan"], _search(a))
        else:
            t.add_row(a["change"], "-", a["status"].replace("_", " "), "-", "-", escape(a["reason"]), _search(a))
    return t


def render_infeasible(out: Console, r: dict) -> None:
    out.print(
        f"[bold]{r['model']} on {r['cluster']}[/bold], global batch {r['global_batch']}, seq {r['seq_len']}: "
        f"{escape(r['text'])} ({r['candidates']} candidates, {r.get('memory_pruned', 0)} ruled out by model "
        f"states alone)",
        highlight=False,
    )
    for c in r["conflicts"]:
        out.print(f"[bold]conflict[/bold] ({' + '.join(c['constraints'])}): {escape(c['text'])}", highlight=False)
    for a in r["advice"]:
        out.print(f"[bold]advice:[/bold] {escape(a['text'])}", highlight=False)
