"""What-if sweeps: plan every point of a cartesian product of input values, cache, Pareto-mark.

A point is one assignment of the ``--vary`` keys (``cluster.num_gpus``, ``gpu``, ``seq_len``,
``global_batch``, ``model``, ``dtype``, ``attention``, any plan knob, ``model.KEY``/``cluster.KEY``)
over the base inputs of ``autopar plan``. Each point is resolved exactly as ``autopar plan`` would
resolve the same command line (``planner.inputs.build_inputs``) and searched with
``planner.search.outer.search``, so a row equals a standalone plan of that point.

Derived columns, for a token budget N and a price P per GPU-hour of the row's GPU (one price for
all, or one per GPU preset): ``time_to_train_hours = N / tokens_per_s / 3600``, ``gpu_hours =
num_gpus · time_to_train_hours``, ``cost_usd = P · gpu_hours``. The Pareto front is per model,
over (time-to-train, cost): a feasible row is on it when no other feasible row of the same model
is at least as good in both and better in one. Both scale with N, so the front is that of
(1/tokens_per_s, P · num_gpus/tokens_per_s) (P = 1 without prices: GPU-hours).

Cache: one JSON file per point named by the sha256 of the point's resolved inputs (model,
cluster and training as in the plan file's ``inputs`` block), the knobs, solver, gap, time limit,
the autopar version and a fingerprint of the planner's source (so an edited cost model never
serves stale rows). Token budget and price are applied after the cache.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hardware.cluster import CLUSTER_FILE_SUFFIXES, load_cluster
from hardware.gpu import load_gpu
from models.errors import SpecError
from models.load import load_model
from planner.commands.common import TIME_LIMIT_S, Opt
from planner.commands.plan import SearchSettings, infeasible_advice
from planner.commands.sweep_cache import CODE_FILES as CODE_FILES  # what the cache key fingerprints
from planner.commands.sweep_cache import cache_key, cache_read, cache_write, code_fingerprint, open_cache
from planner.commands.sweep_cache import default_cache_dir as default_cache_dir
from planner.commands.sweep_pool import INTERRUPTED, execute
from planner.config import DTYPES
from planner.inputs import Inputs, build_inputs, parse_sets
from planner.knobs import BY_NAME, SHOWN, SPACE_KNOBS, Knobs
from planner.search.context import SearchStatus
from planner.search.outer import search

SWEEP_OPTIONS = (
    Opt(
        "vary", list[str] | None, None, ("--vary",), "KEY=V1,V2,... (repeatable; the points are the cartesian product)."
    ),
    Opt("tokens", str, "1T", ("--tokens",), "Token budget for time-to-train, e.g. 1e12, 15T, 300B."),
    Opt(
        "price",
        str | None,
        None,
        ("--price-per-gpu-hour",),
        "USD per GPU-hour for the cost column: one price (2.5) or one per GPU preset "
        "(h100-sxm-80gb=2.5,b200-sxm-180gb=4.2).",
    ),
    Opt("jobs", int | None, None, ("--jobs", "-j"), "Worker processes (default: CPU count)."),
    Opt(
        "cache",
        Path | None,
        None,
        ("--cache",),
        "Cache directory (default $AUTOPAR_CACHE_DIR or ~/.cache/autopar/sweep).",
    ),
    Opt("no_cache", bool, False, ("--no-cache",), "Neither read nor write the cache."),
    Opt("out_path", Path | None, None, ("--out", "-o"), "Also write the rows to a .csv, .json or .jsonl file."),
    Opt(
        "plot", Path | None, None, ("--plot",), "Draw tokens/s and cost against the first --vary key (.png/.svg/.pdf)."
    ),
    Opt("fmt", str, "table", ("--format", "-f"), "Output format: table, csv, json or jsonl."),
)
INT_KEYS = ("cluster.num_gpus", "seq_len", "global_batch")
TOP_KEYS = ("gpu", "model", "dtype", "attention", "stack") + INT_KEYS
ALIASES = {"gpus": "cluster.num_gpus", "num_gpus": "cluster.num_gpus", "seq": "seq_len", "batch": "global_batch"}
# Output columns in order; the point's own values come first under ``point`` (``point.KEY`` in CSV).
KNOB_COLUMNS = tuple(k.name for k in SHOWN if k.name != "stage_layers")  # the plan's knobs, one column each
COLUMNS = (
    "model",
    "gpu",
    "num_gpus",
    "global_batch",
    "seq_len",
    "dtype",
    "feasible",
    *KNOB_COLUMNS,
    "step_time_s",
    "tokens_per_s",
    "mfu",
    "peak_memory_bytes",
    "memory_capacity_bytes",
    "time_to_train_hours",
    "gpu_hours",
    "price_per_gpu_hour",
    "cost_usd",
    "solver_status",
    "gap",
    "solve_wall_s",
    "pareto",
    "cached",
    "reason",
)


@dataclass(frozen=True)
class SweepSpec:
    """Base inputs (as for ``autopar plan``), the ``--vary`` items and the solver settings."""

    model: str | None
    cluster: str | None
    global_batch: int | None
    seq_len: int | None
    dtype: str = "bf16"
    attention: str | None = None  # None: the stack's
    stack: str | None = None  # None: megatron-core (autopar on the cpu preset)
    memory_headroom: str | None = None  # None: the default
    sets: tuple[str, ...] = ()  # --set items, model.KEY=VALUE / cluster.KEY=VALUE
    knobs: dict[str, str] = field(default_factory=dict)  # raw knob strings as `autopar plan` takes them
    vary: tuple[str, ...] = ()  # KEY=V1,V2,...
    time_limit_s: float = TIME_LIMIT_S  # per point
    gap: float = 0.01
    solver: str = "ortools"
    tokens: float | None = 1e12  # token budget for time-to-train
    price_per_gpu_hour: str | float | None = None  # USD: one price, or "gpu=price,..." per GPU preset


def parse_tokens(text: str) -> float:
    """``1e12``, ``15T``, ``300B``, ``2.5M``, ``10k`` -> tokens (a positive number)."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    s = text.strip().lower()
    mult = scale.get(s[-1:], 1.0)
    try:
        value = float(s[:-1] if s[-1:] in scale else s) * mult
    except ValueError:
        raise SpecError(f"--tokens {text!r}: expected a number such as 1e12, 15T or 300B") from None
    if not value > 0:
        raise SpecError(f"--tokens must be > 0 (got {text!r})")
    return value


