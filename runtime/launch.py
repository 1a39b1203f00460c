"""Launch a plan: ``run(plan_path, steps)`` on one machine, or ``torchrun ... -m runtime.launch``.

``run`` starts the plan's world size of ranks itself (on CPU from a fork server —
:mod:`runtime.forkserver`: a clean, single-threaded process with torch preloaded, so ranks start
in milliseconds like fork but never inherit a lock held by another thread of the caller, e.g.
pytest-xdist's I/O thread, which deadlocked plain fork; spawn on CUDA, which cannot fork),
rendezvous through a FileStore private to the run (so concurrent runs never share a port), gloo
on CPU and NCCL on CUDA. Rank 0 gathers every rank's record and writes the run report; see
:func:`runtime.report.build_report`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import traceback
from datetime import timedelta
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from pathlib import Path
from typing import Any, TypeAlias, cast

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.arena import check_memory_plan
from runtime.checkpoint_files import CheckpointOptions, checkpoint_options
from runtime.defaults import DEFAULT_RANK_TIMEOUT_S
from runtime.elastic import check_elastic, last_checkpoint, lost_rank_error, relaunch
from runtime.faults import fault_from_env, read_steps, step_hook
from runtime.forkserver import cpu_context
from runtime.hf_weights import check_checkpoint
from runtime.optim import optimizer_class
from runtime.options import MEMORY_PLANS
from runtime.parallelize import check_supported
from runtime.plan_io import PlanError, load_plan, model_spec, world_size, world_size_arithmetic
from runtime.recipe import RECIPE_FLAGS, Recipe, recipe_argv, recipe_from
from runtime.report import build_report
from runtime.supervise import RankFailure, launcher_signals, quiet_rank, stop_all, watch
from runtime.tokens import TOKEN_DTYPES, check_token_file
from runtime.train import train_rank

_Context: TypeAlias = ForkContext | ForkServerContext | SpawnContext  # each has .Process


def plan_device_type(plan: dict) -> str | None:
    """ "cpu" or "cuda" from ``inputs.cluster.gpu`` (the ``cpu`` preset means CPU); None if absent."""
    gpu = (plan["inputs"].get("cluster") or {}).get("gpu")
    name = gpu.get("name") if isinstance(gpu, dict) else gpu
    if not name:
        return None
    return "cpu" if name == "cpu" else "cuda"


def resolve_device(plan: dict, device: str | None, nprocs: int) -> str:
    """The device type to run on; refuses one this machine lacks (message says why)."""
    device = device or plan_device_type(plan) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise PlanError(f"device {device!r} is not 'cpu' or 'cuda'")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PlanError(
                f"the plan runs on CUDA GPUs but torch {torch.__version__} sees none (torch.cuda.is_available() is False)"
            )
        if nprocs > torch.cuda.device_count():
            raise PlanError(f"{nprocs} ranks need {nprocs} GPUs on this machine; it has {torch.cuda.device_count()}")
    return device


def _worker(plan: dict, args: dict) -> None:
    """One rank, inside an initialised process group: train, then rank 0 writes the results."""
    if dist.get_world_size() != world_size(plan):
        raise PlanError(
            f"plan needs {world_size_arithmetic(plan)} ranks; launched world size is {dist.get_world_size()}"
        )
    record = train_rank(
        plan,
        args["steps"],
        args["recipe"],
        args["data"],
        args["device"],
        keep_state=bool(args["save_params"]),
        data_dtype=args.get("data_dtype"),
        checkpoint=args.get("checkpoint"),
        init_weights=args.get("init_weights"),
        metrics=args.get("metrics"),
        progress=bool(args.get("progress")),
        on_step=step_hook(args.get("fault"), dist.get_rank(), args.get("step_file")),
        memory_plan=args.get("memory_plan") or "none",
    )
    records: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(record, records, dst=0)
    if dist.get_rank() == 0:
        assert records is not None  # rank 0 gathered every rank's record
        state = {}
        for r in records:
            state.update(r.pop("state", {}))
        ckpt: CheckpointOptions | None = args.get("checkpoint")
        resumed = ckpt.resume.report_entry() if ckpt is not None and ckpt.resume is not None else None
        report = build_report(plan, records, args["device"], args.get("plan_path"), resumed)
        Path(args["out"]).write_text(json.dumps(report, indent=2) + "\n")
        if args["save_params"]:
            torch.save(state, args["save_params"])
    dist.barrier()  # measured: without it a rank aborted at shutdown about once in 25 runs


def _rank_main(rank: int, world: int, store_path: str, plan: dict, args: dict) -> None:
    quiet_rank()  # Ctrl-C is the launcher's to handle: one line, not a traceback per rank
    backend = "nccl" if args["device"] == "cuda" else "gloo"
    if args["device"] == "cuda":
        torch.cuda.set_device(rank)
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=args["rank_timeout_s"])
    )
    try:
        _worker(plan, args | {"step_file": store_path + ".step"})
    except BaseException:
        Path(store_path + f".error{rank}").write_text(traceback.format_exc())
        # The launcher reports the first rank's traceback from that file: exit without
        # multiprocessing printing one per rank (a lost rank makes every peer raise).
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def _start_and_watch(ctx: _Context, nprocs: int, plan: dict, args: dict) -> None:
    """Start the ranks and wait for them (runtime.supervise: failures, stopped ranks, signals)."""
    with tempfile.TemporaryDirectory(prefix="autopar-run-") as tmp, launcher_signals():
        store_path = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_rank_main, args=(r, nprocs, store_path, plan, args)) for r in range(nprocs)]
        try:
            for p in procs:
                p.start()
        except KeyboardInterrupt:  # a signal while starting: stop the ranks already started
            stop_all([p for p in procs if p.pid is not None])
            raise
        try:
            watch(procs, store_path, args["timeout_s"], args["rank_timeout_s"])
        except RankFailure as exc:
            exc.step, exc.losses = read_steps(store_path + ".step")  # before the directory goes
            raise


def check_inputs(plan: dict, data: str | None, data_dtype: str | None, init_weights) -> str | None:
    """Vet the token file and the checkpoint before any rank starts (one line, not a traceback
    per rank); the token file's id type."""
    try:
        if data is not None:
            data_dtype = check_token_file(data, plan, data_dtype).dtype
        if init_weights is not None:
            check_checkpoint(init_weights, model_spec(plan))
    except (ValueError, OSError) as exc:
        raise PlanError(str(exc)) from None
    return data_dtype


