"""`autopar doctor`: the report, the exit code that follows the planner's solvers, GPU discovery."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

import planner.commands.doctor as doctor
from cli import app

runner = CliRunner()


def _checks(r) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_json_report_on_this_machine():
    r = runner.invoke(app, ["doctor", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["planning_works"] is True
    checks = _checks(r)
    for backend in ("ortools-highs (--solver ortools)", "ortools-scip", "ortools-cbc", "ortools-cp-sat",
                    "pulp-cbc (--solver pulp)"):
        assert checks[backend]["ok"] is True, checks[backend]
        assert "integer optimum 11 in" in checks[backend]["detail"]
    for solver in ("ortools", "pulp"):
        lp = checks[f"LP relaxation (--solver {solver})"]
        assert lp["ok"] is True and " 11.5 in" in lp["detail"], lp
    assert checks["python"]["detail"].startswith("3.")
    assert checks["CBC binary"]["ok"] is True and "cbc" in checks["CBC binary"]["detail"]
    assert checks["gloo"]["detail"] == "available", "the CPU torch wheel ships gloo"
    assert {c["section"] for c in doc["checks"]} == {"versions", "solvers", "gpus", "torch.distributed"}
    assert "planning works with --solver ortools and --solver pulp" in r.stderr
    assert "{" not in r.stderr


def test_table_report():
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.stderr
    for needle in ("autopar doctor", "ortools-highs (--solver ortools)", "pulp-cbc (--solver pulp)", "OR-Tools",
                   "GPUs visible", "gloo"):
        assert needle in r.stdout, needle


def test_a_wrong_optimum_fails_every_solver_and_exits_1(monkeypatch):
    """MILP_OPTIMUM is what each backend's answer is checked against: change it and all fail."""
    monkeypatch.setattr(doctor, "MILP_OPTIMUM", 11.5)  # the LP bound, which an integer solver must not return
    r = runner.invoke(app, ["doctor", "--format", "json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["planning_works"] is False
    assert all("expected 11.5" in c["detail"] for name, c in _checks(r).items() if name.startswith(("ortools", "pulp")))
    assert "planning does not work" in r.stderr


def test_a_broken_lp_path_makes_a_solver_unusable(monkeypatch):
    """The search solves LP relaxations too: a solver whose LP answer is wrong cannot plan."""
    monkeypatch.setattr(doctor, "LP_OPTIMUM", 11.0)  # the integer optimum, which the LP must beat
    r = runner.invoke(app, ["doctor", "--format", "json"])
    assert r.exit_code == 1 and "planning does not work" in r.stderr
    checks = _checks(r)
    assert checks["ortools-highs (--solver ortools)"]["ok"] is True
    assert checks["LP relaxation (--solver ortools)"]["ok"] is False


def test_one_plan_backend_is_enough(monkeypatch):
    real = doctor.solve_check

    def highs_broken(backend: str):
        if backend == "ortools-highs":
            return doctor.Check("solvers", "ortools-highs (--solver ortools)", False, "failed: simulated", "ortools")
        return real(backend)

    monkeypatch.setattr(doctor, "solve_check", highs_broken)
    r = runner.invoke(app, ["doctor", "--format", "json"])
    assert r.exit_code == 0
    assert "planning works with --solver pulp" in r.stderr and "--solver ortools" not in r.stderr


def test_only_non_plan_backends_working_is_exit_1(monkeypatch):
    real = doctor.solve_check

    def plan_backends_broken(backend: str):
        if backend in doctor.PLAN_SOLVERS:
            return doctor.Check("solvers", backend, False, "failed: simulated", doctor.PLAN_SOLVERS[backend])
        return real(backend)

    monkeypatch.setattr(doctor, "solve_check", plan_backends_broken)
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 1 and "FAILED" in r.stdout and "ortools-scip" in r.stdout


def _torch_sees_no_gpu(monkeypatch) -> None:
    torch = doctor._import("torch")
    if torch is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_gpus_from_nvidia_smi_when_torch_sees_none(tmp_path, monkeypatch):
    _torch_sees_no_gpu(monkeypatch)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\necho 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (gpus,) = doctor.gpu_checks()
    assert gpus.detail.startswith("2 via nvidia-smi") and "NVIDIA H100 80GB HBM3, 81559 MiB" in gpus.detail


def test_gpus_from_torch_cuda(monkeypatch):
    torch = pytest.importorskip("torch")

    class Props:
        name, total_memory = "NVIDIA H200", 141 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    (gpus,) = doctor.gpu_checks()
    assert gpus.detail.startswith("1 via torch.cuda") and "NVIDIA H200 (141.0 GiB)" in gpus.detail


def test_no_gpus_without_torch_cuda_or_nvidia_smi(monkeypatch):
    _torch_sees_no_gpu(monkeypatch)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    (gpus,) = doctor.gpu_checks()
    assert gpus.detail.startswith("none") and "no nvidia-smi on PATH" in gpus.detail


def test_bad_format_is_exit_2():
    r = runner.invoke(app, ["doctor", "--format", "xml"])
    assert r.exit_code == 2 and "--format must be one of table, json" in r.stderr and r.stdout == ""
