"""`autopar plan` as tables: the certificate line, the estimate, the stages, the runner-ups."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.cost.estimate import Estimate
from planner.knobs import recompute_summary
from planner.render.estimate_table import estimate_table


def render_plan(out: Console, doc: dict, est: Estimate) -> None:
    s = doc["solver"]
    out.print(
        f"[bold]plan[/bold] ({s['status']}, gap {s['gap']:.2%} against bound {s['best_bound']:.3f} s, "
        f"{s['certificate']['candidates']} candidates in {s['wall_time_s']:.2f} s)"
    )
    deeper = s["certificate"].get("deeper_interleaving")
    if deeper:
        out.print(
            f"then interleaved with {deeper['vpp'][1]} virtual stages per rank (searched plan: "
            f"{deeper['vpp'][0]}): {deeper['step_time_s'][0]:.3f} s -> {deeper['step_time_s'][1]:.3f} s. The "
            f"bound covers the searched space (at most {max(deeper['searched_vpp'])} virtual stages; "
            "--vpp widens it)."
        )
    for o in s["certificate"].get("outside_space", []):
        out.print(
            f"[yellow]outside the searched space[/yellow]: {o['knob']} {o['value']} on this mesh would take "
            f"{o['step_time_s']:.3f} s; the bound does not cover it ({o['flag']} searches it)."
        )
    estimate_table(out, est)
    t = Table("stage", "pp rank", "blocks", "recompute", "ranks", title="stages", title_justify="left")
    for st in doc["stages"]:
        rc = st["recompute"]
        summary = recompute_summary(rc) if rc else ""
        extra = ("E " if st["has_embedding"] else "") + ("H" if st["has_head"] else "")
        t.add_row(
            str(st["index"]),
            str(st["pp_rank"]),
            f"{st['layers'][0]}-{st['layers'][1] - 1} {extra}".strip(),
            summary or "-",
            f"{st['ranks'][0]}..{st['ranks'][-1]}",
        )
    out.print(t)
    if doc["alternatives"]:
        a = Table(
            "alternative", "step s", "slower by", "why it lost", "placement", title="next best", title_justify="left"
        )
        for alt in doc["alternatives"]:
            a.add_row(
                alt["parallelism"],
                f"{alt['step_time_s']:.3f}",
                f"{alt['slower_by']:.1%}",
                alt["why"],
                "solved" if alt["placement"] == "milp" else "even split",
            )
        out.print(a)