def parse_vary(items: tuple[str, ...] | list[str]) -> list[tuple[str, list]]:
    """``KEY=V1,V2`` items -> [(canonical key, typed values)]; every value is checked here (exit 2)."""
    out: list[tuple[str, list]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        key = ALIASES.get(key, key if key.startswith(("model.", "cluster.")) else key.replace("-", "_"))
        values = [v.strip() for v in text.split(",")] if sep else []
        if not values or any(v == "" for v in values):
            raise SpecError(f"--vary {item!r}: expected KEY=V1,V2,... with no empty value")
        if key in (k for k, _ in out):
            raise SpecError(f"--vary {key} given twice; put all its values in one list")
        out.append((key, [_typed_value(key, v, item) for v in values]))
    return out


def _typed_value(key: str, value: str, item: str):
    if key in INT_KEYS:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n <= 0:
            raise SpecError(f"--vary {item!r}: {value!r} is not a positive integer")
        return n
    if key == "model":
        load_model(value)  # an unknown preset or a missing file is bad input, not a sweep result
        return value
    if key == "gpu":
        return load_gpu(value).name
    if key == "dtype" and value not in DTYPES:
        raise SpecError(f"--vary {item!r}: dtype must be one of {', '.join(DTYPES)} (got {value!r})")
    if key == "attention" and value not in ("flash", "eager"):
        raise SpecError(f"--vary {item!r}: attention must be flash or eager (got {value!r})")
    if key in SPACE_KNOBS:
        BY_NAME[key].parse_space(value)
        return int(value) if BY_NAME[key].kind == "int" and value != "auto" else value
    if key.startswith(("model.", "cluster.")) and len(key.split(".", 1)[1]) > 0:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SpecError(f"--vary {item!r}: cannot parse {value!r}: {exc}") from None
    if key in TOP_KEYS:
        return value
    raise SpecError(
        f"--vary key {key!r} unknown; use cluster.num_gpus (gpus), gpu, seq_len, global_batch, model, "
        f"dtype, attention, a plan knob ({', '.join(SPACE_KNOBS)}) or model.KEY / cluster.KEY"
    )


def expand_points(vary: list[tuple[str, list]]) -> list[dict]:
    """The cartesian product of the --vary lists, first key slowest; one empty point without --vary."""
    keys = [k for k, _ in vary]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(vals for _, vals in vary))]


