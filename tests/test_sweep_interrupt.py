"""Ctrl-C during `autopar sweep` (issue 21, finding 4 and item 2): the rows planned so far, the
others marked, exit 130 with one line, and no worker left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

psutil = pytest.importorskip("psutil")


def test_ctrl_c_returns_the_rows_so_far_and_stops_the_workers():
    # deepseek-v3 on thousands of GPUs: each point searches for many seconds.
    args = ["sweep", "-m", "deepseek-v3", "-c", "h100-sxm-80gb:1024", "-b", "2048", "-s", "4096", "--time-limit", "60",
            "--vary", "gpus=1024,2048", "--vary", "seq_len=2048,4096", "--jobs", "2", "--no-cache", "-f", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + 120
    while time.monotonic() < deadline:  # both workers busy planning
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        workers = parent.children()
        if len(workers) >= 2 and all(w.cpu_times().user > 1.0 for w in workers[:2]):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole group
    t0 = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15, "the sweep waited for its running points"
    assert proc.returncode == 130, stderr[-3000:] + stdout[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the rows above were planned before Ctrl-C")
    rows = json.loads(stdout)
    assert len(rows) == 4 and any(r["reason"].startswith("interrupted (Ctrl-C)") for r in rows)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
