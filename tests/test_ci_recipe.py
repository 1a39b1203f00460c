"""The CI recipe of docs/ci.md, run verbatim end to end in a temporary directory.

The recipe's shell blocks are read from docs/ci.md (the README quotes the same text), so the
documented commands and the tested ones cannot drift apart. `autopar` on PATH is a shim that
runs this checkout's cli.py, so the test does not depend on where the package is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "ci.md").read_text(), re.S)
PLAN_ONCE, GATE, REPLAN = BLOCKS[0], BLOCKS[1], BLOCKS[2]
MODEL = "extends: llama3-8b\n"
CLUSTER = "gpu: h100-sxm-80gb\nnum_nodes: 2\n"


def sh(block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT),
               NO_COLOR="1")
    return subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory) -> Path:
    """A repository after the one-time step: model.yaml, cluster.yaml and the committed golden.json."""
    d = tmp_path_factory.mktemp("repo")
    (d / "bin").mkdir()
    shim = d / "bin" / "autopar"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    shim.chmod(0o755)
    (d / "model.yaml").write_text(MODEL)
    (d / "cluster.yaml").write_text(CLUSTER)
    r = sh(PLAN_ONCE, d)
    assert r.returncode == 0, r.stderr
    assert (d / "golden.json").is_file() and "wrote golden.json" in r.stderr
    return d


@pytest.fixture
def repo(golden_dir, tmp_path) -> Path:
    shutil.copytree(golden_dir, tmp_path / "repo")
    return tmp_path / "repo"


def test_the_recipe_is_the_documented_one():
    assert "--against golden.json" in GATE and "--out golden.json" in PLAN_ONCE and len(BLOCKS) == 3
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{PLAN_ONCE}```" in readme and f"```bash\n{GATE}```" in readme  # README quotes them verbatim


def test_unchanged_files_pass(repo):
    r = sh(GATE, repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "" and "golden.json: valid (0 error(s), 0 warning(s))" in r.stderr


def test_a_model_change_that_no_longer_fits_fails_the_build(repo):
    (repo / "model.yaml").write_text(MODEL + "ffn_hidden_size: 18432\n")
    r = sh(GATE, repo)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(ln.startswith("::error file=golden.json,title=predicted.stages[0].memory::pipeline rank 0 needs")
               and "GiB over the 75.00 GiB usable" in ln for ln in lines), r.stdout  # 80 GiB - 1 GiB context - 5% headroom
    assert any(ln.startswith("::warning file=golden.json,title=inputs.model::") and "ffn_hidden_size 14336 -> 18432"
               in ln for ln in lines)
    assert "NOT VALID" in r.stderr


def test_a_cluster_change_that_is_slower_than_the_tolerance_fails_the_build(repo):
    (repo / "cluster.yaml").write_text("gpu:\n  extends: h100-sxm-80gb\n  peak_bf16_tflops: 800\nnum_nodes: 2\n")
    r = sh(GATE, repo)
    assert r.returncode == 1
    errors = [ln for ln in r.stdout.splitlines() if ln.startswith("::error")]
    assert len(errors) == 1 and errors[0].startswith("::error file=golden.json,title=predicted.step_time_s::")
    assert re.search(r"\+\d+\.\d+%25 slower, beyond the 2\.00%25 tolerance", errors[0])


def test_a_small_change_within_the_tolerance_passes(repo):
    # 1% less bf16 peak: about 1% slower, inside the 2% tolerance (a warning-free pass is not required)
    (repo / "cluster.yaml").write_text("gpu:\n  extends: h100-sxm-80gb\n  peak_bf16_tflops: 979\nnum_nodes: 2\n")
    r = sh(GATE, repo)
    assert r.returncode == 0, r.stdout
    assert "::error" not in r.stdout


def test_the_replanning_variant(repo):
    r = sh(REPLAN, repo)
    assert r.returncode == 0, r.stdout + r.stderr
    (repo / "cluster.yaml").write_text("gpu:\n  extends: h100-sxm-80gb\n  peak_bf16_tflops: 800\nnum_nodes: 2\n")
    r = sh(REPLAN, repo)
    assert r.returncode == 1 and "::error file=new.json,title=predicted.step_time_s::" in r.stdout
