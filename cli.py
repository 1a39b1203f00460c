"""autopar command line: parse, call a command (planner/commands), render its result
(planner/render), map the outcome to an exit code (``_guard``: 0 success; 1 negative verdict,
``Verdict``; 2 bad input, ``SpecError``; 3 internal error, with the traceback under ``--debug``;
130 interrupted). Data goes to stdout, everything else to stderr.

Options are declared as data next to what they configure (``Opt`` records in planner/commands and
planner/inputs.py; the knob registry, planner/knobs.py) and become typer options here (``_with``)."""

from __future__ import annotations

import functools
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from models.errors import SpecError
from planner.commands import common as cmd
from planner.commands.common import FMT_OPTION, PLOT_OPTIONS, SETS_OPTION, Opt, check_format, with_options, write_output
from planner.commands.estimate import PLAN_FILE_OPTION
from planner.commands.explain import EXPLAIN_OPTIONS
from planner.commands.export import EXPORT_OPTIONS
from planner.commands.import_hf import IMPORT_OPTIONS
from planner.commands.plan import PLAN_OPTIONS, SEARCH_OPTIONS
from planner.commands.presets import SHOW_OPTIONS
from planner.commands.sweep import SWEEP_OPTIONS
from planner.commands.validate import VALIDATE_OPTIONS
from planner.config import plan_warnings
from planner.inputs import PROBLEM_OPTIONS, build_inputs, parse_sets
from planner.knobs import cli_parameters
from planner.render.usage import OneLineUsageGroup
from runtime.options import RUN_OPTIONS, launch_options
from runtime.plan_io import PlanError as RuntimePlanError

# Usage errors are one line and exit 2, as other bad input (planner/render/usage.py); help: main's docstring.
app = typer.Typer(cls=OneLineUsageGroup, add_completion=False, no_args_is_help=True)
presets_app = typer.Typer(no_args_is_help=True, help="List and show model and GPU presets.")
schema_app = typer.Typer(no_args_is_help=True, help="Print JSON Schemas of autopar's files.")
app.add_typer(presets_app, name="presets")
app.add_typer(schema_app, name="schema")
# Wide enough for the stage tables when piped; rich drops colour without a TTY or with NO_COLOR.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
DEBUG = {"traceback": False}
NONE: dict = {}  # the default of a grouped parameter, which ``_with`` replaces by its options
_with = functools.partial(with_options, typer.Option, typer.Argument)  # planner.commands.common


class Verdict(Exception):
    """A negative verdict: exit code 1, with its message (if any) as the last line on stderr."""


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="On an internal error (exit 3) also print the traceback."),
) -> None:
    """Plan, score and run parallel training of large models (dp/tp/pp/cp/ep, ZeRO, recompute)."""
    DEBUG["traceback"] = debug


def _warn(messages: list[str]) -> None:
    """Warnings about a valid plan, one line each on stderr."""
    for m in messages:
        err.print(f"[yellow]warning:[/yellow] {escape(m)}", highlight=False)


