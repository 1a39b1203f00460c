"""autopar command line: parse, call a command (planner/commands), render its result
(planner/render), map the outcome to an exit code (``_guard``: 0 success; 1 negative verdict,
``Verdict``; 2 bad input, ``SpecError``; 3 internal error, with the traceback under ``--debug``).
Data goes to stdout, everything else to stderr. The knob options of ``estimate``, ``plan`` and
``sweep`` are generated from the knob registry (planner/knobs.py) by ``_with_knobs``."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console

from models.errors import SpecError
from planner.commands.common import check_format, write_output
from planner.inputs import build_inputs, parse_sets
from planner.knobs import KNOB_NAMES, SPACE_KNOBS, cli_parameters
from runtime.defaults import DEFAULT_LR
from runtime.plan_io import PlanError as RuntimePlanError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Plan, score and run parallel training of large models (dp/tp/pp/cp/ep, ZeRO, recompute).")
presets_app = typer.Typer(no_args_is_help=True, help="List and show model and GPU presets.")
schema_app = typer.Typer(no_args_is_help=True, help="Print JSON Schemas of autopar's files.")
app.add_typer(presets_app, name="presets")
app.add_typer(schema_app, name="schema")
# Wide enough for the stage tables when piped; rich drops colour without a TTY or with NO_COLOR.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
DEBUG = {"traceback": False}


class Verdict(Exception):
    """A negative verdict: exit code 1, with its message (if any) as the last line on stderr."""


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="On an internal error (exit 3) also print the traceback.")
         ) -> None:
    """Plan, score and run parallel training of large models (dp/tp/pp/cp/ep, ZeRO, recompute)."""
    DEBUG["traceback"] = debug


def _guard(fn):
    """The exit-code map: bad input is one line and exit 2, a negative verdict exit 1, a bug exit 3;
    never a raw traceback (unless ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SpecError, RuntimePlanError) as exc:  # the runtime's plan reader refuses a plan: bad input
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except Verdict as exc:
            if str(exc):
                err.print(str(exc), highlight=False, markup=False)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - last-resort guard of the CLI boundary
            err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}", markup=True, highlight=False)
            if DEBUG["traceback"]:
                traceback.print_exc()
            raise typer.Exit(3) from None

    return wrapper


def _with_knobs(mode: Literal["space", "fixed"]):
    """Replace the command's ``knobs`` parameter by one option per registry knob, and hand the
    command their values as ``knobs`` (a dict by knob name)."""
    names = SPACE_KNOBS if mode == "space" else KNOB_NAMES

    def deco(fn):
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        at = [p.name for p in params].index("knobs")
        params[at:at + 1] = cli_parameters(mode, typer.Option)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, knobs={n: kwargs.pop(n) for n in names if n in kwargs}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return deco


# Optional here so `estimate --plan` can omit them; planner.inputs reports missing ones (exit 2).
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
TIME_LIMIT = typer.Option(60.0, "--time-limit", help="Wall-clock seconds; the best plan so far is returned.")
GAP = typer.Option(0.01, "--gap", help="Relative optimality gap at which to stop (0.01 = 1%).")
SOLVER = typer.Option("ortools", "--solver", help="MILP backend: ortools (HiGHS) or pulp (CBC).")


def _plots(plot: Path | None, kind: str):
    """The plots module when ``--plot`` is given (a bad --plot or no matplotlib: exit 2 before any work)."""
    from planner.render import plots

    return plots if plot is not None and plots.plot_paths(plot, kind) else None


@app.command()
@_guard
@_with_knobs("fixed")
def estimate(
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    knobs: dict = {},  # noqa: B006 - replaced by one option per knob (_with_knobs)
    plan: Optional[Path] = typer.Option(None, "--plan", help="Re-score a saved plan JSON with the current cost model."),
    sets: Optional[list[str]] = SETS, fmt: str = FMT, plot: Optional[Path] = PLOT, plot_kind: str = PLOT_KIND,
) -> None:
    """Score one hand-specified plan: step time, tokens/s, MFU/HFU and memory per pipeline stage."""
    from planner.commands.estimate import inputs_of_plan, run_estimate
    from planner.render.estimate_table import estimate_json, estimate_table

    check_format(fmt)
    plots = _plots(plot, plot_kind)
    inputs = inputs_of_plan(plan) if plan is not None else \
        build_inputs(model, cluster, global_batch, seq_len, dtype, attention, parse_sets(sets or []), knobs)
    result = run_estimate(inputs).estimate
    if fmt == "json":
        print(json.dumps(estimate_json(result, inputs), indent=2))
    else:
        estimate_table(out, result)
    if plots:
        err.print("wrote " + ", ".join(map(str, plots.write_plots(result, plot, plot_kind))), highlight=False)
    if not result.fits:
        r, over = max(result.over, key=lambda x: x[1])
        raise Verdict(f"does not fit: pipeline stage {r} needs {over / 2**30:.2f} GiB more than the "
                      f"{result.predicted.memory_capacity_bytes / 2**30:.2f} GiB usable per GPU")


