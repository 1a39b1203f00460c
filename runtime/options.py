"""`autopar run`'s options, as data (cli.py turns them into typer options): torch-free, beside the
runtime's own defaults."""

from __future__ import annotations

from pathlib import Path

from planner.inputs import Opt
from runtime.defaults import DEFAULT_LR, DEFAULT_RANK_TIMEOUT_S

RUN_OPTIONS = (
    Opt("plan_file", Path, ..., (), "Plan JSON written by `autopar plan --out`.", argument=True),
    Opt("steps", int, 5, ("--steps",), "Training steps to run."),
    Opt("data", Path | None, None, ("--data",), "Token file (uint16 or int32 ids); default synthetic tokens."),
    Opt(
        "data_dtype",
        str | None,
        None,
        ("--data-dtype",),
        "uint16 or int32: how --data stores ids (default: uint16 up to 65,536 ids, int32 beyond).",
    ),
    Opt(
        "report",
        Path,
        Path("report.json"),
        ("--out", "-o", "--report"),
        "Where to write the run report JSON (--report: its former name).",
    ),
    Opt("lr", float, DEFAULT_LR, ("--lr",), "SGD learning rate."),
    Opt("nprocs", int | None, None, ("--nprocs",), "Ranks to start (must equal the plan's world size)."),
    Opt("device", str | None, None, ("--device",), "cpu or cuda (default: from the plan's cluster)."),
    Opt("nnodes", int, 1, ("--nnodes",), "Nodes: >1 prints the torchrun command for each node instead."),
    Opt("rdzv_endpoint", str, "localhost:29500", ("--rdzv-endpoint",), "host:port for multi-node rendezvous."),
    Opt(
        "rank_timeout",
        float,
        DEFAULT_RANK_TIMEOUT_S,
        ("--rank-timeout",),
        "Seconds a rank may be stopped or silent in a collective before the run ends naming it.",
    ),
)