def _guard(fn):
    """The exit-code map: bad input is one line and exit 2, a negative verdict exit 1, a bug exit 3;
    never a raw traceback (unless ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SpecError, RuntimePlanError) as exc:  # the runtime's plan reader refusing a plan is bad input too
            one_line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc))  # a key may hold \n
            err.print(f"[red]error:[/red] {escape(one_line)}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except Verdict as exc:
            if str(exc):
                err.print(str(exc), highlight=False, markup=False)
            raise typer.Exit(1) from None
        except (KeyboardInterrupt, cmd.Interrupted) as exc:  # Ctrl-C: one line, never a traceback
            err.print(f"interrupted{': ' + str(exc) if str(exc) else ''}", highlight=False, markup=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            err.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))}", markup=True, highlight=False
            )
            if DEBUG["traceback"]:
                traceback.print_exc()
            raise typer.Exit(3) from None

    return wrapper


def _check_plot(opts: dict) -> None:
    """A bad --plot or no matplotlib is bad input before any work."""
    if opts["plot"] is not None:
        from planner.render import plots

        plots.plot_paths(opts["plot"], opts["plot_kind"])


def _write_plots(est: Any, opts: dict) -> None:
    if opts["plot"] is not None:
        from planner.render import plots

        drawn = plots.write_plots(est, opts["plot"], opts["plot_kind"])
        err.print("wrote " + ", ".join(map(str, drawn)), highlight=False)


@app.command()
@_guard
@_with(
    problem=PROBLEM_OPTIONS,
    knobs=cli_parameters("fixed", typer.Option),
    plots=PLOT_OPTIONS,
    o=(PLAN_FILE_OPTION, SETS_OPTION, FMT_OPTION),
)
def estimate(problem: dict = NONE, knobs: dict = NONE, plots: dict = NONE, o: dict = NONE) -> None:
    """Score one hand-specified plan: step time, tokens/s, MFU/HFU and memory per pipeline stage."""
    from planner.commands.estimate import check_plan_alone, inputs_of_plan, run_estimate
    from planner.render.estimate_table import estimate_json, estimate_table, not_fitting_text

    check_format(o["fmt"])
    _check_plot(plots)
    if o["plan"] is not None:
        check_plan_alone(problem, knobs, o["sets"])
    sets = parse_sets(o["sets"] or [])
    inputs = inputs_of_plan(o["plan"]) if o["plan"] is not None else build_inputs(**problem, sets=sets, knobs=knobs)
    res = run_estimate(inputs)
    result = res.estimate
    _warn(plan_warnings(result.par, result.train, result.model, result.cluster.gpus_per_node))
    if o["fmt"] == "json":
        print(json.dumps(estimate_json(result, inputs, res.fix), indent=2))
    else:
        estimate_table(out, result, inputs.defaulted)
    _write_plots(result, plots)
    if not result.fits:
        raise Verdict(not_fitting_text(result, res.fix))


@app.command()
@_guard
@_with(
    problem=PROBLEM_OPTIONS,
    knobs=cli_parameters("space", typer.Option),
    search=SEARCH_OPTIONS,
    o=(*PLAN_OPTIONS, SETS_OPTION, FMT_OPTION),
    plots=PLOT_OPTIONS,
)
def plan(problem: dict = NONE, knobs: dict = NONE, search: dict = NONE, o: dict = NONE, plots: dict = NONE) -> None:
    """Search the plan space (MILP per candidate, certified gap) for the fastest plan that fits."""
    from planner.commands.plan import SearchSettings, run_plan
    from planner.render.plan import render_plan

    check_format(o["fmt"])
    _check_plot(plots)
    settings = SearchSettings(search["solver"], search["gap"], search["time_limit"], o["top_k"]).check()
    cmd.check_writable(o["out_path"])
    inputs = build_inputs(**problem, sets=parse_sets(o["sets"] or []), knobs=None)
    with err.status("planning") as status:

        def progress(done, total, inc, last):
            best = f"{inc.step_time_s:.3f} s" if inc else "-"
            status.update(f"solving candidates {done}/{total} · incumbent {best}")

        result = run_plan(inputs, knobs, settings, progress)
    if result.doc is None or result.best is None:
        raise Verdict(result.advice if result.timed_out else f"no plan fits: {result.advice}")
    b = result.best
    _warn(plan_warnings(b.par, b.train, b.model, b.cluster.gpus_per_node))
    if o["out_path"]:
        write_output(o["out_path"], json.dumps(result.doc, indent=2) + "\n")
        err.print(f"wrote {o['out_path']}", highlight=False)
    _write_plots(result.best, plots)
    if o["fmt"] == "json":
        print(json.dumps(result.doc, indent=2))
    else:
        render_plan(out, result.doc, result.best)
    if result.doc["solver"]["status"] == "interrupted":
        raise cmd.Interrupted("the plan above is the best found before Ctrl-C (solver.status interrupted)")


@app.command()
@_guard
@_with(o=(*RUN_OPTIONS, FMT_OPTION))
def run(o: dict = NONE) -> None:
    """Train a few steps with exactly this plan (torch.distributed) and report measured vs predicted."""
    check_format(o["fmt"])
    cmd.check_writable(o["report"])
    try:
        from runtime import elastic, launch
    except ImportError as exc:
        raise SpecError(f"the runtime needs torch: pip install 'autopar[runtime]' ({exc})") from None
    path, report, extra = str(o["plan_file"]), o["report"], launch_options(o)
    if o["nnodes"] > 1:
        launch.load_plan(path)  # a bad plan is refused before the instructions are printed
        err.print(f"run this command on each of the {o['nnodes']} nodes:", highlight=False)
        launch.print_torchrun_command(path, o["nnodes"], o["rdzv_endpoint"], path, o["steps"], str(report), **extra)
        return
    try:
        rep = launch.run(path, o["steps"], out=report, nprocs=o["nprocs"], progress=True, elastic=o["elastic"],
                         rank_timeout_s=cmd.positive_seconds(o, "rank_timeout"), **extra)  # fmt: skip
    except elastic.RankLost as exc:  # a lost rank is an outcome, not a bug: exit 1, one line
        raise Verdict(f"error: {exc}") from None
    err.print(f"wrote {report}", highlight=False)
    if o["fmt"] == "json":
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


_schema_command("plan", "planner.planfile.schema:plan_schema", "JSON Schema of the plan file.")
_schema_command(
    "model",
    "planner.commands.schemas:model_schema",
    "JSON Schema of a model spec file (complete, or `extends:` a preset).",
)
_schema_command(
    "cluster", "planner.commands.schemas:cluster_schema", "JSON Schema of a cluster file (`--cluster my-cluster.yaml`)."
)


@presets_app.command("list")
@_guard
@_with(o=(Opt("kind", str, "all", (), "models, gpus or all.", argument=True), FMT_OPTION))
def presets_list(o: dict = NONE) -> None:
    """List model and GPU presets."""
    from planner.commands.presets import list_preset_rows
    from planner.render import presets

    check_format(o["fmt"])
    presets.presets_list(out, list_preset_rows(o["kind"]), o["fmt"])


@presets_app.command("show")
@_guard
@_with(o=SHOW_OPTIONS)
def presets_show(o: dict = NONE) -> None:
    """Show one preset's fields with derived sizes (a model spec file or an HF config.json as well)."""
    from planner.commands.presets import preset_fields
    from planner.render import presets

    check_format(o["fmt"])
    presets.preset_show(out, preset_fields(o["name"]), o["fmt"])


