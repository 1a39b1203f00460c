"""autopar command line: parse, call the library, render. No planning logic lives here.

Exit codes: 0 success, 1 negative verdict (does not fit, infeasible, validation failed),
2 bad usage or invalid input, 3 internal error. Data goes to stdout, everything else to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from models.errors import SpecError
from planner import render
from planner.inputs import build_inputs, parse_sets

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Plan, score and run parallel training of large models (dp/tp/pp/cp/ep, ZeRO, recompute).")
presets_app = typer.Typer(no_args_is_help=True, help="List and show model and GPU presets.")
schema_app = typer.Typer(no_args_is_help=True, help="Print JSON Schemas of autopar's files.")
app.add_typer(presets_app, name="presets")
app.add_typer(schema_app, name="schema")
# Wide enough for the stage tables when piped (rich falls back to 80 columns without a TTY);
# rich itself drops colour when not a TTY or when NO_COLOR is set.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _guard(fn):
    """Turn bad input into one line + exit 2 and bugs into exit 3, never a raw traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(2)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - last-resort guard of the CLI boundary
            err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}", markup=True, highlight=False)
            if "--debug" in sys.argv:
                traceback.print_exc()
            raise typer.Exit(3)

    return wrapper


# Shared by estimate and plan: optional here so `estimate --plan` can omit them; missing ones
# are reported by planner.inputs with exit code 2.
MODEL = typer.Option(None, "--model", "-m", help="Preset name, spec file or HF config.json.")
CLUSTER = typer.Option(None, "--cluster", "-c", help="GPU:N, a GPU preset or a cluster file.")
GBS = typer.Option(None, "--global-batch", "-b", help="Sequences per optimizer step.")
SEQ = typer.Option(None, "--seq-len", "-s", help="Tokens per sequence.")
DTYPE = typer.Option("bf16", "--dtype", help="Compute dtype: bf16, fp16, fp8 or fp32.")
ATTN = typer.Option("flash", "--attention", help="Attention kernel: flash (fused, no s^2 tensors) or eager.")
SETS = typer.Option(None, "--set", help="Override a spec field: model.KEY=VALUE, cluster.KEY=VALUE or "
                    "training.grad_reduce_dtype=auto|fp32|bf16 or training.tp_overlap=backward|none (repeatable).")
FMT = typer.Option("table", "--format", "-f", help="Output format: table or json.")
PLOT = typer.Option(None, "--plot", help="Draw the plan to this .png/.svg/.pdf (needs autopar[plots]).")
PLOT_KIND = typer.Option("gantt", "--plot-kind", help="gantt, memory, breakdown, or all (PATH-gantt, -memory, -breakdown).")