def _check_world(plan: dict, nprocs: int | None) -> int:
    """The number of ranks to start: the plan's world size (any other is refused), after refusing
    what the runtime does not implement."""
    need = world_size(plan)
    nprocs = need if nprocs is None else nprocs
    if nprocs != need:
        raise PlanError(f"plan needs {world_size_arithmetic(plan)} ranks; launched world size is {nprocs}")
    check_supported(plan)
    return nprocs


def run(
    plan_path,
    steps: int,
    data: str | None = None,
    out: str | Path = "report.json",
    *,
    recipe: Recipe | None = None,
    nprocs: int | None = None,
    device: str | None = None,
    save_params: str | Path | None = None,
    timeout_s: float = 600,
    start_method: str | None = None,
    data_dtype: str | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: str | Path | None = None,
    init_weights: str | Path | None = None,
    metrics: str | Path | None = None,
    progress: bool = False,
    rank_timeout_s: float = DEFAULT_RANK_TIMEOUT_S,
    elastic: bool = False,
    memory_plan: str = "none",
    _relaunch: int = 0,
) -> dict:
    """Train the plan up to step ``steps`` on this machine and return (and write) the report.

    recipe: optimizer, precision, clipping, schedule (default ``Recipe()``: AdamW, mixed precision
    as the plan's dtype says, runtime.recipe).
    plan_path: a plan JSON path or dict. nprocs: ranks to launch (default: the plan's world size;
    any other number is refused). device: "cpu" | "cuda" (default: the plan's cluster, else
    whatever this machine has). save_params: also write the final unsharded parameters there.
    checkpoint_dir / checkpoint_every: save there every N steps and after the last
    (:mod:`runtime.checkpoint`); resume: a checkpoint (or a directory of them: the latest) to
    continue from, under this plan or another (``steps`` is the total).
    init_weights: a Hugging Face checkpoint directory to start from (runtime.hf_weights);
    metrics: a JSONL file, a line per step (runtime.metrics); progress: a line per step on stderr.
    rank_timeout_s: a rank stopped, or silent in a collective, this long ends the run with an
    error naming it (runtime.supervise); timeout_s bounds the whole run. A lost rank: ``RankLost``,
    or with ``elastic`` re-plan and resume (runtime.elastic; ``_relaunch``: times done already).
    memory_plan: "arena" places saved activations in one planned buffer per rank (runtime.arena)."""
    plan = load_plan(plan_path)
    nprocs = _check_world(plan, nprocs)
    check_memory_plan(plan, memory_plan)
    device = resolve_device(plan, device, nprocs)
    data_dtype = check_inputs(plan, data, data_dtype, init_weights)
    recipe = recipe or Recipe()
    optimizer_name = optimizer_class(recipe)[0].__name__
    ckpt = checkpoint_options(plan, steps, checkpoint_dir, checkpoint_every, resume, optimizer_name)
    if elastic:  # before any rank starts: it needs a checkpoint directory and the plan's inputs
        check_elastic(plan, ckpt.directory)
    if ckpt.resume is not None:
        print(ckpt.resume.describe(), file=sys.stderr)
    args = {"checkpoint": ckpt, "steps": steps, "recipe": recipe, "data": data, "data_dtype": data_dtype}
    args |= {"device": device, "out": str(out), "timeout_s": timeout_s, "rank_timeout_s": rank_timeout_s}
    args |= {"plan_path": None if isinstance(plan_path, dict) else str(plan_path), "progress": progress}
    args["memory_plan"] = memory_plan
    paths = (("save_params", save_params), ("init_weights", init_weights), ("metrics", metrics))
    args |= {k: str(v) if v else None for k, v in paths} | {"fault": None if _relaunch else fault_from_env()}
    given = {"elastic": elastic, "resume": None if resume is None else str(resume), "start_method": start_method}
    return _launch(plan, args, nprocs, given, _relaunch)