@app.command()
@_guard
@_with(
    problem=PROBLEM_OPTIONS,
    knobs=cli_parameters("space", typer.Option),
    search=SEARCH_OPTIONS,
    o=(*SWEEP_OPTIONS, SETS_OPTION),
)
def sweep(problem: dict = NONE, knobs: dict = NONE, search: dict = NONE, o: dict = NONE) -> None:
    """What-if over any input: plan every point of the --vary product (time-to-train, cost, Pareto front)."""
    from planner.commands import sweep as sw
    from planner.render import sweep as view

    view.check_options(o["fmt"], o["out_path"], o["jobs"])
    spec = sw.SweepSpec(
        **problem,
        sets=tuple(o["sets"] or ()),
        knobs=knobs,
        vary=tuple(o["vary"] or ()),
        time_limit_s=search["time_limit"],
        gap=search["gap"],
        solver=search["solver"],
        tokens=sw.parse_tokens(o["tokens"]),
        price_per_gpu_hour=o["price"],
    )
    t0, out_path = time.perf_counter(), o["out_path"]
    with view.progress_bar(err) as progress:
        rows = sw.run_sweep(
            spec, o["jobs"], None if o["no_cache"] else (o["cache"] or sw.default_cache_dir()), progress
        )
    keys = [k for k, _ in sw.parse_vary(spec.vary)]
    if out_path is not None:
        write_output(out_path, view.render_text(rows, keys, view.OUT_SUFFIXES[out_path.suffix.lower()]))
        err.print(f"wrote {out_path}", highlight=False)
    if o["fmt"] == "table":
        view.sweep_table(out, rows, keys, spec.tokens)
    else:
        print(view.render_text(rows, keys, o["fmt"]), end="")
    for line in view.summary_lines(rows, time.perf_counter() - t0):
        err.print(line, highlight=False)
    if o["plot"]:
        view.plot_rows(rows, spec, o["plot"], err)
    if any(r["reason"] == sw.INTERRUPTED for r in rows):
        raise cmd.Interrupted("the rows above were planned before Ctrl-C; the others say so")
    if not any(r["feasible"] for r in rows):
        raise Verdict()


@app.command("import-hf")
@_guard
@_with(o=IMPORT_OPTIONS)
def import_hf(o: dict = NONE) -> None:
    """Import a Hugging Face config.json as a model spec (stdout or -o); what was read or ignored goes to stderr."""
    from planner.commands.import_hf import run_import

    result = run_import(o["source"], o["out_path"], o["name"], o["fmt"], parse_sets(o["sets"] or []))
    for line in result.summary:
        err.print(line, highlight=False, markup=False)
    if result.out_path is None:
        sys.stdout.write(result.text)
    else:
        err.print(f"wrote {result.out_path} (use it with --model {result.out_path})", highlight=False, markup=False)