@app.command()
@_guard
def estimate(
    model: Optional[str] = MODEL,
    cluster: Optional[str] = CLUSTER,
    global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ,
    dtype: str = DTYPE,
    attention: str = ATTN,
    dp: Optional[int] = typer.Option(None, help="Data-parallel degree (default: GPUs / (tp*pp*cp))."),
    tp: int = typer.Option(1, help="Tensor-parallel degree (1 = off)."),
    pp: int = typer.Option(1, help="Pipeline-parallel degree (1 = off)."),
    cp: int = typer.Option(1, help="Context-parallel degree (1 = off)."),
    ep: int = typer.Option(1, help="Expert-parallel degree, carved out of dp*cp (1 = off)."),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Sequences per micro-batch per data-parallel rank."),
    zero: int = typer.Option(0, help="ZeRO stage: 0 none, 1 optimizer, 2 +gradients, 3 +weights (FSDP)."),
    recompute: str = typer.Option("none", help="Activation recompute: none, selective or full."),
    schedule: str = typer.Option("1f1b", help="Pipeline schedule: gpipe, 1f1b or interleaved."),
    vpp: int = typer.Option(1, help="Virtual stages per pipeline rank (interleaved schedule)."),
    sequence_parallel: bool = typer.Option(False, "--sequence-parallel", help="Split tp-replicated regions by sequence."),
    stage_layers: Optional[str] = typer.Option(None, "--stage-layers", help="Blocks per pipeline chunk, e.g. 7,8,8,...,7."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Re-score a saved plan JSON with the current cost model."),
    sets: Optional[list[str]] = SETS,
    fmt: str = FMT,
    plot: Optional[Path] = PLOT,
    plot_kind: str = PLOT_KIND,
) -> None:
    """Score one hand-specified plan: step time, tokens/s, MFU/HFU and memory per pipeline stage."""
    from planner import plots
    from planner.estimate import estimate as run_estimate

    _check_format(fmt)
    if plot:
        plots.plot_paths(plot, plot_kind)  # a bad --plot or no matplotlib: exit 2 before any work
    if plan is not None:
        from planner.inputs import Inputs
        from planner.plan import load_plan, plan_inputs

        spec, clus, train, par = plan_inputs(load_plan(plan))
        inputs = Inputs(spec, clus, train, par, {"plan": str(plan)})
    else:
        knobs = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, micro_batch=micro_batch, zero=zero, recompute=recompute,
                     schedule=schedule, vpp=vpp, sequence_parallel=sequence_parallel, stage_layers=stage_layers)
        inputs = build_inputs(model, cluster, global_batch, seq_len, dtype, attention, parse_sets(sets or []), knobs)
    result = run_estimate(inputs.model, inputs.cluster, inputs.training, inputs.parallel)
    if fmt == "json":
        print(json.dumps(render.estimate_json(result, inputs), indent=2))
    else:
        render.estimate_table(out, result)
    if plot:
        err.print("wrote " + ", ".join(map(str, plots.write_plots(result, plot, plot_kind))), highlight=False)
    if not result.fits:
        r, over = max(result.over, key=lambda x: x[1])
        err.print(f"does not fit: pipeline stage {r} needs {over / 2**30:.2f} GiB more than the "
                  f"{result.predicted['memory_capacity_bytes'] / 2**30:.2f} GiB usable per GPU", highlight=False)
        raise typer.Exit(1)


def _check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json")) -> None:
    if fmt not in allowed:
        raise SpecError(f"--format must be one of {', '.join(allowed)} (got {fmt!r})")


KNOB = "auto, one value, or a comma list"
# Search-space knobs shared by plan and sweep.
K_DP = typer.Option("auto", help=f"Data-parallel degree: {KNOB} (default GPUs/(tp*pp*cp)).")
K_TP = typer.Option("auto", help=f"Tensor-parallel degree: {KNOB} (auto: powers of 2 up to a node, max 8).")
K_PP = typer.Option("auto", help=f"Pipeline-parallel degree: {KNOB} (auto: divisors up to the layer count).")
K_CP = typer.Option("auto", help=f"Context-parallel degree: {KNOB} (auto: 1, or 1-8 from 16k tokens).")
K_EP = typer.Option("auto", help=f"Expert-parallel degree: {KNOB} (auto: 1 for dense models).")
K_MICRO_BATCH = typer.Option("auto", "--micro-batch", help=f"Micro-batch size: {KNOB} (auto: 1,2,4,8).")
K_ZERO = typer.Option("auto", help=f"ZeRO stage: {KNOB} (auto: 0,1,2,3).")
K_SCHEDULE = typer.Option("auto", help=f"Pipeline schedule: {KNOB} of gpipe, 1f1b, interleaved.")
K_VPP = typer.Option("auto", help=f"Virtual stages for interleaved: {KNOB} (auto: 2).")
K_SEQUENCE_PARALLEL = typer.Option("auto", "--sequence-parallel", help="auto, on, off or on,off (auto: on when tp>1).")
K_RECOMPUTE = typer.Option("auto", help=f"Per-layer recompute options: {KNOB} of none, selective, full.")