def _launch(plan: dict, args: dict, nprocs: int, given: dict, count: int) -> dict:
    """Start the ranks and wait for them; the report, or what a lost rank leads to (``_on_lost``)."""
    try:
        _start_ranks(plan, args, nprocs, given["start_method"])
    except RankFailure as exc:
        if not exc.lost:  # a rank raised (its traceback is the error), stopped or hung
            raise
        return _on_lost(exc, plan, args, given, count)
    return json.loads(Path(args["out"]).read_text())


_RERUN_KEYS = (
    *("data", "out", "recipe", "device", "save_params", "timeout_s", "data_dtype", "metrics", "init_weights"),
    "memory_plan",
)


def _on_lost(exc: RankFailure, plan: dict, args: dict, given: dict, count: int) -> dict:
    """A rank was lost (runtime.elastic): without ``elastic`` raise ``RankLost`` naming the last
    checkpoint; with it, re-plan and resume (the report of the run that finished)."""
    ckpt: CheckpointOptions = args["checkpoint"]
    # A rank lost before the first step (at start-up) would be lost again: not re-planned.
    if not given["elastic"] or exc.step is None or len(exc.lost) >= world_size(plan):
        saved = last_checkpoint(ckpt.directory, given["resume"])
        raise lost_rank_error(exc, args["plan_path"], args["steps"], saved, args["recipe"], given["elastic"]) from None
    options = {k: args[k] for k in _RERUN_KEYS} | {
        "progress": args["progress"],
        "rank_timeout_s": args["rank_timeout_s"],
    }
    options |= {"checkpoint_dir": ckpt.directory, "checkpoint_every": ckpt.every_steps} | given
    return relaunch(run, plan, exc, args["steps"], options, count + 1)


def _start_ranks(plan: dict, args: dict, nprocs: int, start_method: str | None) -> None:
    """Start ``nprocs`` ranks of ``_rank_main`` and wait for them (see the module doc)."""
    ctx: _Context
    if start_method is not None:
        # "fork": children inherit the caller's state (tests). get_context(str) is typed BaseContext.
        ctx = cast(_Context, mp.get_context(start_method))
    else:
        ctx = mp.get_context("spawn") if args["device"] == "cuda" else cpu_context()
    _start_and_watch(ctx, nprocs, plan, args)