@app.command()
@_guard
@_with(o=(FMT_OPTION,))
def doctor(o: dict = NONE) -> None:
    """Check the installation: versions, MILP solvers, GPUs, torch.distributed (exit 1: no solver can plan)."""
    from planner.commands import doctor as doc
    from planner.render.doctor import render

    check_format(o["fmt"])
    checks = doc.run_checks()
    render(out, err, checks, o["fmt"])
    if not doc.planning_works(checks):
        raise Verdict()


@app.command("export")
@_guard
@_with(o=EXPORT_OPTIONS)
def export_cmd(o: dict = NONE) -> None:
    """Write the plan as torchtitan, Megatron-LM or DeepSpeed configuration, with a note per setting it lacks."""
    from planner.export import export_plan
    from planner.render.export import export_document

    check_format(o["fmt"], ("text", "json"))
    cmd.check_writable(o["out_path"])
    exp = export_plan(o["plan_file"], o["to"], o["torchtitan_version"])
    for note in exp.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if o["out_path"] is not None:
        write_output(o["out_path"], exp.text)
        err.print(f"wrote {o['out_path']} ({o['to']})", markup=False, highlight=False)
    if o["fmt"] == "json":
        print(json.dumps(export_document(exp, str(o["plan_file"])), indent=2))
    elif o["out_path"] is None:
        sys.stdout.write(exp.text)


@app.command()
@_guard
@_with(o=(*VALIDATE_OPTIONS, SETS_OPTION))
def validate(o: dict = NONE) -> None:
    """The CI gate: re-derive a plan's checks with the current cost model (exit 1 on any error finding)."""
    from planner.commands.validate import parse_tolerance, validate_plan
    from planner.render.validate import github_line, render

    check_format(o["fmt"], ("table", "json", "github"))
    try:
        rep = validate_plan(
            o["plan_file"],
            o["model"],
            o["cluster"],
            parse_sets(o["sets"] or []),
            o["against"],
            parse_tolerance(o["tolerance"]),
        )
    except SpecError as exc:
        if o["fmt"] == "github":  # the CI log shows bad input as an annotation too
            print(github_line(str(o["plan_file"]), "error", "autopar validate: bad input", str(exc)))
        raise
    render(out, err, rep, o["fmt"])
    if not rep.valid:
        raise Verdict()


@app.command()
@_guard
@_with(
    o=(
        Opt("a", Path, ..., (), "The plan to start from.", argument=True),
        Opt("b", Path, ..., (), "The plan to compare with.", argument=True),
        FMT_OPTION,
    )
)
def diff(o: dict = NONE) -> None:
    """Which knobs changed between two plans and how much of the step time, tokens/s and memory change each accounts for."""
    from planner.commands.diff import diff_plans
    from planner.render.diff import render

    check_format(o["fmt"])
    render(out, diff_plans(o["a"], o["b"]), o["fmt"])


@app.command()
@_guard
@_with(o=(*EXPLAIN_OPTIONS, SETS_OPTION, FMT_OPTION), problem=PROBLEM_OPTIONS)
def explain(o: dict = NONE, problem: dict = NONE) -> None:
    """Why this plan: each decision forced to each alternative, the binding constraint, what +1 GiB or +1 node buys."""
    from planner.commands.explain import run_explain
    from planner.render.explain import render_explain, render_infeasible

    check_format(o["fmt"])
    with err.status("explaining") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"counterfactuals {done}/{total}")

        rep = run_explain(
            o["plan_file"], o["infeasible"], problem, o["time_limit"], parse_sets(o["sets"] or []), progress
        )
    if o["fmt"] == "json":
        print(json.dumps(rep.doc, indent=2))
    elif o["infeasible"]:
        render_infeasible(out, rep.doc)
    else:
        render_explain(out, rep.doc)
    err.print(f"explained in {rep.wall_s:.1f} s", highlight=False)
    if rep.interrupted:
        raise cmd.Interrupted("the report above is what was known at Ctrl-C (search.interrupted; open rows say so)")
    if not rep.fits:
        raise Verdict("" if o["infeasible"] else rep.doc["binding"]["text"])


if __name__ == "__main__":
    app()
