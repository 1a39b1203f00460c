"""Plots: the bars and curves drawn are the cost model's figures; files are valid images; CLI --plot."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from cli import app
from models.errors import SpecError
from planner.render import plots
from planner.cost import timeline as tl
from planner.cost.data_parallel import comm_stage
from planner.cost.estimate import estimate
from planner.inputs import build_inputs, parse_sets

KNOBS = dict(dp=None, tp=1, pp=1, cp=1, ep=1, micro_batch=1, zero=0, recompute="none", schedule="1f1b", vpp=1,
             sequence_parallel=False, stage_layers=None)
# (schedule, vpp, zero, recompute): every schedule, ZeRO exposure in F and B, every recompute option.
CASES = [("gpipe", 1, 0, "none"), ("1f1b", 1, 2, "selective"), ("interleaved", 2, 1, "full"),
         ("1f1b", 1, 3, "full"), ("interleaved", 2, 3, "selective")]


def _est(schedule="1f1b", vpp=1, zero=0, recompute="none", pp=4, gpus=8, batch=16, keep_events=False):
    knobs = dict(KNOBS, pp=pp, schedule=schedule, vpp=vpp, zero=zero, recompute=recompute)
    inp = build_inputs("llama3-8b", f"h100-sxm-80gb:{gpus}", batch, 4096, "bf16", "flash", {}, knobs)
    return estimate(inp.model, inp.cluster, inp.training, inp.parallel, keep_events=keep_events)


@pytest.mark.parametrize("schedule,vpp,zero,recompute", CASES)
def test_gantt_bars_account_for_the_simulated_step(schedule, vpp, zero, recompute):
    est = _est(schedule, vpp, zero, recompute)
    segs = tl.gantt_segments(est)
    step = est.predicted["step_time_s"]
    for r, stage in enumerate(est.predicted["stages"]):
        mine = sorted((s for s in segs if s.rank == r), key=lambda s: s.start_s)
        # Contiguous, non-overlapping bars covering exactly [0, step].
        assert mine[0].start_s == 0.0 and mine[-1].end_s == pytest.approx(step, rel=1e-12)
        assert all(a.end_s == pytest.approx(b.start_s, abs=1e-12) for a, b in zip(mine, mine[1:]))
        assert all(s.duration_s > 0 for s in mine)
        k = tl.seconds_by_kind(segs, r)
        busy = sum(k[x] for x in tl.COMPUTE_KINDS)
        assert busy == pytest.approx(stage["busy_s"], rel=1e-9)
        assert k["dp_sync"] == pytest.approx(stage["dp_sync_exposed_s"], abs=1e-12)
        assert k["optimizer"] == pytest.approx(stage["optimizer_s"], rel=1e-9)
        # Bubbles (idle and waiting on a transfer) are the step minus busy time and the tail.
        assert k["idle"] + k["p2p"] == pytest.approx(step - busy - k["dp_sync"] - k["optimizer"], rel=1e-9)
    if comm_stage(est.train, est.par) >= 2:  # per-micro-batch ZeRO-2/3 collectives show as their own bars
        assert sum(s.duration_s for s in segs if s.kind == "zero_comm") > 0


def test_gantt_ops_match_the_simulation_events_one_to_one():
    """Every F/B event of the schedule simulation is drawn as its parts, spanning exactly its start and end."""
    est = _est("interleaved", 2, 3, "full", keep_events=True)
    segs = [s for s in tl.gantt_segments(est) if s.kind in tl.COMPUTE_KINDS]
    ops: dict[tuple, list] = {}
    for s in segs:
        ops.setdefault((s.rank, s.chunk, s.micro_batch), []).append(s)
    assert sum(len(v) for v in ops.values()) == len(segs)
    for rank, op, j, i, start, end in est.events:
        parts = [s for s in ops[(rank, j, i)] if start <= s.start_s < end]
        kinds = {s.kind for s in parts}
        assert kinds <= ({"forward", "zero_comm"} if op == "F" else {"backward", "recompute", "zero_comm"})
        assert min(s.start_s for s in parts) == start and max(s.end_s for s in parts) == end
        assert sum(s.duration_s for s in parts) == pytest.approx(end - start, rel=1e-9)
    assert len(est.events) == 2 * est.predicted["num_micro_batches"] * est.par.chunks


def test_full_recompute_redoes_the_forward_of_a_middle_stage():
    """Full recompute re-runs each block's forward (with its tp communication) in the backward:
    a middle rank, which holds only blocks, recomputes exactly its forward time."""
    est = _est("1f1b", 1, 0, "full", pp=4)
    k = tl.seconds_by_kind(tl.gantt_segments(est), 1)
    assert k["recompute"] == pytest.approx(k["forward"], rel=1e-9) and k["recompute"] > 0
    none = tl.seconds_by_kind(tl.gantt_segments(_est("1f1b", 1, 0, "none", pp=4)), 1)
    assert none["recompute"] == 0.0


def test_gantt_shows_pipeline_idle_on_later_ranks_at_the_start():
    est = _est("1f1b", 1, 0, "none", pp=4)
    segs = tl.gantt_segments(est)
    first = {r: min((s for s in segs if s.rank == r), key=lambda s: s.start_s) for r in range(4)}
    assert first[0].kind == "forward"
    assert all(first[r].kind == "idle" for r in (1, 2, 3))
    # Rank 3 waits for micro-batch 0's forward on ranks 0-2 and three transfers; the last transfer
    # is drawn just before its first forward.
    fwd = [st["chunks"][0]["fwd_s_per_microbatch"] for st in est.predicted["stages"]]
    p2p = tl.p2p_seconds(est)[0]
    r3 = sorted((s for s in segs if s.rank == 3), key=lambda s: s.start_s)
    assert [s.kind for s in r3[:3]] == ["idle", "p2p", "forward"]
    assert r3[2].start_s == pytest.approx(sum(fwd[:3]) + 3 * p2p, rel=1e-9)
    assert r3[1].duration_s == pytest.approx(p2p, rel=1e-9) and p2p > 0


@pytest.mark.parametrize("schedule,vpp,zero,recompute", CASES)
def test_memory_timeline_peaks_at_the_estimates_stage_peak(schedule, vpp, zero, recompute):
    est = _est(schedule, vpp, zero, recompute)
    for tr, stage in zip(tl.memory_traces(est), est.predicted["stages"]):
        mem = stage["memory"]
        assert max(tr.bytes) == pytest.approx(mem["total_bytes"], rel=1e-9)
        # Starts and ends at the static floor: every stashed activation is freed by the step's end.
        assert tr.bytes[-1] == pytest.approx(tr.static_bytes, rel=1e-9)
        assert min(tr.bytes) == pytest.approx(tr.static_bytes, rel=1e-9)
        assert tr.times_s[-1] == pytest.approx(est.predicted["step_time_s"])
        assert list(tr.times_s) == sorted(tr.times_s)


def test_memory_timeline_activations_follow_the_schedule():
    """GPipe stashes all m micro-batches, 1F1B at most pp - r on rank r: the swing above the
    static floor on rank 0 is m (gpipe) vs pp (1f1b) micro-batches' activations."""
    gp, ob = _est("gpipe", pp=4, batch=32), _est("1f1b", pp=4, batch=32)
    swing_gp = max(tl.memory_traces(gp)[0].bytes) - tl.memory_traces(gp)[0].static_bytes
    swing_ob = max(tl.memory_traces(ob)[0].bytes) - tl.memory_traces(ob)[0].static_bytes
    m = gp.predicted["num_micro_batches"]
    assert gp.predicted["stages"][0]["memory"]["inflight_microbatches"] == m
    assert swing_gp > swing_ob * 1.5


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_each_plot_renders_a_valid_image(tmp_path, suffix):
    est = _est("interleaved", 2, 1, "selective")
    drawn = plots.plot_gantt(est, tmp_path / f"g{suffix}")
    assert drawn == tl.gantt_segments(est)
    traces = plots.plot_memory_timeline(est, tmp_path / f"m{suffix}")
    assert len(traces) == 4
    data = plots.plot_memory_breakdown(est, tmp_path / f"b{suffix}")
    assert data["activations_bytes"] == [s["memory"]["activations_bytes"] for s in est.predicted["stages"]]
    plots.plot_sweep(_rows(), tmp_path / f"s{suffix}", "num_gpus", ["seq_len"])
    for name in "gmbs":
        _assert_image(tmp_path / f"{name}{suffix}")


