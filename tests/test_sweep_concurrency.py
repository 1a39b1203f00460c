"""Concurrency (issue 21, item 4): two sweeps sharing one cache directory never corrupt it; a cache
that cannot be used degrades to no cache with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from cli import app
from conftest import ROOT

runner = CliRunner()
SWEEP = ["sweep", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--time-limit", "5",
         "--vary", "tp=1,2,4", "--vary", "zero=0,1,3", "--jobs", "1", "-f", "json"]


def test_two_sweeps_sharing_a_cache_never_corrupt_it(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cli", *SWEEP, "--cache", str(cache)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-2000:]
        assert "warning" not in stderr and "Traceback" not in stderr
    rows = [json.loads(stdout) for stdout, _ in outs]
    stable = [[{k: v for k, v in r.items() if k not in ("solve_wall_s", "cached")} for r in run] for run in rows]
    assert stable[0] == stable[1]
    files = sorted(cache.iterdir())
    assert len(files) == 9 and all(f.suffix == ".json" for f in files)  # no temporary file left behind
    for f in files:  # every entry is whole and names its own key
        doc = json.loads(f.read_text())
        assert doc["key"] == f.stem and isinstance(doc["result"], dict)
    again = runner.invoke(app, [*SWEEP, "--cache", str(cache)])
    assert again.exit_code == 0 and "9 points (9 from cache)" in again.stderr


def test_an_unusable_cache_degrades_to_no_cache_with_a_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = runner.invoke(app, [*SWEEP, "--cache", str(blocker / "cache")])
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: cache directory")]
    assert len(warnings) == 1 and "continuing without the cache" in warnings[0]
    assert len(json.loads(r.stdout)) == 9