def print_torchrun_command(
    plan,
    nnodes: int,
    rdzv_endpoint: str,
    plan_path: str = "plan.json",
    steps: int = 10,
    out: str = "report.json",
    *,
    recipe: Recipe | None = None,
    data: str | None = None,
    data_dtype: str | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: str | None = None,
    init_weights: str | None = None,
    metrics: str | None = None,
    device: str | None = None,
    memory_plan: str = "none",
) -> str:
    """The torchrun line to start on each of ``nnodes`` nodes for this plan (every run option
    carried: steps, report, recipe flags, token file and its id type, checkpoints, initial
    weights, metrics file, device); printed once and returned. Paths must exist on every node (the
    token file, the checkpoints and the initial weights are read by every rank; the report and the
    metrics file are written by global rank 0's node)."""
    plan = load_plan(plan)
    need = world_size(plan)
    if need % nnodes:
        raise PlanError(
            f"{world_size_arithmetic(plan)} ranks do not split evenly over {nnodes} nodes: {need} % {nnodes} = {need % nnodes}"
        )
    # Every value is quoted: an endpoint or path with a shell metacharacter ('x;rm -rf /') must
    # stay one argument when the printed line is pasted into a shell.
    q = shlex.quote
    command = (
        f"torchrun --nnodes={nnodes} --nproc-per-node={need // nnodes} --rdzv-backend=c10d "
        f"--rdzv-endpoint={q(rdzv_endpoint)} --rdzv-id=autopar -m runtime.launch "
        f"--plan {q(plan_path)} --steps {steps} --out {q(out)}"
        + (f" {recipe_argv(recipe)}" if recipe and recipe_argv(recipe) else "")
        + (f" --data {q(data)}" if data else "")
        + (f" --data-dtype {q(data_dtype)}" if data_dtype else "")
        + (f" --checkpoint-dir {q(checkpoint_dir)}" if checkpoint_dir else "")
        + (f" --checkpoint-every {checkpoint_every}" if checkpoint_every else "")
        + (f" --resume {q(resume)}" if resume else "")
        + (f" --init-weights {q(init_weights)}" if init_weights else "")
        + (f" --metrics {q(metrics)}" if metrics else "")
        + (f" --device {q(device)}" if device else "")
        + (f" --memory-plan {q(memory_plan)}" if memory_plan != "none" else "")
    )
    print(command)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="plan JSON written by the planner")
    parser.add_argument("--steps", type=int, default=10, help="training steps")
    parser.add_argument("--out", default="report.json", help="run report path (written by rank 0)")
    for _, flag, kind, text in RECIPE_FLAGS:
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument(
        "--data", default=None, help="token file (raw uint16/uint32/int32 ids or llm.c .bin); default: synthetic tokens"
    )
    parser.add_argument("--data-dtype", choices=TOKEN_DTYPES, default=None, help="default: what the vocabulary needs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the plan's cluster")
    parser.add_argument("--save-params", default=None, help="also save the final parameters here")
    parser.add_argument("--checkpoint-dir", default=None, help="save checkpoints there (DCP, one step-* per save)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save every N steps (0: after the last only)")
    parser.add_argument("--resume", default=None, help="continue from this checkpoint (or the latest under it)")
    parser.add_argument("--init-weights", default=None, help="Hugging Face checkpoint directory to start from")
    parser.add_argument("--metrics", default=None, help="JSONL file: one line per step (written by rank 0)")
    parser.add_argument("--memory-plan", choices=MEMORY_PLANS, default="none", help="arena: runtime.arena")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point: under torchrun (RANK set) run this rank; otherwise launch all ranks here."""
    a = _parser().parse_args(argv)
    ckpt = {"checkpoint_dir": a.checkpoint_dir, "checkpoint_every": a.checkpoint_every, "resume": a.resume}
    extra = {
        "data_dtype": a.data_dtype,
        "init_weights": a.init_weights,
        "metrics": a.metrics,
        "memory_plan": a.memory_plan,
    }
    recipe = recipe_from(vars(a))
    if "RANK" not in os.environ:
        run(a.plan, a.steps, a.data, a.out, recipe=recipe, device=a.device, save_params=a.save_params, progress=True,
            **extra, **ckpt)  # fmt: skip
        return
    plan = load_plan(a.plan)
    check_memory_plan(plan, a.memory_plan)
    # Every rank vets the files it will read before joining the group: a bad one stops all.
    extra["data_dtype"] = check_inputs(plan, a.data, a.data_dtype, a.init_weights)
    checkpoint = checkpoint_options(
        plan, a.steps, a.checkpoint_dir, a.checkpoint_every, a.resume, optimizer_class(recipe)[0].__name__
    )
    device = resolve_device(plan, a.device, int(os.environ["LOCAL_WORLD_SIZE"]))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    args = {"steps": a.steps, "recipe": recipe, "data": a.data, "device": device, "out": a.out}
    args |= {"save_params": a.save_params, "plan_path": a.plan, "checkpoint": checkpoint, "progress": True}
    try:
        _worker(plan, args | extra)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