def _cluster_arg(base: str, point: dict) -> tuple[str, dict]:
    """The --cluster string and cluster overrides of a point: ``GPU:N`` shorthands are rewritten
    (so the point reads exactly like a hand-written --cluster), cluster files get overrides."""
    gpu, n = point.get("gpu"), point.get("cluster.num_gpus")
    is_file = Path(base).suffix.lower() in CLUSTER_FILE_SUFFIXES or Path(base).is_file()
    if not is_file:
        name, _, count = base.partition(":")
        name = gpu or name
        count = str(n) if n is not None else count
        return (f"{name}:{count}" if count else name), {}
    over: dict = {"gpu": gpu} if gpu else {}
    if n is not None:
        per_node = load_cluster(base, over or None).gpus_per_node
        if n < per_node:
            over.update(num_nodes=1, gpus_per_node=n)
        elif n % per_node:
            raise SpecError(
                f"{n} GPUs is not a multiple of {per_node} GPUs per node ({n} % {per_node} = {n % per_node})"
            )
        else:
            over.update(num_nodes=n // per_node)
    return base, over


def resolve_point(spec: SweepSpec, point: dict) -> tuple[Inputs, Knobs, dict]:
    """Inputs, parsed knobs and raw knob strings of one point, as `autopar plan` would build them."""
    sets = parse_sets(list(spec.sets))
    for key, value in point.items():
        target, _, path = key.partition(".")
        if target in ("model", "cluster") and path and key != "cluster.num_gpus":
            sets[target][path] = value
    cluster, over = _cluster_arg(spec.cluster, point) if spec.cluster else (spec.cluster, {})
    sets["cluster"].update(over)
    raw = dict(spec.knobs)
    raw.update({k: str(v) for k, v in point.items() if k in SPACE_KNOBS})
    inputs = build_inputs(
        point.get("model", spec.model),
        cluster,
        point.get("global_batch", spec.global_batch),
        point.get("seq_len", spec.seq_len),
        point.get("dtype", spec.dtype),
        point.get("attention", spec.attention),
        sets,
        None,
        point.get("stack", spec.stack),
        spec.memory_headroom,
    )
    return inputs, Knobs.parse(raw), raw


def solve_point(task: tuple) -> dict:
    """Plan one point (runs in a worker process): the chosen plan's figures, or why none."""
    model, cluster, train, knobs, solver, gap, time_limit_s = task
    try:
        res = search(model, cluster, train, knobs, solver, gap, time_limit_s, top_k=0)
        if res.certificate.status == SearchStatus.INTERRUPTED:
            raise KeyboardInterrupt  # the whole sweep stops, not just this point
    except SpecError as exc:  # e.g. no valid configuration for these knobs at this point
        return {"feasible": False, "reason": str(exc)}
    c = res.certificate
    solved = {"solver_status": c.status, "gap": c.gap, "solve_wall_s": res.phases_s["total_s"]}
    if res.best is None:
        why = infeasible_advice(model, cluster, train, res, knobs.options())
        return {"feasible": False, "reason": "no plan fits: " + why, **solved}
    p, par = res.best.predicted, res.best.par
    knobs_row = {k: getattr(par, k) for k in KNOB_COLUMNS} | {"recompute": par.recompute_summary()}
    return {
        "feasible": True,
        "reason": None,
        **knobs_row,
        "step_time_s": p.step_time_s,
        "tokens_per_s": p.tokens_per_s,
        "mfu": p.mfu,
        "peak_memory_bytes": p.peak_memory_bytes,
        "memory_capacity_bytes": p.memory_capacity_bytes,
        **solved,
    }


def _check_settings(spec: SweepSpec) -> None:
    """Settings shared by every point are bad input (exit 2), not a per-point reason."""
    SearchSettings(spec.solver, spec.gap, spec.time_limit_s).check()
    parse_prices(spec.price_per_gpu_hour)
    parse_sets(list(spec.sets))
    Knobs.parse(spec.knobs)


def _base_row(point: dict, inputs: Inputs | None) -> dict:
    row: dict = {"point": point, **{c: None for c in COLUMNS}}
    if inputs is not None:
        t = inputs.training
        row.update(
            model=inputs.model.name,
            gpu=inputs.cluster.gpu.name,
            num_gpus=inputs.cluster.num_gpus,
            global_batch=t.global_batch,
            seq_len=t.seq_len,
            dtype=t.dtype,
        )
    return row


def run_sweep(spec: SweepSpec, jobs: int | None = None, cache_dir: Path | None = None, progress=None) -> list[dict]:
    """Plan every point; rows in point order (see COLUMNS). ``cache_dir`` None disables the cache;
    ``progress(done, total)`` is called as points finish. Uncached points run on ``jobs`` worker
    processes (default: CPU count; 1 runs them in this process)."""
    points = expand_points(parse_vary(spec.vary))
    _check_settings(spec)
    cache_dir = open_cache(cache_dir)
    fingerprint = code_fingerprint() if cache_dir is not None else ""
    rows, todo = [], []  # todo: (row index, cache key, task)
    for point in points:
        try:
            inputs, knobs, raw = resolve_point(spec, point)
        except SpecError as exc:  # this point's inputs are invalid (e.g. GPUs not a multiple of a node)
            rows.append({**_base_row(point, None), "feasible": False, "reason": f"invalid point: {exc}"})
            continue
        rows.append(_base_row(point, inputs))
        key = (
            cache_key(inputs, raw, SearchSettings(spec.solver, spec.gap, spec.time_limit_s), fingerprint)
            if cache_dir is not None
            else ""
        )
        hit = cache_read(cache_dir, key)
        if hit is not None:
            rows[-1].update(hit, cached=True)
        else:
            todo.append(
                (
                    len(rows) - 1,
                    key,
                    (inputs.model, inputs.cluster, inputs.training, knobs, spec.solver, spec.gap, spec.time_limit_s),
                )
            )
    invalid = [r["reason"] for r in rows if r["reason"]]
    if len(invalid) == len(points):  # no point even resolves: bad input, not a what-if answer
        raise SpecError(invalid[0].removeprefix("invalid point: "))
    done = len(points) - len(todo)
    if progress:
        progress(done, len(points))
    try:
        for i, key, result in execute(todo, jobs, solve_point):
            cache_dir = cache_write(cache_dir, key, result)  # None from here when the write failed
            rows[i].update(result, cached=False)
            done += 1
            if progress:
                progress(done, len(points))
    except KeyboardInterrupt:  # Ctrl-C: the rows planned so far; the others say why they are empty
        for i, _, _ in todo:
            if rows[i].get("feasible") is None:
                rows[i].update(feasible=False, reason=INTERRUPTED)
    finish_rows(rows, spec.tokens, spec.price_per_gpu_hour)
    return rows


def parse_prices(text: str | float | None) -> dict[str, float] | None:
    """``2.5`` -> {"*": 2.5}; ``h100-sxm-80gb=2.5,b200-sxm-180gb=4.2`` -> per GPU preset; None -> None.
    SpecError (exit 2) for a value that does not parse or is negative."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for item in str(text).split(","):
        gpu, sep, value = item.strip().rpartition("=")
        try:
            price = float(value)
        except ValueError:
            raise SpecError(f"--price-per-gpu-hour {text!r}: expected 2.5 or gpu=2.5,gpu=4.2") from None
        if not price >= 0:
            raise SpecError(f"--price-per-gpu-hour must be >= 0 (got {price})")
        out[gpu.strip().lower() if sep else "*"] = price
    return out


def _price(prices: dict[str, float] | None, gpu: str) -> float | None:
    if prices is None:
        return None
    if gpu in prices or "*" in prices:
        return prices.get(gpu, prices.get("*"))
    raise SpecError(f"--price-per-gpu-hour has no price for {gpu} (given: {', '.join(prices)})")


def finish_rows(rows: list[dict], tokens: float | None, price_per_gpu_hour: str | float | None) -> None:
    """Time-to-train, GPU-hours and cost for the token budget, then the Pareto marks (in place).

    Cost uses each row's own GPU price. The front is per model (time and cost of training one
    model are not traded against another's): over (time, dollars) when priced, else (time,
    GPU-hours), both per token, so neither the budget nor a single price moves it."""
    prices = parse_prices(price_per_gpu_hour)
    for r in rows:
        price = _price(prices, r["gpu"]) if r["feasible"] else None
        r["price_per_gpu_hour"] = price
        if r["feasible"] and tokens:
            hours = tokens / r["tokens_per_s"] / 3600
            r.update(time_to_train_hours=hours, gpu_hours=hours * r["num_gpus"])
            if price is not None:
                r["cost_usd"] = r["gpu_hours"] * price
    for model in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == model]
        marks = pareto_front([_front_point(r) for r in mine])
        for r, on in zip(mine, marks):
            r["pareto"] = on if r["feasible"] else None


def _front_point(r: dict) -> tuple[float, float] | None:
    if not r["feasible"]:
        return None
    per_gpu = r["price_per_gpu_hour"] if r["price_per_gpu_hour"] is not None else 1.0
    return (1 / r["tokens_per_s"], per_gpu * r["num_gpus"] / r["tokens_per_s"])


def pareto_front(points: list[tuple[float, float] | None]) -> list[bool]:
    """Non-dominated flags for (time, cost) pairs, both minimised; None entries are never on it.

    Sorted by (time, cost), a point is dominated iff an earlier point with strictly smaller time
    has cost <= its cost, or a point of equal time has strictly smaller cost. O(n log n)."""
    order = sorted((p, i) for i, p in enumerate(points) if p is not None)
    flags = [False] * len(points)
    best_cost_before = float("inf")  # min cost over strictly smaller times
    for _, members in itertools.groupby(order, key=lambda x: x[0][0]):
        group = list(members)
        group_min = group[0][0][1]  # sorted by cost within a time
        for (_, c), i in group:
            flags[i] = c < best_cost_before and c == group_min
        best_cost_before = min(best_cost_before, group_min)
    return flags