def test_pdf_and_many_stages(tmp_path):
    est = _est("1f1b", pp=32, gpus=32, batch=64)
    assert {s.rank for s in plots.plot_gantt(est, tmp_path / "g.pdf")} == set(range(32))
    assert (tmp_path / "g.pdf").read_bytes()[:5] == b"%PDF-"
    plots.plot_memory_timeline(est, tmp_path / "m.png")
    _assert_image(tmp_path / "m.png")


def _assert_image(path):
    raw = path.read_bytes()
    assert len(raw) > 1000
    if path.suffix == ".png":
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        from matplotlib.image import imread

        assert imread(path).shape[0] > 100
    else:
        assert b"<svg" in raw[:2000]


def _rows():
    rows = [{"num_gpus": 8, "seq_len": s, "feasible": False, "tokens_per_s": None, "cost_usd": None}
            for s in (4096, 8192)]
    for g in (16, 32, 64):
        for s in (4096, 8192):
            rows.append({"num_gpus": g, "seq_len": s, "feasible": True, "tokens_per_s": 1000.0 * g * 4096 / s,
                         "cost_usd": 50.0 + g})
    return rows


def test_sweep_draws_one_line_per_other_value(tmp_path):
    drawn = plots.plot_sweep(_rows(), tmp_path / "s.png", "num_gpus", ["seq_len"])
    assert set(drawn) == {"seq_len=4096", "seq_len=8192"}
    assert [x for x, _, _ in drawn["seq_len=8192"]] == [16, 32, 64]  # the infeasible point is not on the line
    assert drawn["seq_len=4096"][0] == (16, 16000.0, 66.0)
    cats = [{"gpu": g, "feasible": True, "tokens_per_s": 1.0 + n, "cost_usd": 2.0} for n, g in enumerate("abc")]
    assert list(plots.plot_sweep(cats, tmp_path / "c.svg", "gpu")) == ["all points"]