@app.command()
@_guard
def plan(
    model: Optional[str] = MODEL,
    cluster: Optional[str] = CLUSTER,
    global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ,
    dtype: str = DTYPE,
    attention: str = ATTN,
    dp: str = K_DP,
    tp: str = K_TP,
    pp: str = K_PP,
    cp: str = K_CP,
    ep: str = K_EP,
    micro_batch: str = K_MICRO_BATCH,
    zero: str = K_ZERO,
    schedule: str = K_SCHEDULE,
    vpp: str = K_VPP,
    sequence_parallel: str = K_SEQUENCE_PARALLEL,
    recompute: str = K_RECOMPUTE,
    time_limit: float = typer.Option(60.0, "--time-limit", help="Wall-clock seconds; the best plan so far is returned."),
    gap: float = typer.Option(0.01, "--gap", help="Relative optimality gap at which to stop (0.01 = 1%)."),
    solver: str = typer.Option("ortools", "--solver", help="MILP backend: ortools (HiGHS) or pulp (CBC)."),
    top_k: int = typer.Option(3, "--top-k", help="How many runner-up plans to report, at most."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the plan JSON to this file."),
    sets: Optional[list[str]] = SETS,
    fmt: str = FMT,
    plot: Optional[Path] = PLOT,
    plot_kind: str = PLOT_KIND,
) -> None:
    """Search the plan space (MILP per candidate, certified gap) for the fastest plan that fits."""
    from planner import plan_cli, plots
    from planner.plan import build_plan
    from planner.search import search

    _check_format(fmt)
    if plot:
        plots.plot_paths(plot, plot_kind)
    plan_cli.check_search_settings(solver, gap, time_limit)
    raw = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, micro_batch=micro_batch, zero=zero, schedule=schedule, vpp=vpp,
               sequence_parallel=sequence_parallel, recompute=recompute)
    knobs = plan_cli.parse_knobs(raw)
    inputs = build_inputs(model, cluster, global_batch, seq_len, dtype, attention, parse_sets(sets or []), None)
    with err.status("planning") as status:
        def progress(done, total, inc, last):
            best = f"{inc.predicted['step_time_s']:.3f} s" if inc else "-"
            status.update(f"solving candidates {done}/{total} · incumbent {best}")

        res = search(inputs.model, inputs.cluster, inputs.training, knobs, solver, gap, time_limit, top_k, progress)
    if res.best is None:
        err.print("no plan fits: " + plan_cli.infeasible_advice(inputs.model, inputs.cluster, inputs.training, res),
                  highlight=False)
        raise typer.Exit(1)
    cmd = plan_cli.reproduce_command(inputs.refs, inputs.training, raw,
                                     {"time_limit": time_limit, "gap": gap, "solver": solver})
    doc = build_plan(res.best, plan_cli.solver_block(res, solver), cmd, raw,
                     {"alternatives": plan_cli.alternatives_block(res)})
    if out_path:
        out_path.write_text(json.dumps(doc, indent=2) + "\n")
        err.print(f"wrote {out_path}", highlight=False)
    if plot:
        err.print("wrote " + ", ".join(map(str, plots.write_plots(res.best, plot, plot_kind))), highlight=False)
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    else:
        plan_cli.render_plan(out, doc, res.best)


@app.command()
@_guard
def run(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `autopar plan --out`."),
    steps: int = typer.Option(5, "--steps", help="Training steps to run."),
    data: Optional[Path] = typer.Option(None, "--data", help="Token file (uint16/int32 ids); default synthetic tokens."),
    report: Path = typer.Option(Path("report.json"), "--report", help="Where to write the run report JSON."),
    lr: float = typer.Option(1e-2, "--lr", help="SGD learning rate."),
    nprocs: Optional[int] = typer.Option(None, "--nprocs", help="Ranks to start (must equal the plan's world size)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: from the plan's cluster)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes: >1 prints the torchrun command for each node instead."),
    rdzv_endpoint: str = typer.Option("localhost:29500", "--rdzv-endpoint", help="host:port for multi-node rendezvous."),
    fmt: str = FMT,
) -> None:
    """Train a few steps with exactly this plan (torch.distributed) and report measured vs predicted."""
    _check_format(fmt)
    if steps < 1:
        raise SpecError(f"--steps must be >= 1 (got {steps})")
    try:
        from runtime import launch
        from runtime.plan_io import PlanError as RuntimePlanError
    except ImportError as exc:
        raise SpecError(f"the runtime needs torch: pip install 'autopar[runtime]' ({exc})") from None
    try:
        if nnodes > 1:
            print(launch.print_torchrun_command(str(plan_file), nnodes, rdzv_endpoint, str(plan_file), steps, str(report)))
            return
        rep = launch.run(str(plan_file), steps, str(data) if data else None, report, lr=lr, nprocs=nprocs, device=device)
    except RuntimePlanError as exc:
        raise SpecError(str(exc)) from None
    err.print(f"wrote {report}", highlight=False)
    if fmt == "json":
        print(json.dumps(rep, indent=2))
        return
    render.run_report_table(out, rep)


