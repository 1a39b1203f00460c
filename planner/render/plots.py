"""Pictures of a scored plan and of a sweep (matplotlib, the optional extra ``autopar[plots]``).

Each function takes library objects and an output path, picks the format from the suffix
(.png, .svg, .pdf), draws on a standalone ``matplotlib.figure.Figure`` (no pyplot state, no GUI
backend), and returns the data it drew so tests can hold the picture to the cost model:

- ``plot_gantt``: the pipeline schedule per rank (``planner.cost.timeline.gantt_segments``);
- ``plot_memory_timeline``: memory per rank over one step against capacity (``timeline.memory_traces``);
- ``plot_memory_breakdown``: the estimate's per-stage memory terms as stacked bars;
- ``plot_sweep``: throughput and cost against one varied input, one line per other varied value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.errors import SpecError
from planner.cost import timeline as tl
from planner.cost.estimate import Estimate

GiB = 2**30
FORMATS = (".png", ".svg", ".pdf")
PLOT_KINDS = ("gantt", "memory", "breakdown", "all")
DPI = 110
COLORS = {
    "forward": "#4C72B0",
    "backward": "#55A868",
    "recompute": "#DD8452",
    "layer_comm": "#CCB974",
    "zero_comm": "#8172B3",
    "p2p": "#937860",
    "dp_sync": "#C44E52",
    "optimizer": "#DA8BC3",
    "idle": "#E5E5E5",
}
LABELS = {
    "forward": "forward",
    "backward": "backward",
    "recompute": "recompute",
    "layer_comm": "TP/EP/CP comm (exposed)",
    "zero_comm": "ZeRO comm (exposed)",
    "p2p": "p2p transfer",
    "dp_sync": "DP grad sync (exposed)",
    "optimizer": "optimizer step",
    "idle": "idle (bubble)",
}
BREAKDOWN = (
    ("weights_bytes", "weights", "#4C72B0"),
    ("gradients_bytes", "gradients", "#55A868"),
    ("optimizer_bytes", "optimizer states", "#8172B3"),
    ("activations_bytes", "activations (in flight)", "#DD8452"),
    ("transient_bytes", "transient", "#C44E52"),
    ("comm_buffer_bytes", "comm buffers", "#937860"),
    ("workspace_bytes", "workspace", "#8C8C8C"),
    ("fragmentation_bytes", "fragmentation", "#CCB974"),
)
CAPACITY_COLOR = "#B00020"


def _figure(width_in: float, height_in: float):
    """A standalone Figure; a missing matplotlib is bad input for an optional extra, not a crash."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SpecError("plots need matplotlib: pip install 'autopar[plots]'") from None
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _check_suffix(path: Path) -> None:
    if Path(path).suffix.lower() not in FORMATS:
        raise SpecError(f"plot file {str(path)!r}: the suffix must be one of {', '.join(FORMATS)}")


def _save(fig, path: Path) -> None:
    path = Path(path)
    try:
        fig.savefig(path, format=path.suffix.lower()[1:], dpi=DPI)
    except OSError as exc:
        raise SpecError(f"cannot write plot {str(path)!r}: {exc.strerror or exc}") from None


def _title(est: Estimate, sep: str = ": ") -> str:
    """Model, cluster and plan in one line (``sep=":\n"`` breaks it in two for narrow figures)."""
    return (
        f"{est.model.name} on {est.cluster.num_gpus} x {est.cluster.gpu.name}{sep}"
        f"{est.par.describe('long', est.predicted.num_micro_batches).split(' · recompute')[0]}"
    )


def _lighten(hex_color: str, amount: float) -> tuple[float, float, float]:
    """Blend toward white: later virtual chunks of an interleaved rank get lighter bars."""
    rgb = [int(hex_color[k : k + 2], 16) / 255 for k in (1, 3, 5)]
    light = [c + (1 - c) * amount for c in rgb]
    return light[0], light[1], light[2]