@app.command()
@_guard
@_with_knobs("space")
def plan(
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    knobs: dict = {},  # noqa: B006 - replaced by one option per knob (_with_knobs)
    time_limit: float = TIME_LIMIT, gap: float = GAP, solver: str = SOLVER,
    top_k: int = typer.Option(3, "--top-k", help="How many runner-up plans to report, at most."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the plan JSON to this file."), sets: Optional[list[str]] = SETS, fmt: str = FMT,
    plot: Optional[Path] = PLOT, plot_kind: str = PLOT_KIND,
) -> None:
    """Search the plan space (MILP per candidate, certified gap) for the fastest plan that fits."""
    from planner.commands.plan import SearchSettings, run_plan
    from planner.render.plan import render_plan

    check_format(fmt)
    plots = _plots(plot, plot_kind)
    settings = SearchSettings(solver, gap, time_limit, top_k).check()
    inputs = build_inputs(model, cluster, global_batch, seq_len, dtype, attention, parse_sets(sets or []), None)
    with err.status("planning") as status:
        def progress(done, total, inc, last):
            best = f"{inc.step_time_s:.3f} s" if inc else "-"
            status.update(f"solving candidates {done}/{total} · incumbent {best}")

        result = run_plan(inputs, knobs, settings, progress)
    if result.doc is None or result.best is None:
        raise Verdict(f"no plan fits: {result.advice}")
    if out_path:
        write_output(out_path, json.dumps(result.doc, indent=2) + "\n")
        err.print(f"wrote {out_path}", highlight=False)
    if plots:
        err.print("wrote " + ", ".join(map(str, plots.write_plots(result.best, plot, plot_kind))), highlight=False)
    if fmt == "json":
        print(json.dumps(result.doc, indent=2))
    else:
        render_plan(out, result.doc, result.best)


@app.command()
@_guard
def run(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `autopar plan --out`."),
    steps: int = typer.Option(5, "--steps", help="Training steps to run."),
    data: Optional[Path] = typer.Option(None, "--data", help="Token file (uint16/int32 ids); default synthetic tokens."),
    report: Path = typer.Option(Path("report.json"), "--report", help="Where to write the run report JSON."),
    lr: float = typer.Option(DEFAULT_LR, "--lr", help="SGD learning rate."),
    nprocs: Optional[int] = typer.Option(None, "--nprocs", help="Ranks to start (must equal the plan's world size)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: from the plan's cluster)."),
    nnodes: int = typer.Option(1, "--nnodes", help="Nodes: >1 prints the torchrun command for each node instead."),
    rdzv_endpoint: str = typer.Option("localhost:29500", "--rdzv-endpoint", help="host:port for multi-node rendezvous."),
    fmt: str = FMT) -> None:
    """Train a few steps with exactly this plan (torch.distributed) and report measured vs predicted."""
    check_format(fmt)
    if steps < 1:
        raise SpecError(f"--steps must be >= 1 (got {steps})")
    try:
        from runtime import launch
    except ImportError as exc:
        raise SpecError(f"the runtime needs torch: pip install 'autopar[runtime]' ({exc})") from None
    if nnodes > 1:  # it prints the command for each node
        launch.print_torchrun_command(str(plan_file), nnodes, rdzv_endpoint, str(plan_file), steps, str(report))
        return
    rep = launch.run(str(plan_file), steps, str(data) if data else None, report, lr=lr, nprocs=nprocs, device=device)
    err.print(f"wrote {report}", highlight=False)
    if fmt == "json":
        print(json.dumps(rep, indent=2))
        return
    from planner.render.run import run_report_table

    run_report_table(out, rep)


def _schema_command(kind: str, loader: str, doc: str) -> None:
    """Register ``autopar schema KIND``: print the JSON Schema ``loader`` ("module:function") returns."""

    def command() -> None:
        module, _, name = loader.partition(":")
        print(json.dumps(getattr(importlib.import_module(module), name)(), indent=2))

    command.__doc__ = doc
    schema_app.command(kind)(_guard(command))


for _kind, _loader, _doc in (("plan", "planner.planfile.schema:plan_schema", "JSON Schema of the plan file."),
                             ("model", "planner.commands.schemas:model_schema",
                              "JSON Schema of a model spec file (complete, or `extends:` a preset)."),
                             ("cluster", "planner.commands.schemas:cluster_schema",
                              "JSON Schema of a cluster file (`--cluster my-cluster.yaml`).")):
    _schema_command(_kind, _loader, _doc)


@presets_app.command("list")
@_guard
def presets_list(kind: str = typer.Argument("all", help="models, gpus or all."), fmt: str = FMT) -> None:
    """List model and GPU presets."""
    from planner.commands.presets import list_preset_rows
    from planner.render import presets

    check_format(fmt)
    presets.presets_list(out, list_preset_rows(kind), fmt)


@presets_app.command("show")
@_guard
def presets_show(name: str = typer.Argument(..., help="A model or GPU preset name."), fmt: str = FMT) -> None:
    """Show one preset's fields (model spec or GPU spec) with derived sizes."""
    from planner.commands.presets import preset_fields
    from planner.render import presets

    check_format(fmt)
    presets.preset_show(out, preset_fields(name), fmt)


@app.command()
@_guard
@_with_knobs("space")
def sweep(
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    knobs: dict = {},  # noqa: B006 - replaced by one option per knob (_with_knobs)
    vary: Optional[list[str]] = typer.Option(None, "--vary", help="KEY=V1,V2,... (repeatable; the points are the cartesian product)."),
    tokens: str = typer.Option("1T", "--tokens", help="Token budget for time-to-train, e.g. 1e12, 15T, 300B."),
    price: Optional[float] = typer.Option(None, "--price-per-gpu-hour", help="USD per GPU-hour for the cost column."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Wall-clock seconds per point."),
    gap: float = typer.Option(0.01, "--gap", help="Relative optimality gap per point (0.01 = 1%)."), solver: str = SOLVER,
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Worker processes (default: CPU count)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache directory (default $AUTOPAR_CACHE_DIR or ~/.cache/autopar/sweep)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the rows to a .csv or .jsonl file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw tokens/s and cost against the first --vary key (.png/.svg/.pdf)."),
    sets: Optional[list[str]] = SETS, fmt: str = typer.Option("table", "--format", "-f", help="Output format: table, csv or jsonl."),
) -> None:
    """What-if over any input: plan every point of the --vary product (time-to-train, cost, Pareto front)."""
    from planner.commands import sweep as sw
    from planner.render import sweep as view

    view.check_options(fmt, out_path, jobs)
    spec = sw.SweepSpec(model, cluster, global_batch, seq_len, dtype, attention, tuple(sets or ()), knobs,
                        tuple(vary or ()), time_limit, gap, solver, sw.parse_tokens(tokens), price)
    t0 = time.perf_counter()
    with view.progress_bar(err) as progress:
        rows = sw.run_sweep(spec, jobs, None if no_cache else (cache or sw.default_cache_dir()), progress)
    keys = [k for k, _ in sw.parse_vary(spec.vary)]
    if out_path is not None:
        write_output(out_path, view.render_text(rows, keys, view.OUT_SUFFIXES[out_path.suffix.lower()]))
        err.print(f"wrote {out_path}", highlight=False)
    if fmt == "table":
        view.sweep_table(out, rows, keys, spec.tokens)
    else:
        print(view.render_text(rows, keys, fmt), end="")
    for line in view.summary_lines(rows, time.perf_counter() - t0):
        err.print(line, highlight=False)
    if plot:
        view.plot_rows(rows, spec, plot, err)
    if not any(r["feasible"] for r in rows):
        raise Verdict()


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
    from planner.commands.import_hf import run_import

    result = run_import(source, out_path, name, fmt, parse_sets(sets or []))
    for line in result.summary:
        err.print(line, highlight=False, markup=False)
    if result.out_path is None:
        sys.stdout.write(result.text)
    else:
        err.print(f"wrote {out_path} (use it with --model {out_path})", highlight=False, markup=False)


@app.command()
@_guard
def doctor(fmt: str = FMT) -> None:
    """Check the installation: versions, MILP solvers, GPUs, torch.distributed (exit 1: no solver can plan)."""
    from planner.commands import doctor as doc
    from planner.render.doctor import render

    check_format(fmt)
    checks = doc.run_checks()
    render(out, err, checks, fmt)
    if not doc.planning_works(checks):
        raise Verdict()


@app.command("export")
@_guard
def export_cmd(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `autopar plan --out`."),
    to: str = typer.Option(..., "--to", help="Target runtime: torchtitan (TOML), megatron (arguments) or deepspeed (JSON)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the configuration to this file (default: stdout)."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (the runtime's own file) or json (config, notes, text)."),
) -> None:
    """Write the plan as torchtitan, Megatron-LM or DeepSpeed configuration, with a note per setting it lacks."""
    from planner.export import export_plan
    from planner.render.export import export_document

    check_format(fmt, ("text", "json"))
    exp = export_plan(plan_file, to)
    for note in exp.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if out_path is not None:
        write_output(out_path, exp.text)
        err.print(f"wrote {out_path} ({to})", markup=False, highlight=False)
    if fmt == "json":
        print(json.dumps(export_document(exp, str(plan_file)), indent=2))
    elif out_path is None:
        sys.stdout.write(exp.text)


@app.command()
@_guard
def validate(
    plan_file: Path = typer.Argument(..., help="Plan JSON to check (written by `autopar plan --out`)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Re-derive with this model instead of the recorded one."),
    cluster: Optional[str] = typer.Option(None, "--cluster", "-c", help="Re-derive with this cluster instead of the recorded one."),
    sets: Optional[list[str]] = SETS,
    against: Optional[Path] = typer.Option(None, "--against", help="Golden plan: step time or peak memory above "
                                           "its figures by more than the tolerance is an error."),
    tolerance: str = typer.Option("2%", "--tolerance", help="Allowed regression and drift: a percentage (2%) or a fraction (0.02)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or github (one Actions annotation line per finding)."),
) -> None:
    """The CI gate: re-derive a plan's checks with the current cost model (exit 1 on any error finding)."""
    from planner.commands.validate import parse_tolerance, validate_plan
    from planner.render.validate import github_line, render

    check_format(fmt, ("table", "json", "github"))
    try:
        rep = validate_plan(plan_file, model, cluster, parse_sets(sets or []), against, parse_tolerance(tolerance))
    except SpecError as exc:
        if fmt == "github":  # the CI log shows bad input as an annotation too
            print(github_line(str(plan_file), "error", "autopar validate: bad input", str(exc)))
        raise
    render(out, err, rep, fmt)
    if not rep.valid:
        raise Verdict()


@app.command()
@_guard
def diff(
    a: Path = typer.Argument(..., help="The plan to start from."),
    b: Path = typer.Argument(..., help="The plan to compare with."),
    fmt: str = FMT,
) -> None:
    """Which knobs changed between two plans and how much of the step time, tokens/s and memory change each accounts for."""
    from planner.commands.diff import diff_plans
    from planner.render.diff import render

    check_format(fmt)
    render(out, diff_plans(a, b), fmt)


@app.command()
@_guard
def explain(
    plan_file: Optional[Path] = typer.Argument(None, help="Plan JSON to explain (omit it with --infeasible -m -c -b -s)."),
    infeasible: bool = typer.Option(False, "--infeasible", help="No plan fits: the conflicting constraints and what would fit."),
    model: Optional[str] = MODEL, cluster: Optional[str] = CLUSTER, global_batch: Optional[int] = GBS,
    seq_len: Optional[int] = SEQ, dtype: str = DTYPE, attention: str = ATTN,
    time_limit: float = typer.Option(30.0, "--time-limit", help="Wall-clock seconds shared by all the re-plans."),
    sets: Optional[list[str]] = SETS, fmt: str = FMT,
) -> None:
    """Why this plan: each decision forced to each alternative, the binding constraint, what +1 GiB or +1 node buys."""
    from planner.commands.explain import run_explain
    from planner.render.explain import render_explain, render_infeasible

    check_format(fmt)
    problem = dict(model=model, cluster=cluster, global_batch=global_batch, seq_len=seq_len, dtype=dtype, attention=attention)
    with err.status("explaining") as status:
        def progress(done: int, total: int) -> None:
            status.update(f"counterfactuals {done}/{total}")

        rep = run_explain(plan_file, infeasible, problem, time_limit, parse_sets(sets or []), progress)
    if fmt == "json":
        print(json.dumps(rep.doc, indent=2))
    elif infeasible:
        render_infeasible(out, rep.doc)
    else:
        render_explain(out, rep.doc)
    err.print(f"explained in {rep.wall_s:.1f} s", highlight=False)
    if not rep.fits:
        raise Verdict("" if infeasible else rep.doc["binding"]["text"])


if __name__ == "__main__":
    app()
