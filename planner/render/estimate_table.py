"""An estimate as a rich table (the stage table is shared with `plan`) or as its JSON document."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from planner.commands.estimate import Change
from planner.cost.estimate import Estimate
from planner.cost.records import Predicted, StageResult
from planner.inputs import Inputs
from planner.knobs import BY_NAME, STACK_DEFAULTS
from planner.planfile.build import parallel_dict, training_block
from planner.planfile.schema import SCHEMA_VERSION

GiB = 2**30


def _gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def defaulted_text(defaulted: dict, stack: str) -> str:
    """``zero 1, recompute none (megatron-core's defaults); micro-batch 1, ...`` for the table."""

    def one(k: str, v: object) -> str:
        return f"{BY_NAME[k].flag.lstrip('-')} {('on' if v else 'off') if isinstance(v, bool) else v}"

    from_stack = [one(k, v) for k, v in defaulted.items() if k in STACK_DEFAULTS]
    rest = [one(k, v) for k, v in defaulted.items() if k not in STACK_DEFAULTS]
    parts = [f"{', '.join(from_stack)} ({stack}'s defaults)"] if from_stack else []
    return "; ".join(parts + ([", ".join(rest)] if rest else []))


def estimate_json(result: Estimate, inputs: Inputs, fix: Change | None = None) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "estimate",
        "inputs": {
            "model": result.model.model_dump(),
            "cluster": result.cluster.model_dump(),
            "training": training_block(result.train),
            "refs": inputs.refs,
        },
        "parallelism": parallel_dict(result.par, result.predicted.num_micro_batches),
        "defaulted": inputs.defaulted,
        "fits": result.fits,
        "predicted": result.predicted.to_json(),
    }
    if fix is not None:
        doc["smallest_fitting_change"] = {"flags": fix.flags, "predicted": fix.estimate.predicted.to_json()}
    return doc


def not_fitting_text(result: Estimate, fix: Change | None) -> str:
    """The one-line verdict of a plan that does not fit, with the smallest change that does."""
    r, over = max(result.over, key=lambda x: x[1])
    text = (
        f"does not fit: pipeline stage {r} needs {over / 2**30:.2f} GiB more than the "
        f"{result.predicted.memory_capacity_bytes / 2**30:.2f} GiB usable per GPU"
    )
    if fix is None:
        return text + "; no single knob change fits (try `autopar plan` or `autopar explain --infeasible`)"
    p0, p1 = result.predicted.step_time_s, fix.estimate.predicted.step_time_s
    return text + f"; smallest change that fits: {fix.flags} ({p1:.3f} s per step, {p1 / p0 - 1:+.1%})"


def estimate_table(out: Console, result: Estimate, defaulted: dict | None = None) -> None:
    p, par = result.predicted, result.par
    head = Table(
        title=f"{result.model.name} on {result.cluster.num_gpus} x {result.cluster.gpu.name}",
        show_header=False,
        title_justify="left",
    )
    head.add_row("plan", par.describe("long", p.num_micro_batches))
    head.add_row("stack", f"{result.train.stack.title} ({p.stack})")
    if defaulted:
        head.add_row("defaulted", defaulted_text(defaulted, result.train.stack.name))
    lo, hi = p.step_time_interval_s
    band = f", 80% interval {lo:.3f}-{hi:.3f} s" if hi > lo else ""
    head.add_row("step time", f"{p.step_time_s:.3f} s{band}")
    head.add_row("throughput", f"{p.tokens_per_s:,.0f} tokens/s  ({p.tokens_per_s_per_gpu:,.0f} per GPU)")
    head.add_row("MFU / HFU", f"{p.mfu:.1%} / {p.hfu:.1%}  ({p.model_tflops_per_gpu:.1f} model TFLOP/s per GPU)")
    tb = p.time_breakdown_s
    zero = tb.zero_exposed_s
    head.add_row(
        "time",
        f"pipeline {tb.pipeline_s:.3f} s (bubble {p.pipeline_bubble_s:.3f} s, exposed tp/ep/cp comm "
        f"{tb.exposed_comm_in_layers_s:.3f} s{f', exposed ZeRO comm {zero:.3f} s' if zero > 0 else ''}) "
        f"+ dp sync {tb.dp_sync_exposed_s:.3f} s + optimizer {tb.optimizer_s:.3f} s",
    )
    head.add_row(
        "peak memory",
        f"{_gib(p.peak_memory_bytes)} GiB of {_gib(p.memory_capacity_bytes)} GiB usable"
        f"{'' if result.fits else '  [red]DOES NOT FIT[/red]'}",
    )
    out.print(head)
    out.print(_stage_table(p))


def _stage_table(p: Predicted) -> Table:
    # Never cut a number, even in an 80-column terminal: short two-line headers, one space between
    # columns, each figure column at least as wide as its widest figure; the block ranges, the
    # only long text, fold.
    cols = [
        "pp\nrank",
        "blocks",
        "fwd/bwd\nms",
        "weights",
        "grads",
        "optim",
        "activ",
        "in-\nflight",
        "trans-\nient",
        "other",
        "total\nGiB",
    ]
    table = Table(
        title="per pipeline stage (memory in GiB per GPU, times per micro-batch)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=0,
    )
    rows = [_stage_row(s) for s in p.stages]
    for k, name in enumerate(cols):
        if name == "blocks":
            table.add_column(name, overflow="fold", ratio=1, min_width=8)
        else:
            width = max(len(r[k]) for r in rows) if rows else 1
            table.add_column(name, no_wrap=True, justify="right", min_width=width)
    for r in rows:
        table.add_row(*r)
    return table


def _stage_row(s: StageResult) -> list[str]:
    m = s.memory
    blocks = ", ".join(f"{c.layers[0]}-{c.layers[1] - 1}" if c.layers[1] > c.layers[0] else "-" for c in s.chunks)
    extras = ("E" if any(c.has_embedding for c in s.chunks) else "") + (
        "H" if any(c.has_head for c in s.chunks) else ""
    )
    f = sum(c.fwd_s_per_microbatch for c in s.chunks) * 1e3
    b = sum(c.bwd_s_per_microbatch for c in s.chunks) * 1e3
    other = m.comm_buffer_bytes + m.workspace_bytes + m.fragmentation_bytes
    return [
        str(s.pp_rank),
        f"{blocks} {extras}".strip(),
        f"{f:.1f}/{b:.1f}",
        _gib(m.weights_bytes),
        _gib(m.gradients_bytes),
        _gib(m.optimizer_bytes),
        _gib(m.activations_bytes),
        f"{m.inflight_microbatches:.2f}",
        _gib(m.transient_bytes),
        _gib(other),
        _gib(m.total_bytes),
    ]