def plot_gantt(est: Estimate, path: Path) -> list[tl.Segment]:
    """Gantt chart of one step, one row per pipeline rank; returns the bars it drew."""
    _check_suffix(path)
    segments = tl.gantt_segments(est)
    pp, vpp, step = est.par.pp, est.par.vpp, est.predicted.step_time_s
    fig = _figure(13, 1.9 + max(pp, 2) * (0.34 if pp <= 16 else 0.24))
    ax = fig.add_subplot()
    px_per_s = fig.get_figwidth() * DPI * 0.85 / step  # the axes take about 85% of the width
    ops = [s for s in segments if s.kind in ("forward", "backward")]
    narrowest_px = min((s.duration_s for s in ops), default=0.0) * px_per_s
    bars: dict[tuple, list[tuple[float, float]]] = {}
    # Shade later virtual chunks lighter while a few are told apart; at 8 or more the shades only
    # add stripes to a schedule whose pattern is already a fine F/B alternation.
    shaded = 1 < vpp < 8
    for s in segments:
        shade = (s.chunk // pp) / vpp * 0.55 if s.chunk >= 0 and shaded else 0.0
        bars.setdefault((s.rank, s.kind, shade), []).append((s.start_s, s.duration_s))
    edge = 0.5 if narrowest_px >= 4 else 0.0  # white seams between ops, unless they would hide the ops
    for (rank, kind, shade), spans in bars.items():
        ax.broken_barh(
            spans,
            (rank - 0.4, 0.8),
            facecolors=_lighten(COLORS[kind], shade),
            edgecolor="white",
            linewidth=edge if kind != "idle" else 0.0,
        )
    size = 7 if pp <= 16 else 6
    labelled, inside = micro_batch_labels(ops, px_per_s, size)
    for s in labelled:
        ax.text(
            s.start_s + s.duration_s / 2,
            s.rank,
            str(s.micro_batch),
            ha="center",
            va="center",
            fontsize=size if inside else size - 1,
            color="white" if inside else "black",
            bbox=None if inside else {"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
            clip_on=True,
        )
    ax.set_ylim(pp - 0.5, -0.5)  # rank 0 on top
    ax.set_yticks(range(pp), [f"stage {r}" for r in range(pp)], fontsize=8 if pp <= 16 else 6.5)
    ax.set_xlim(0, step)
    _time_axis(ax)
    ax.set_ylabel("pipeline rank")
    idle = sum(s.duration_s for s in segments if s.kind == "idle") / (pp * step)
    ax.set_title(
        f"{_title(est)}\nstep {step:.3f} s · idle (bubble) {idle:.1%} of rank-time"
        + (" · lighter bars = later virtual chunk" if shaded else "")
        + ("" if inside or not ops else " · micro-batch numbers on a spaced-out subset of the bars (bars too narrow)"),
        fontsize=9,
    )
    _kind_legend(ax, fig, {s.kind for s in segments})
    _save(fig, path)
    return segments


def micro_batch_labels(ops: list[tl.Segment], px_per_s: float, font_pt: float) -> tuple[list[tl.Segment], bool]:
    """The F/B bars that get their micro-batch number, and whether the numbers fit inside them.

    Every bar is numbered when the narrowest holds the widest number. Otherwise (deep interleaving
    makes bars a few pixels wide) each rank's bars are numbered left to right wherever a number
    clears the previous one, so the numbers stay readable and still show how micro-batches move.
    """
    widest_px = font_pt * 0.75 * len(str(max((s.micro_batch for s in ops), default=0))) + 3
    if ops and min(s.duration_s for s in ops) * px_per_s >= widest_px:
        return list(ops), True
    chosen: list[tl.Segment] = []
    clear_from: dict[int, float] = {}
    for s in sorted(ops, key=lambda s: (s.rank, s.start_s)):
        centre_px = (s.start_s + s.duration_s / 2) * px_per_s
        width_px = font_pt * 0.75 * len(str(s.micro_batch)) + 3
        if centre_px - width_px / 2 >= clear_from.get(s.rank, float("-inf")) + font_pt:
            chosen.append(s)
            clear_from[s.rank] = centre_px + width_px / 2
    return chosen, False


def _time_axis(ax) -> None:
    """Seconds with SI prefixes (``2.5 ms``, ``16 s``): steps range from milliseconds to minutes."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(unit="s"))
    ax.set_xlabel("time within one optimizer step")


def _kind_legend(ax, fig, present: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=COLORS[k], label=LABELS[k]) for k in tl.KINDS if k in present]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)


def plot_memory_timeline(est: Estimate, path: Path) -> list[tl.MemoryTrace]:
    """Memory per GPU of every pipeline rank over one step, against usable capacity."""
    _check_suffix(path)
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    traces = tl.memory_traces(est)
    cap_gib = est.predicted.memory_capacity_bytes / GiB
    pp, step = len(traces), est.predicted.step_time_s
    fig = _figure(11, 5.2)
    ax = fig.add_subplot()
    cmap, norm = colormaps["viridis"], Normalize(0, max(pp - 1, 1))
    # Thousands of steps (many micro-batches) merge into bands: thinner lines keep ranks apart.
    width = 1.3 if max(len(tr.times_s) for tr in traces) < 400 else 0.6
    for tr in traces:
        label = f"stage {tr.rank} (peak {max(tr.bytes) / GiB:.1f} GiB)" if pp <= 8 else None
        ax.step(
            tr.times_s,
            [b / GiB for b in tr.bytes],
            where="post",
            color=cmap(norm(tr.rank)),
            linewidth=width,
            label=label,
        )
    ax.axhline(cap_gib, color=CAPACITY_COLOR, linestyle="--", linewidth=1.2)
    ax.text(
        step, cap_gib, f"usable capacity {cap_gib:.1f} GiB ", ha="right", va="bottom", fontsize=8, color=CAPACITY_COLOR
    )
    ax.set_ylim(0, max(max(max(tr.bytes) for tr in traces) / GiB, cap_gib) * 1.1)
    ax.set_xlim(0, step)
    _time_axis(ax)
    ax.set_ylabel("memory per GPU (GiB)")
    ax.set_title(
        f"{_title(est)}\nmemory per pipeline rank: model states + in-flight activations + transients while "
        "a backward runs",
        fontsize=9,
    )
    if pp <= 8:
        fig.legend(loc="outside right upper", fontsize=8)  # outside: no curve is ever hidden
    else:
        from matplotlib.cm import ScalarMappable

        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="pipeline stage", ticks=range(0, pp, max(1, pp // 8))
        )
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return traces


def plot_memory_breakdown(est: Estimate, path: Path) -> dict[str, list[float]]:
    """Stacked bars of each stage's peak memory by term, with the capacity line; returns bytes per term."""
    _check_suffix(path)
    stages = est.predicted.stages
    cap = est.predicted.memory_capacity_bytes
    pp = len(stages)
    fig = _figure(max(9.0, 3.0 + 0.32 * pp), 5.6)
    ax = fig.add_subplot()
    data = {key: [getattr(s.memory, key) for s in stages] for key, _, _ in BREAKDOWN}
    bottom = [0.0] * pp
    for key, label, color in BREAKDOWN:
        values = [v / GiB for v in data[key]]
        ax.bar(range(pp), values, 0.7, bottom=bottom, color=color, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.axhline(
        cap / GiB, color=CAPACITY_COLOR, linestyle="--", linewidth=1.2, label=f"usable capacity {cap / GiB:.1f} GiB"
    )
    ax.set_ylim(0, max(max(bottom), cap / GiB) * 1.12)
    # Totals under the stage numbers, where no capacity line or bar can cover them.
    ticks = [f"{r}\n{total:.1f}" for r, total in enumerate(bottom)] if pp <= 16 else [str(r) for r in range(pp)]
    ax.set_xticks(range(pp), ticks, fontsize=8 if pp <= 16 else 6.5)
    ax.set_xlabel("pipeline stage" + ("\n(peak total, GiB)" if pp <= 16 else ""))
    ax.set_ylabel("peak memory per GPU (GiB)")
    ax.set_title(_title(est, ":\n") + "\npeak memory per stage by term", fontsize=9)
    fig.legend(loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return data


def plot_paths(path: Path, kind: str) -> dict[str, Path]:
    """Where ``--plot PATH --plot-kind KIND`` writes: PATH itself, or PATH-gantt/-memory/-breakdown for all."""
    if kind not in PLOT_KINDS:
        raise SpecError(f"--plot-kind must be one of {', '.join(PLOT_KINDS)} (got {kind!r})")
    path = Path(path)
    _check_suffix(path)
    if not path.parent.is_dir():
        raise SpecError(f"plot file {str(path)!r}: directory {str(path.parent)!r} does not exist")
    _figure(1, 1)  # fail on a missing matplotlib before any long computation
    if kind != "all":
        return {kind: path}
    return {k: path.with_name(f"{path.stem}-{k}{path.suffix}") for k in PLOT_KINDS[:-1]}


def write_plots(est: Estimate, path: Path, kind: str = "gantt") -> list[Path]:
    """Draw the plan's plot(s) chosen by ``kind`` (see ``plot_paths``); returns the files written."""
    draw = {"gantt": plot_gantt, "memory": plot_memory_timeline, "breakdown": plot_memory_breakdown}
    written = []
    for k, target in plot_paths(path, kind).items():
        draw[k](est, target)
        written.append(target)
    return written


def plot_sweep(
    rows: Sequence[dict],
    path: Path,
    x_key: str,
    series_keys: Sequence[str] = (),
    throughput_key: str = "tokens_per_s",
    cost_key: str = "cost_usd",
    feasible_key: str = "feasible",
    cost_label: str = "cost (USD)",
    title: str = "",
) -> dict[str, list[tuple]]:
    """Throughput and cost against ``x_key``, one line per combination of ``series_keys`` values.

    Rows are plain dicts (one per sweep point). Infeasible points have no throughput: they are
    marked with an x on the axis. Returns {series label: [(x, throughput, cost), ...]} as drawn.
    """
    _check_suffix(path)
    rows = list(rows)
    if not rows:
        raise SpecError("plot_sweep: no rows to plot")
    for key in (x_key, feasible_key, *series_keys):
        missing = [n for n, r in enumerate(rows) if key not in r]
        if missing:
            raise SpecError(f"plot_sweep: row {missing[0]} has no key {key!r}")
    xs = list(dict.fromkeys(r[x_key] for r in rows))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = {x: (x if numeric else n) for n, x in enumerate(xs)}
    series: dict[str, list[dict]] = {}
    for r in rows:
        label = ", ".join(f"{k}={r[k]}" for k in series_keys) or "all points"
        series.setdefault(label, []).append(r)
    fig = _figure(12, 4.8)
    axes = fig.subplots(1, 2)
    drawn = _draw_sweep_lines(axes, series, pos, x_key, throughput_key, cost_key, feasible_key)
    _sweep_axes(axes, rows, xs, pos, numeric, x_key, (throughput_key, cost_key), cost_label, feasible_key)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(not r[feasible_key] for r in rows):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="black", marker="x", linestyle="none"))
        labels.append("infeasible (x on the axis)")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(
        title or f"sweep over {x_key}" + (f" (lines: {', '.join(series_keys)})" if series_keys else ""), fontsize=10
    )
    _save(fig, path)
    return drawn


def _sweep_axes(
    axes,
    rows: list[dict],
    xs: list,
    pos: dict,
    numeric: bool,
    x_key: str,
    y_keys: tuple[str, str],
    cost_label: str,
    feasible_key: str,
) -> None:
    """Ticks at the swept values. A numeric x spanning 8x or more goes on a log2 axis, and then
    throughput on a log axis too, so that linear scaling reads as a straight line of slope 1."""
    from matplotlib.ticker import EngFormatter, LogLocator

    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    for n, (ax, key) in enumerate(zip(axes, y_keys)):
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(
            [pos[x] for x in xs],
            [f"{x:,}" if numeric else str(x) for x in xs],
            fontsize=8,
            rotation=0 if len(xs) <= 8 else 45,
        )
        values = [r[key] for r in rows if r[feasible_key]] or [1.0]
        if log_x and n == 0:
            ax.set_yscale("log")
            ax.set_ylim(min(values) / 2, max(values) * 1.6)
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        else:
            ax.set_ylim(0, max(values) * 1.12)
        ax.minorticks_off()
        ax.yaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel(x_key)
        ax.set_ylabel(cost_label if n else "throughput (tokens/s" + (", log scale)" if log_x else ")"))
        ax.set_title(("throughput", "cost")[n], fontsize=10)
        ax.grid(alpha=0.3)


def _draw_sweep_lines(
    axes, series: dict, pos: dict, x_key: str, y_key: str, cost_key: str, feasible_key: str
) -> dict[str, list[tuple]]:
    """One line per series on both axes; infeasible points as an x on the x axis, same colour."""
    drawn: dict[str, list[tuple]] = {}
    for n, (label, rows) in enumerate(series.items()):
        color = f"C{n % 10}"
        ok = sorted((r for r in rows if r[feasible_key]), key=lambda r: pos[r[x_key]])
        bad = [r for r in rows if not r[feasible_key]]
        for r in ok:
            for key in (y_key, cost_key):
                if r.get(key) is None:
                    raise SpecError(
                        f"plot_sweep: feasible point {x_key}={r[x_key]} has no {key!r} "
                        "(without a price, plot cost_key='gpu_hours')"
                    )
        drawn[label] = [(r[x_key], r[y_key], r[cost_key]) for r in ok]
        for ax, key in zip(axes, (y_key, cost_key)):
            ax.plot([pos[r[x_key]] for r in ok], [r[key] for r in ok], marker="o", color=color, label=label)
            front = [r for r in ok if r.get("pareto")]
            if front:  # the time/cost Pareto front: a ring around its points
                ax.scatter(
                    [pos[r[x_key]] for r in front],
                    [r[key] for r in front],
                    s=160,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.2,
                    zorder=4,
                    label="Pareto front (time, cost)" if n == 0 and key == y_key else None,
                )
            if bad:
                ax.scatter(
                    [pos[r[x_key]] for r in bad],
                    [0.0] * len(bad),
                    marker="x",
                    s=60,
                    color=color,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                    zorder=5,
                )
    return drawn
