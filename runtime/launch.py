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

from runtime.defaults import DEFAULT_LR, DEFAULT_RANK_TIMEOUT_S
from runtime.forkserver import cpu_context
from runtime.parallelize import check_supported
from runtime.plan_io import PlanError, load_plan, world_size, world_size_arithmetic
from runtime.report import build_report
from runtime.supervise import launcher_signals, quiet_rank, stop_all, watch
from runtime.train import TOKEN_DTYPES, check_token_file, train_rank

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
        args["lr"],
        args["data"],
        args["device"],
        keep_state=bool(args["save_params"]),
        data_dtype=args.get("data_dtype"),
    )
    records: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(record, records, dst=0)
    if dist.get_rank() == 0:
        assert records is not None  # rank 0 gathered every rank's record
        state = {}
        for r in records:
            state.update(r.pop("state", {}))
        report = build_report(plan, records, args["device"], args.get("plan_path"))
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
        _worker(plan, args)
    except BaseException:
        Path(store_path + f".error{rank}").write_text(traceback.format_exc())
        raise
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
        watch(procs, store_path, args["timeout_s"], args["rank_timeout_s"])


def run(
    plan_path,
    steps: int,
    data: str | None = None,
    out: str | Path = "report.json",
    *,
    lr: float = DEFAULT_LR,
    nprocs: int | None = None,
    device: str | None = None,
    save_params: str | Path | None = None,
    timeout_s: float = 600,
    start_method: str | None = None,
    data_dtype: str | None = None,
    rank_timeout_s: float = DEFAULT_RANK_TIMEOUT_S,
) -> dict:
    """Train ``steps`` SGD steps of the plan on this machine and return (and write) the report.

    plan_path: a plan JSON path or dict. nprocs: ranks to launch (default: the plan's world size;
    any other number is refused). device: "cpu" | "cuda" (default: the plan's cluster, else
    whatever this machine has). save_params: also write the final unsharded parameters there.
    rank_timeout_s: a rank stopped, or silent in a collective, this long ends the run with an
    error naming it (runtime.supervise); timeout_s bounds the whole run.
    """
    plan = load_plan(plan_path)
    need = world_size(plan)
    nprocs = need if nprocs is None else nprocs
    if nprocs != need:
        raise PlanError(f"plan needs {world_size_arithmetic(plan)} ranks; launched world size is {nprocs}")
    check_supported(plan)
    device = resolve_device(plan, device, nprocs)
    if data is not None:
        try:  # before any rank starts: one line, not a traceback per rank
            data_dtype = check_token_file(data, plan, data_dtype)
        except (ValueError, OSError) as exc:
            raise PlanError(str(exc)) from None
    args = {
        "steps": steps,
        "lr": lr,
        "data": data,
        "data_dtype": data_dtype,
        "device": device,
        "out": str(out),
        "timeout_s": timeout_s,
        "rank_timeout_s": rank_timeout_s,
        "save_params": str(save_params) if save_params else None,
        "plan_path": None if isinstance(plan_path, dict) else str(plan_path),
    }
    ctx: _Context
    if start_method is not None:
        # "fork": children inherit the caller's state (tests). get_context(str) is typed BaseContext.
        ctx = cast(_Context, mp.get_context(start_method))
    else:
        ctx = mp.get_context("spawn") if device == "cuda" else cpu_context()
    _start_and_watch(ctx, nprocs, plan, args)
    return json.loads(Path(out).read_text())


def print_torchrun_command(
    plan,
    nnodes: int,
    rdzv_endpoint: str,
    plan_path: str = "plan.json",
    steps: int = 10,
    out: str = "report.json",
    *,
    lr: float = DEFAULT_LR,
    data: str | None = None,
    data_dtype: str | None = None,
) -> str:
    """The torchrun line to start on each of ``nnodes`` nodes for this plan (every run option
    carried: steps, report, learning rate, token file); printed once and returned."""
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
        f"--plan {q(plan_path)} --steps {steps} --out {q(out)} --lr {lr}"
        + (f" --data {q(data)}" if data else "")
        + (f" --data-dtype {q(data_dtype)}" if data_dtype else "")
    )
    print(command)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point: under torchrun (RANK set) run this rank; otherwise launch all ranks here."""
    parser = argparse.ArgumentParser(prog="python -m runtime.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="plan JSON written by the planner")
    parser.add_argument("--steps", type=int, default=10, help="training steps")
    parser.add_argument("--out", default="report.json", help="run report path (written by rank 0)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="SGD learning rate")
    parser.add_argument("--data", default=None, help="token file (uint16 or int32 ids); default: synthetic tokens")
    parser.add_argument("--data-dtype", choices=TOKEN_DTYPES, default=None, help="default: what the vocabulary needs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the plan's cluster")
    parser.add_argument("--save-params", default=None, help="also save the final parameters here")
    a = parser.parse_args(argv)
    if "RANK" not in os.environ:
        run(
            a.plan, a.steps, a.data, a.out, lr=a.lr, device=a.device, save_params=a.save_params, data_dtype=a.data_dtype
        )
        return
    plan = load_plan(a.plan)
    device = resolve_device(plan, a.device, int(os.environ["LOCAL_WORLD_SIZE"]))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        _worker(
            plan,
            {
                "steps": a.steps,
                "lr": a.lr,
                "data": a.data,
                "data_dtype": a.data_dtype,
                "device": device,
                "out": a.out,
                "save_params": a.save_params,
                "plan_path": a.plan,
            },
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
