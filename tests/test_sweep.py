"""`autopar sweep`: output formats, reasons, cache, Pareto marks, equality with `autopar plan`."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli import app
from conftest import ROOT, run_python
from planner.commands import sweep as sw

runner = CliRunner()
DEBUG = ["sweep", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--jobs", "1"]
# Values that must not differ between two runs of the same point (wall times and cache flags may).
STABLE = [c for c in sw.COLUMNS if c not in ("solve_wall_s", "cached")]


def invoke(args, cache):
    return runner.invoke(app, args + (["--cache", str(cache)] if cache else ["--no-cache"]))


def test_csv_has_one_row_per_point(tmp_path):
    r = invoke(DEBUG + ["--vary", "tp=1,2", "--vary", "zero=0,3", "--vary", "seq_len=32,64", "-f", "csv"], tmp_path)
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 8
    assert list(rows[0])[:3] == ["point.tp", "point.zero", "point.seq_len"]
    first_two = [(x["point.tp"], x["point.zero"], x["point.seq_len"]) for x in rows[:2]]
    assert first_two == [("1", "0", "32"), ("1", "0", "64")]  # the last --vary varies fastest
    for x in rows:
        assert x["feasible"] == "True" and x["tp"] == x["point.tp"] and x["zero"] == x["point.zero"]
        assert x["seq_len"] == x["point.seq_len"] and float(x["step_time_s"]) > 0
    assert "8 points (0 from cache)" in r.stderr and "points" not in r.stdout.splitlines()[-1]


def test_jsonl_rows_and_derived_columns(tmp_path):
    r = invoke(DEBUG + ["--vary", "micro_batch=1,2,4", "--tokens", "2B", "--price-per-gpu-hour", "3", "-f", "jsonl"],
               None)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and [x["point"] for x in rows] == [{"micro_batch": m} for m in (1, 2, 4)]
    for x in rows:
        assert set(x) == {"point", *sw.COLUMNS} and x["micro_batch"] == x["point"]["micro_batch"]
        hours = 2e9 / x["tokens_per_s"] / 3600
        assert x["time_to_train_hours"] == pytest.approx(hours)
        assert x["gpu_hours"] == pytest.approx(4 * hours) and x["cost_usd"] == pytest.approx(12 * hours)
    assert not list(tmp_path.iterdir())  # --no-cache wrote nothing


def test_infeasible_and_invalid_points_report_why(tmp_path):
    r = invoke(["sweep", "-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "64", "-s", "2048", "--jobs", "1",
                "--vary", "gpus=1,8,100", "-f", "jsonl"], None)
    assert r.exit_code == 0, r.stderr
    one, eight, hundred = [json.loads(line) for line in r.stdout.splitlines()]
    assert one["feasible"] is False and one["reason"].startswith("no plan fits: binding constraint: memory")
    assert one["pareto"] is None and one["step_time_s"] is None
    assert eight["feasible"] is True and eight["reason"] is None and eight["pareto"] is True
    assert hundred["feasible"] is False and "100 GPUs is not a multiple of 8" in hundred["reason"]
    table = invoke(["sweep", "-m", "llama3-8b", "-c", "h100-sxm-80gb:1", "-b", "64", "-s", "2048", "--jobs", "1"], None)
    assert table.exit_code == 1 and "no plan fits" in table.stdout and "no point of the sweep" in table.stderr


def test_cache_makes_a_rerun_skip_the_solver(tmp_path, monkeypatch):
    spec = sw.SweepSpec("debug", "cpu:4", 16, 64, vary=("tp=1,2", "micro_batch=1,2"))
    first = sw.run_sweep(spec, jobs=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 4 and not any(r["cached"] for r in first)

    def no_solve(task):
        raise AssertionError("a cached point was solved again")

    monkeypatch.setattr(sw, "solve_point", no_solve)
    second = sw.run_sweep(spec, jobs=1, cache_dir=tmp_path)
    assert all(r["cached"] for r in second)
    assert [[r[c] for c in sw.COLUMNS if c != "cached"] for r in second] == \
        [[r[c] for c in sw.COLUMNS if c != "cached"] for r in first]
    # Another time limit is another key: the point is solved again.
    with pytest.raises(AssertionError, match="solved again"):
        sw.run_sweep(sw.SweepSpec("debug", "cpu:4", 16, 64, vary=("tp=1",), time_limit_s=30.0), 1, tmp_path)


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "c"))
    r = runner.invoke(app, DEBUG + ["--vary", "zero=0,1", "-f", "csv"])
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    again = runner.invoke(app, DEBUG + ["--vary", "zero=0,1", "-f", "csv"])
    assert again.exit_code == 0 and "2 points (2 from cache)" in again.stderr
    cold, warm = (list(csv.DictReader(io.StringIO(x.stdout))) for x in (r, again))
    assert [x["cached"] for x in cold] == ["False"] * 2 and [x["cached"] for x in warm] == ["True"] * 2
    assert [x["step_time_s"] for x in cold] == [x["step_time_s"] for x in warm]


def _dominated(p, q):
    return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    pts = [None if rng.random() < 0.15 else (rng.randint(1, 6), rng.randint(1, 6)) for _ in range(rng.randint(1, 25))]
    brute = [p is not None and not any(q is not None and _dominated(p, q) for q in pts) for p in pts]
    assert sw.pareto_front(pts) == brute


def test_pareto_column_of_a_real_sweep(tmp_path):
    rows = sw.run_sweep(sw.SweepSpec("debug", "cpu:4", 16, 64, vary=("gpus=1,2,4", "seq_len=32,64")), 1, None)
    cost = [(r["time_to_train_hours"], r["gpu_hours"]) for r in rows]
    assert all(r["feasible"] for r in rows)
    assert [r["pareto"] for r in rows] == [not any(_dominated(p, q) for q in cost) for p in cost]
    assert any(r["pareto"] for r in rows) and not all(r["pareto"] for r in rows)


def test_each_row_equals_a_standalone_plan():
    rows = sw.run_sweep(sw.SweepSpec("llama3-8b", "h100-sxm-80gb:64", 512, 4096, knobs={"zero": "1,2"},
                                     vary=("gpus=16,32", "gpu=h100-sxm-80gb,a100-sxm-80gb")), 1, None)
    for r in rows:
        cluster = f"{r['point']['gpu']}:{r['point']['cluster.num_gpus']}"
        p = runner.invoke(app, ["plan", "-m", "llama3-8b", "-c", cluster, "-b", "512", "-s", "4096", "--zero", "1,2",
                                "--format", "json"])
        assert p.exit_code == 0, p.stderr
        doc = json.loads(p.stdout)
        par, pred = doc["parallelism"], doc["predicted"]
        assert (r["dp"], r["tp"], r["pp"], r["cp"], r["ep"], r["zero"], r["micro_batch"], r["schedule"], r["vpp"]) == \
            (par["dp"], par["tp"], par["pp"], par["cp"], par["ep"], par["zero_stage"], par["micro_batch_size"],
             par["schedule"], par["virtual_stages"])
        for key in ("step_time_s", "tokens_per_s", "mfu", "peak_memory_bytes", "memory_capacity_bytes"):
            assert r[key] == pred[key], key
        assert (r["gap"], r["solver_status"]) == (doc["solver"]["gap"], doc["solver"]["status"])


def test_parallel_workers_give_the_same_rows(tmp_path):
    args = DEBUG[:-2] + ["--vary", "tp=1,2,4", "--vary", "zero=0,3", "--no-cache", "-f", "jsonl"]
    par = subprocess.run([sys.executable, "-c", "from cli import app; app()", *args, "--jobs", "2",
                          "-o", str(tmp_path / "rows.csv")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert par.returncode == 0, par.stderr
    seq = invoke(args + ["--jobs", "1"], None)
    a = [json.loads(x) for x in par.stdout.splitlines()]
    b = [json.loads(x) for x in seq.stdout.splitlines()]
    assert len(a) == 6 and [[x[c] for c in STABLE] for x in a] == [[x[c] for c in STABLE] for x in b]
    assert len(list(csv.DictReader((tmp_path / "rows.csv").open()))) == 6 and "wrote" in par.stderr


@pytest.mark.parametrize("args,needle", [
    (["--vary", "foo=1"], "--vary key 'foo' unknown"),
    (["--vary", "seq_len=abc"], "'abc' is not a positive integer"),
    (["--vary", "tp=1", "--vary", "tp=2"], "--vary tp given twice"),
    (["--vary", "tp=1,,2"], "no empty value"),
    (["--vary", "model=llama9"], "unknown model preset 'llama9'"),
    (["--vary", "gpu=h900"], "unknown GPU preset 'h900'"),
    (["--vary", "dtype=int4"], "dtype must be one of"),
    (["--tokens", "lots"], "--tokens 'lots'"),
    (["--format", "xml"], "--format must be one of table, csv, json, jsonl"),
    (["--out", "rows.txt"], "use a .csv, .json, .jsonl or .ndjson"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--solver", "gurobi"], "--solver must be ortools or pulp"),
    (["--set", "model.foo=1"], "foo: unknown key"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = invoke(DEBUG + args, None)
    assert r.exit_code == 2, r.stdout
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_vary_keys_resolve_like_the_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("gpu: h100-sxm-80gb\nnum_nodes: 2\n")
    spec = sw.SweepSpec("debug", str(tmp_path / "c.yaml"), 16, 64, sets=("cluster.inter_node_bw_GBps=25",))
    h100, a100 = "h100-sxm-80gb", "a100-sxm-80gb"
    for point, gpus, gpu in (({"cluster.num_gpus": 4}, 4, h100), ({"cluster.num_gpus": 32}, 32, h100),
                             ({"gpu": a100}, 16, a100)):
        inputs, _, _ = sw.resolve_point(spec, point)
        assert (inputs.cluster.num_gpus, inputs.cluster.gpu.name, inputs.cluster.inter_node_bw_GBps) == (gpus, gpu, 25)
    inputs, knobs, raw = sw.resolve_point(sw.SweepSpec("debug", "cpu:4", 16, 64, knobs={"tp": "1,2"}),
                                          {"model.num_layers": 3, "tp": 2, "global_batch": 32, "dtype": "fp32"})
    assert inputs.model.num_layers == 3 and knobs.values["tp"] == (2,) and raw["tp"] == "2"
    assert (inputs.training.global_batch, inputs.training.dtype) == (32, "fp32")
    assert sw.parse_tokens("15T") == 15e12 and sw.parse_tokens("1e9") == 1e9 and sw.parse_tokens("2.5m") == 2.5e6


def test_code_fingerprint_covers_what_the_planner_imports():
    r = run_python("import sys, planner.search, planner.commands.plan; from pathlib import Path; root = Path.cwd(); "
                   "print('\\n'.join(sorted(Path(m.__file__).resolve().relative_to(root).as_posix() "
                   "for m in list(sys.modules.values()) if getattr(m, '__file__', None) "
                   "and Path(m.__file__).resolve().is_relative_to(root))))")
    assert r.returncode == 0, r.stderr
    imported = {p for p in r.stdout.split() if not p.endswith("__init__.py")}
    assert imported <= set(sw.CODE_FILES), imported - set(sw.CODE_FILES)


def test_plot_draws_one_line_per_other_vary_value(tmp_path, monkeypatch):
    import planner.render.plots as plots

    drawn = {}
    real = plots.plot_sweep

    def spy(rows, path, x_key, series_keys=(), **kw):
        drawn.update(real(rows, path, x_key, series_keys, **kw))
        return drawn

    monkeypatch.setattr(plots, "plot_sweep", spy)
    png = tmp_path / "sweep.png"
    r = invoke(DEBUG + ["--vary", "cluster.num_gpus=2,4", "--vary", "zero=0,1", "-f", "csv", "--plot", str(png)], None)
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(drawn) == 2  # one line per zero value, each over the two GPU counts
    for line in drawn.values():
        assert [x for x, _, _ in line] == [2, 4]
    tps = sorted(float(x["tokens_per_s"]) for x in rows)
    assert sorted(t for line in drawn.values() for _, t, _ in line) == pytest.approx(tps)
