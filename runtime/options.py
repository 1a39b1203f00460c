"""`autopar run`'s options, as data (cli.py turns them into typer options): torch-free, beside the
runtime's own defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.inputs import Opt
from runtime.defaults import DEFAULT_RANK_TIMEOUT_S
from runtime.plan_io import PlanError
from runtime.recipe import RECIPE_FLAGS, recipe_from

MEMORY_PLANS = ("none", "arena")  # --memory-plan: the caching allocator, or runtime.arena

RUN_OPTIONS = (
    Opt("plan_file", Path, ..., (), "Plan JSON written by `autopar plan --out`.", argument=True),
    Opt("steps", int, 5, ("--steps",), "Training steps to run."),
    Opt(
        "data",
        Path | None,
        None,
        ("--data",),
        "Token file: raw ids or llm.c's .bin with its header (docs/runtime.md); default synthetic tokens.",
    ),
    Opt(
        "data_dtype",
        str | None,
        None,
        ("--data-dtype",),
        "uint16, uint32 or int32: how a raw --data file stores ids (default: uint16 up to 65,536 ids, int32 beyond; an llm.c header says it itself).",
    ),
    Opt(
        "init_weights",
        Path | None,
        None,
        ("--init-weights",),
        "Hugging Face checkpoint directory (config.json + safetensors) to start from; its config must import "
        "to the plan's model (Llama, Mistral, Mixtral, Phi-3).",
    ),
    Opt(
        "metrics",
        Path | None,
        None,
        ("--metrics",),
        "JSONL file: one line per step (loss, lr, grad norm, tokens/s, memory per rank).",
    ),
    Opt(
        "report",
        Path,
        Path("report.json"),
        ("--out", "-o", "--report"),
        "Where to write the run report JSON (--report: its former name).",
    ),
    *(Opt(name, kind | None, None, (flag,), text) for name, flag, kind, text in RECIPE_FLAGS),
    Opt("nprocs", int | None, None, ("--nprocs",), "Ranks to start (must equal the plan's world size)."),
    Opt("device", str | None, None, ("--device",), "cpu or cuda (default: from the plan's cluster)."),
    Opt(
        "checkpoint_dir",
        Path | None,
        None,
        ("--checkpoint-dir",),
        "Save checkpoints (torch.distributed.checkpoint) there, one step-N directory per save.",
    ),
    Opt("checkpoint_every", int, 0, ("--checkpoint-every",), "Save every N steps (0: after the last step only)."),
    Opt(
        "resume",
        Path | None,
        None,
        ("--resume",),
        "Continue from this checkpoint (or the latest under it), under this plan or another; --steps is the total.",
    ),
    Opt(
        "elastic",
        bool,
        False,
        ("--elastic",),
        "When a rank is lost, re-plan for the ranks left and resume from the last checkpoint (needs --checkpoint-dir).",
    ),
    Opt(
        "memory_plan",
        str,
        "none",
        ("--memory-plan",),
        "none, or arena: saved activations at CP-SAT-planned offsets of one buffer per rank (docs/runtime.md).",
    ),
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


def launch_options(o: dict) -> dict[str, Any]:
    """What `autopar run` hands on to ``runtime.launch.run`` and ``print_torchrun_command`` alike
    (paths as strings, None when not given; the recipe flags as a Recipe: a bad value is a
    PlanError, one line and exit 2)."""
    if o["steps"] < 1:
        raise PlanError(f"--steps must be >= 1 (got {o['steps']})")
    if o.get("elastic") and o.get("nnodes", 1) > 1:
        raise PlanError("--elastic re-plans for the ranks this machine starts: it does not combine with --nnodes > 1")
    if o.get("memory_plan", "none") not in MEMORY_PLANS:
        raise PlanError(f"--memory-plan must be one of {', '.join(MEMORY_PLANS)} (got {o['memory_plan']!r})")
    out = {k: o[k] for k in ("data_dtype", "checkpoint_every", "device")} | {"recipe": recipe_from(o)}
    out["memory_plan"] = o.get("memory_plan", "none")
    paths = ("data", "checkpoint_dir", "resume", "init_weights", "metrics")
    return out | {k: str(o[k]) if o[k] else None for k in paths}
