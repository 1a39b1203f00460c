"""Run logs (issue 20, item 6): one JSON line per step in the --metrics file, a progress line per
step (rewritten in place on a terminal), the report's phases measured beside the plan's (forward,
backward, gradient sync, optimizer; recompute counted; collectives per kind from the torch
profiler on the last step), and the per-node torchrun line carrying every run option."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()


def _plan(tmp_path, *knobs: str):
    path = tmp_path / "p.json"
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:2", "-b", "4", "-s", "16", "--dtype", "fp32",
                            *knobs, "--out", str(path)])
    assert r.exit_code == 0, r.stderr
    return path


@pytest.mark.parametrize(
    ("knobs", "kinds", "replays"),
    [
        (("--tp", "1", "--pp", "1", "--zero", "0", "--recompute", "full"), {"all_reduce"}, 4),
        (("--tp", "1", "--pp", "2", "--recompute", "none", "--schedule", "1f1b", "--micro-batch", "1"),
         {"send", "recv"}, 0),
    ],
    ids=["dp2-recompute", "pp2"],
)
def test_metrics_lines_and_phases(tmp_path, knobs, kinds, replays):
    from runtime.launch import run

    metrics = tmp_path / "m.jsonl"
    rep = run(_plan(tmp_path, *knobs), steps=3, out=tmp_path / "r.json", metrics=metrics)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2] and [m["profiled"] for m in lines] == [False, False, True]
    assert lines[0]["lr"] < lines[1]["lr"]  # AdamW's warm-up (the default recipe)
    for m, s in zip(lines, rep["steps"]):
        assert m["loss"] == s["loss"] and m["step_time_s"] == s["step_time_s"]
        assert m["lr"] == s["lr"] and m["grad_norm"] == s["grad_norm"] > 0
        assert len(m["peak_memory_bytes_per_rank"]) == 2 and m["memory_kind"] == "saved_for_backward"
    ph = rep["phases"]
    assert ph["profiled_step"] == 2 and rep["measured"]["step_time_s"] == rep["steps"][1]["step_time_s"]
    measured = ph["measured_s"]
    assert measured["forward"] > 0 and measured["backward"] > 0 and measured["optimizer"] > 0
    assert measured["recomputed_blocks"] == replays
    assert kinds <= set(ph["communication_s"]) and all(v > 0 for v in ph["communication_s"].values())
    assert ph["predicted_s"]["forward"] > 0 and ph["predicted_s"]["backward"] > 0
    # The phases cover the step (each is the slowest rank's, so their sum is at least the slowest
    # rank's step) and none is longer than the step.
    step_s, phases = rep["steps"][1]["step_time_s"], ("forward", "backward", "grad_sync", "optimizer")
    assert sum(measured[k] for k in phases) >= 0.95 * step_s
    assert all(measured[k] <= 1.01 * step_s for k in phases)


def test_the_progress_line_is_plain_off_a_terminal_and_rewritten_on_one(tmp_path, capsys, monkeypatch):
    import sys

    from runtime.metrics import StepLog

    plan = json.loads(_plan(tmp_path, "--tp", "1", "--pp", "1").read_text())
    log = StepLog(plan, 2, None, True, "saved_for_backward", "cpu")
    log.step(0, 5.5, 0.01, 2048, 0.1, None)
    log.step(1, 5.4, 0.02, 4096, 0.1, 1.25)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "step 1/2 | loss 5.5000 | lr 0.1 | 6,400 tokens/s | 0.010 s | peak 2.00 KiB (saved_for_backward, max over ranks)",
        "step 2/2 | loss 5.4000 | lr 0.1 | grad norm 1.25 | 3,200 tokens/s | 0.020 s | peak 4.00 KiB "
        "(saved_for_backward, max over ranks)",
    ]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    log = StepLog(plan, 2, None, True, "saved_for_backward", "cpu")
    log.step(0, 5.5, 0.01, 2048, 0.1, None)
    log.step(1, 5.4, 0.02, 4096, 0.1, None)
    err = capsys.readouterr().err
    assert err.count("\r\x1b[2K") == 2 and err.endswith("max over ranks)\n") and err.count("\n") == 1


def test_nnodes_carries_every_run_option(tmp_path):
    plan = _plan(tmp_path, "--tp", "1", "--pp", "1")
    r = runner.invoke(app, ["run", str(plan), "--nnodes", "2", "--data", "t.bin", "--data-dtype", "uint32",
                            "--init-weights", "ckpt", "--metrics", "m.jsonl", "--device", "cpu", "--lr", "0.5"])
    assert r.exit_code == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("torchrun")]
    for option in ("--data t.bin", "--data-dtype uint32", "--init-weights ckpt", "--metrics m.jsonl",
                   "--device cpu", "--lr 0.5", "--steps 5", "--nproc-per-node=1"):
        assert option in line, option