@schema_app.command("plan")
@_guard
def schema_plan() -> None:
    """JSON Schema of the plan file."""
    from planner.plan import plan_schema

    print(json.dumps(plan_schema(), indent=2))


@presets_app.command("list")
@_guard
def presets_list(kind: str = typer.Argument("all", help="models, gpus or all."), fmt: str = FMT) -> None:
    """List model and GPU presets."""
    _check_format(fmt)
    render.presets_list(out, kind, fmt)


@presets_app.command("show")
@_guard
def presets_show(name: str = typer.Argument(..., help="A model or GPU preset name."), fmt: str = FMT) -> None:
    """Show one preset's fields (model spec or GPU spec) with derived sizes."""
    _check_format(fmt)
    render.preset_show(out, name, fmt)


@app.command()
@_guard
def sweep(
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    dp: str = K_DP,
    tp: str = K_TP,
    pp: str = K_PP,
    cp: str = K_CP,
    ep: str = K_EP,
    micro_batch: str = K_MICRO_BATCH,
    zero: str = K_ZERO,
    schedule: str = K_SCHEDULE,
    vpp: str = K_VPP,
    sequence_parallel: str = K_SEQUENCE_PARALLEL,
    recompute: str = K_RECOMPUTE,
    vary: Optional[list[str]] = typer.Option(None, "--vary", help="KEY=V1,V2,... (repeatable; the points are the cartesian product)."),
    tokens: str = typer.Option("1T", "--tokens", help="Token budget for time-to-train, e.g. 1e12, 15T, 300B."),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", help="USD per GPU-hour for the cost column."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Wall-clock seconds per point."),
    gap: float = typer.Option(0.01, "--gap", help="Relative optimality gap per point (0.01 = 1%)."),
    solver: str = typer.Option("ortools", "--solver", help="MILP backend: ortools (HiGHS) or pulp (CBC)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Worker processes (default: CPU count)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache directory (default $AUTOPAR_CACHE_DIR or ~/.cache/autopar/sweep)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the rows to a .csv or .jsonl file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw tokens/s and cost against the first --vary key (.png/.svg/.pdf)."),
    sets: Optional[list[str]] = SETS,
    fmt: str = typer.Option("table", "--format", "-f", help="Output format: table, csv or jsonl."),
) -> None:
    """What-if over any input: plan every point of the --vary product (time-to-train, cost, Pareto front)."""
    from planner import sweep as sw
    from planner.sweep_cli import plot_rows, run_cli

    knobs = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, micro_batch=micro_batch, zero=zero, schedule=schedule, vpp=vpp,
                 sequence_parallel=sequence_parallel, recompute=recompute)
    spec = sw.SweepSpec(model, cluster, global_batch, seq_len, dtype, attention, tuple(sets or ()), knobs,
                        tuple(vary or ()), time_limit, gap, solver, sw.parse_tokens(tokens), price)
    rows = run_cli(spec, jobs, cache, no_cache, fmt, out_path, out, err)
    if plot:
        plot_rows(rows, spec, plot, err)
    if not any(r["feasible"] for r in rows):
        raise typer.Exit(1)


@schema_app.command("model")
@_guard
def schema_model() -> None:
    """JSON Schema of a model spec file (complete, or `extends:` a preset)."""
    from planner.schemas import model_schema

    print(json.dumps(model_schema(), indent=2))


@schema_app.command("cluster")
@_guard
def schema_cluster() -> None:
    """JSON Schema of a cluster file (`--cluster my-cluster.yaml`)."""
    from planner.schemas import cluster_schema

    print(json.dumps(cluster_schema(), indent=2))