@pytest.mark.parametrize("call,needle", [
    (lambda p: plots.plot_sweep([], p / "s.png", "x"), "no rows"),
    (lambda p: plots.plot_sweep([{"feasible": True}], p / "s.png", "num_gpus"), "no key 'num_gpus'"),
    (lambda p: plots.plot_sweep([{"n": 1, "feasible": True, "tokens_per_s": None}], p / "s.png", "n"), "has no"),
    (lambda p: plots.plot_gantt(_est(), p / "g.jpg"), "suffix must be one of"),
    (lambda p: plots.write_plots(_est(), p / "g.png", "pie"), "--plot-kind must be one of"),
    (lambda p: plots.write_plots(_est(), p / "nowhere" / "g.png"), "does not exist"),
])
def test_bad_plot_requests_are_spec_errors(tmp_path, call, needle):
    with pytest.raises(SpecError, match=needle):
        call(tmp_path)


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(SpecError, match=r"pip install 'autopar\[plots\]'"):
        plots.plot_memory_breakdown(_est(), tmp_path / "b.png")


runner = CliRunner()
BASE = ["--model", "llama3-8b", "--cluster", "h100-sxm-80gb:8", "--global-batch", "16", "--seq-len", "4096"]


def test_cli_estimate_plot_writes_the_gantt(tmp_path):
    out = tmp_path / "g.png"
    r = runner.invoke(app, ["estimate", *BASE, "--pp", "4", "--plot", str(out), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.lstrip().startswith("{") and f"wrote {out}" in r.stderr
    _assert_image(out)


def test_cli_plot_kind_all_writes_three_files_even_when_the_plan_does_not_fit(tmp_path):
    """pp 2 without ZeRO does not fit llama3-8b's states + activations: exit 1, and the pictures show why."""
    r = runner.invoke(app, ["estimate", *BASE, "--pp", "2", "--zero", "0", "--plot", str(tmp_path / "p.svg"), "--plot-kind", "all"])
    assert r.exit_code == 1 and "does not fit" in r.stderr, r.stderr
    for kind in ("gantt", "memory", "breakdown"):
        _assert_image(tmp_path / f"p-{kind}.svg")


def test_cli_bad_plot_path_is_exit_2_before_any_output(tmp_path):
    r = runner.invoke(app, ["estimate", *BASE, "--plot", str(tmp_path / "g.gif")])
    assert r.exit_code == 2 and r.stdout == "" and "suffix must be one of" in r.stderr


def test_cli_plan_plot_writes_the_plans_gantt(tmp_path):
    out = tmp_path / "plan.png"
    r = runner.invoke(app, ["plan", *BASE, "--pp", "2", "--tp", "1", "--zero", "1", "--micro-batch", "1",
                            "--schedule", "1f1b", "--plot", str(out), "--plot-kind", "memory", "--time-limit", "20"])
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}" in r.stderr
    _assert_image(out)


def test_gantt_shows_exposed_tensor_parallel_communication():
    """The in-layer tp/ep/cp communication the step pays is its own bar kind, as much as the
    estimate's time breakdown counts (the busiest rank's)."""
    knobs = dict(KNOBS, tp=2, pp=2, schedule="1f1b", vpp=1, zero=0, recompute="none")
    inp = build_inputs("llama3-8b", "h100-sxm-80gb:8", 16, 4096, "bf16", "flash", parse_sets(["training.tp_overlap=none"]), knobs)
    est = estimate(inp.model, inp.cluster, inp.training, inp.parallel)
    segs = tl.gantt_segments(est)
    per_rank = [tl.seconds_by_kind(segs, r)["layer_comm"] for r in range(est.par.pp)]
    assert min(per_rank) > 0
    assert max(per_rank) == pytest.approx(est.predicted["time_breakdown_s"]["exposed_comm_in_layers_s"], rel=1e-9)


def test_gantt_numbers_micro_batches_even_when_deep_interleaving_narrows_the_bars():
    """At 16 virtual stages the bars are a few pixels wide: a spaced-out subset keeps its numbers,
    no two numbers on a rank overlap, and early and late micro-batches are both shown."""
    est = _est("interleaved", 16, 0, "none", pp=2, gpus=2, batch=32)
    ops = [s for s in tl.gantt_segments(est) if s.kind in ("forward", "backward")]
    px_per_s = 13 * plots.DPI * 0.85 / est.predicted.step_time_s
    chosen, inside = plots.micro_batch_labels(ops, px_per_s, 7)
    assert not inside and 0 < len(chosen) < len(ops)
    for rank in (0, 1):
        row = sorted((s for s in chosen if s.rank == rank), key=lambda s: s.start_s)
        centres = [(s.start_s + s.duration_s / 2) * px_per_s for s in row]
        assert len(row) >= 8 and all(b - a >= 7 * 0.75 * 2 + 3 for a, b in zip(centres, centres[1:]))
        assert min(s.micro_batch for s in row) == 0 and max(s.micro_batch for s in row) >= 8
    wide, fits = plots.micro_batch_labels(ops, px_per_s * 100, 7)
    assert fits and wide == ops
