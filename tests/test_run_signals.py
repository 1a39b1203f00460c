"""`autopar run` under signals and stopped ranks (issue 21, finding 4): SIGTERM or Ctrl-C stops
every rank and the fork server (no orphan), with one line; a rank stopped for --rank-timeout
seconds ends the run with an error naming it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

from models.load import load_model  # noqa: E402
from runtime.plan_io import make_plan  # noqa: E402


def _start(tmp_path, *extra: str) -> subprocess.Popen:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(load_model("debug"), dp=2, seq_len=16)))
    command = [sys.executable, "-m", "cli", "run", str(plan), "--steps", "100000", "--out", str(tmp_path / "r.json")]
    return subprocess.Popen(
        [*command, *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
    )


def _ranks(proc: subprocess.Popen, n: int = 2) -> tuple[list, list]:
    """(every descendant, the rank processes) once n ranks are training (their CPU time grows)."""
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + 120
    while time.monotonic() < deadline:
        everyone = parent.children(recursive=True)
        ranks = [p for p in everyone if p.ppid() != proc.pid and "resource_tracker" not in " ".join(p.cmdline())]
        if len(ranks) >= n and all(p.cpu_times().user > 1.0 for p in ranks[:n]):
            return everyone, ranks[:n]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("the ranks did not start training")


def _gone(processes: list, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes):
            return True
        time.sleep(0.1)
    return False


def _final_lines(stderr: str) -> list[str]:
    """stderr without the per-step progress lines (``step N/M | ...``) that precede the outcome."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("step ")]


@pytest.mark.parametrize("how", ["SIGTERM to the launcher", "Ctrl-C to the process group"])
def test_a_signal_stops_every_rank_and_the_fork_server(tmp_path, how):
    proc = _start(tmp_path)
    everyone, _ = _ranks(proc)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and _final_lines(stderr) == [
        f"interrupted: stopped by {'SIGTERM' if how.startswith('SIGTERM') else 'SIGINT'}: 2 ranks stopped"
    ], stderr[-3000:]
    assert _gone(everyone), [(p.pid, p.status()) for p in everyone if p.is_running()]


def test_a_stopped_rank_is_named_within_the_rank_timeout(tmp_path):
    proc = _start(tmp_path, "--rank-timeout", "3")
    everyone, ranks = _ranks(proc)
    ranks[1].suspend()  # SIGSTOP
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20
    assert proc.returncode != 0 and f"(pid {ranks[1].pid}) has been stopped for 3 s (--rank-timeout)" in stderr, stderr
    assert "Traceback" not in stderr and len(_final_lines(stderr)) == 1, stderr
    assert _gone(everyone)
