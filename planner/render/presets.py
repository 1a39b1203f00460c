"""`autopar presets list|show` as tables, YAML or JSON."""

from __future__ import annotations

import json

import yaml
from rich.console import Console
from rich.table import Table

from planner.commands.presets import PresetList

GiB = 2**30


def param_count(n: float) -> str:
    """``8.03 B``, ``124 M``, ``25.7 k``: parameters in the unit that keeps 3 significant digits."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def presets_list(out: Console, rows: PresetList, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({"models": [m.name for m in rows.models], "gpus": [g.name for g in rows.gpus]}, indent=2))
        return
    if rows.models:
        t = Table(
            "model", "layers", "hidden", "heads/kv", "params", "type", title="model presets", title_justify="left"
        )
        for m in rows.models:
            s = m.spec
            t.add_row(
                m.name,
                str(s.num_layers),
                str(s.hidden_size),
                f"{s.num_heads}/{s.kv_heads}",
                param_count(m.params),
                m.kind,
            )
        out.print(t)
    if rows.gpus:
        t = Table(
            "gpu",
            "bf16 TFLOP/s",
            "HBM GiB",
            "HBM TB/s",
            "intra GB/s",
            "inter GB/s",
            title="GPU presets",
            title_justify="left",
        )
        for g in rows.gpus:
            t.add_row(
                g.name,
                *(
                    f"{x:g}" if x is not None else "-"
                    for x in (
                        g.peak_bf16_tflops,
                        g.hbm_bytes / GiB,
                        g.hbm_TBps,
                        g.intra_node_bw_GBps,
                        g.inter_node_bw_GBps,
                    )
                ),
            )
        out.print(t)


def preset_show(out: Console, data: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(data, indent=2))
    else:
        out.print(yaml.safe_dump(data, sort_keys=False).rstrip(), highlight=False)