@app.command("import-hf")
@_guard
def import_hf(
    source: str = typer.Argument(..., help="A Hugging Face config.json, or a directory holding one."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the spec to this .yaml/.json file."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (default: from _name_or_path or the folder)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="yaml or json (default: -o's suffix, else yaml)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: model.KEY=VALUE (repeatable)."),
) -> None:
    """Import a Hugging Face config.json as a model spec (stdout or -o); what was read or ignored goes to stderr."""
    from planner.import_hf import run_import

    text = run_import(err, source, out_path, name, fmt, parse_sets(sets or []))
    if text is not None:
        sys.stdout.write(text)


@app.command()
@_guard
def doctor(fmt: str = FMT) -> None:
    """Check the installation: versions, MILP solvers, GPUs, torch.distributed (exit 1: no solver can plan)."""
    from planner.doctor import run_doctor

    _check_format(fmt)
    raise typer.Exit(run_doctor(out, err, fmt))


@app.command("export")
@_guard
def export_cmd(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `autopar plan --out`."),
    to: str = typer.Option(..., "--to", help="Target runtime: torchtitan (TOML), megatron (arguments) or deepspeed (JSON)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the configuration to this file (default: stdout)."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (the runtime's own file) or json (config, notes, text)."),
) -> None:
    """Write the plan as torchtitan, Megatron-LM or DeepSpeed configuration, with a note per setting it lacks."""
    from planner.export import run_export

    _check_format(fmt, ("text", "json"))
    run_export(plan_file, to, out_path, fmt, err)


@app.command()
@_guard
def validate(
    plan_file: Path = typer.Argument(..., help="Plan JSON to check (written by `autopar plan --out`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Re-derive with this model instead of the recorded one."),
    cluster: Optional[str] = typer.Option(None, "--cluster", "-c", help="Re-derive with this cluster instead of the recorded one."),
    sets: Optional[list[str]] = SETS,
    against: Optional[Path] = typer.Option(None, "--against", help="Golden plan: step time or peak memory above its figures by more than the tolerance is an error."),
    tolerance: str = typer.Option("2%", "--tolerance", help="Allowed regression and drift: a percentage (2%) or a fraction (0.02)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or github (one Actions annotation line per finding)."),
) -> None:
    """The CI gate: re-derive a plan's checks with the current cost model (exit 1 on any error finding)."""
    from planner.validate_render import run_cli

    if not run_cli(out, err, plan_file, model, cluster, sets or [], against, tolerance, fmt):
        raise typer.Exit(1)


@app.command()
@_guard
def diff(
    a: Path = typer.Argument(..., help="The plan to start from."),
    b: Path = typer.Argument(..., help="The plan to compare with."),
    fmt: str = FMT,
) -> None:
    """Which knobs changed between two plans and how much of the step time, tokens/s and memory change each accounts for."""
    from planner import diff as plan_diff

    _check_format(fmt)
    plan_diff.render(out, plan_diff.diff_plans(a, b), fmt)


@app.command()
@_guard
def explain(
    plan_file: Optional[Path] = typer.Argument(None, help="Plan JSON to explain (omit it with --infeasible -m -c -b -s)."),
    infeasible: bool = typer.Option(False, "--infeasible", help="No plan fits: the conflicting constraints and what would fit."),
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    time_limit: float = typer.Option(30.0, "--time-limit", help="Wall-clock seconds shared by all the re-plans."),
    sets: Optional[list[str]] = SETS,
    fmt: str = FMT,
) -> None:
    """Why this plan: each decision forced to each alternative, the binding constraint, what +1 GiB or +1 node buys."""
    from planner.explain_render import run_cli

    _check_format(fmt)
    problem = dict(model=model, cluster=cluster, global_batch=global_batch, seq_len=seq_len, dtype=dtype, attention=attention)
    code = run_cli(out, err, plan_file, infeasible, problem, time_limit, parse_sets(sets or []), fmt)
    if code:
        raise typer.Exit(code)


if __name__ == "__main__":
    app()
