"""``autopar doctor``: what this installation can do — versions, MILP solvers, GPUs, torch.distributed.

Every solver check builds the same two-variable MILP with the planner's own builder
(:class:`planner.search.milp.model.Model`) and solves it through the planner's own backend code:

    maximise 3x + 2y  s.t.  x + y <= 4,  x + 3y <= 6,  2x <= 7,  x, y integer >= 0

Its LP relaxation peaks at (3.5, 0.5) = 11.5 and its integer optimum is (3, 1) = 11, so a
backend passes only if it returns 11 (a solver that ignored integrality would return 11.5).
The search also solves pure LPs (relaxation bounds) through ``Model.solve``, which may route
them to another engine, so each ``--solver`` value also gets the relaxation, expected at 11.5.

A ``--solver`` value is usable when its MILP backend and its LP path both pass; planning works
when one is usable, and :func:`planning_works` is what the exit code follows (0 yes, 1 no).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass

from planner.search.milp.model import Model, quiet_native_output, solve_ortools

MILP_OPTIMUM = 11.0  # the integer optimum of the test MILP above
LP_OPTIMUM = 11.5  # its LP relaxation
SOLVER_TIME_LIMIT_S = 10.0
# Which --solver value of `autopar plan` each backend serves (None: not selectable by plan).
PLAN_SOLVERS = {"ortools-highs": "ortools", "pulp-cbc": "pulp"}
ORTOOLS_ENGINES = {"ortools-highs": "HIGHS", "ortools-scip": "SCIP", "ortools-cbc": "CBC", "ortools-cp-sat": "CP-SAT"}


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok`` is None for information that cannot fail; ``serves`` names
    the `autopar plan --solver` value a solver check stands for (None: plan cannot use it)."""

    section: str
    name: str
    ok: bool | None
    detail: str
    serves: str | None = None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _test_milp(integer: bool = True) -> Model:
    m = Model("doctor")
    x = m.var("x", 0.0, None, integer=integer)
    y = m.var("y", 0.0, None, integer=integer)
    m.add(x + y, "<=", 4, "cap[1]")
    m.add(x + 3 * y, "<=", 6, "cap[2]")
    m.add(2 * x, "<=", 7, "cap[3]")
    m.minimize(-3 * x - 2 * y)  # the builder minimises: max 3x + 2y = -min(-3x - 2y)
    return m


def solve_check(backend: str) -> Check:
    """Solve the test MILP with ``backend`` (a key of ORTOOLS_ENGINES, or ``pulp-cbc``)."""
    serves = PLAN_SOLVERS.get(backend)
    name = backend + (f" (--solver {serves})" if serves else "")
    t0 = time.perf_counter()
    try:
        if backend == "ortools-highs":  # what `plan --solver ortools` runs: HiGHS through MathOpt
            sol = _test_milp().solve("ortools-highs", SOLVER_TIME_LIMIT_S)
        elif backend in ORTOOLS_ENGINES:
            from ortools.linear_solver import pywraplp

            with quiet_native_output():  # an engine missing from the build logs to fd 2 from native code
                created = pywraplp.Solver.CreateSolver(ORTOOLS_ENGINES[backend])
            if created is None:
                return Check("solvers", name, False, "not available in this OR-Tools build", serves)
            sol = solve_ortools(_test_milp(), SOLVER_TIME_LIMIT_S, 1e-9, ORTOOLS_ENGINES[backend])
        else:
            with warnings.catch_warnings():  # PuLP 3 announces its 4.0 API on every call
                warnings.simplefilter("ignore")
                sol = _test_milp().solve("pulp", SOLVER_TIME_LIMIT_S)
    except Exception as exc:
        return Check("solvers", name, False, f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}", serves)
    return _judge(name, serves, sol, MILP_OPTIMUM, "integer optimum", t0)


def lp_check(solver: str) -> Check:
    """Solve the test MILP's LP relaxation the way the search does: ``Model.solve(solver)``."""
    name = f"LP relaxation (--solver {solver})"
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = _test_milp(integer=False).solve(solver, SOLVER_TIME_LIMIT_S)
    except Exception as exc:
        return Check("solvers", name, False, f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}", solver)
    return _judge(name, solver, sol, LP_OPTIMUM, f"LP optimum via {sol.backend}", t0)


def _judge(name: str, serves: str | None, sol, expected: float, what: str, t0: float) -> Check:
    """Pass iff the solve is optimal at ``expected`` (the model minimises the negated objective)."""
    if sol.status != "optimal" or sol.objective is None or abs(-sol.objective - expected) > 1e-6:
        got = "no objective" if sol.objective is None else f"objective {-sol.objective:g}"
        return Check("solvers", name, False, f"failed: status {sol.status}, {got} (expected {expected:g})", serves)
    wall_ms = (time.perf_counter() - t0) * 1e3
    return Check("solvers", name, True, f"{what} {-sol.objective:g} in {wall_ms:.0f} ms", serves)


def version_checks() -> list[Check]:
    """Python and the packages autopar uses (torch and matplotlib are optional extras)."""
    rows = [
        Check("versions", "python", None, f"{platform.python_version()} ({platform.python_implementation()})"),
        Check("versions", "autopar", None, _version("autopar") or "not installed (running from a checkout)"),
    ]
    packages = (
        ("ortools", "OR-Tools", True),
        ("pulp", "PuLP", True),
        ("torch", "torch (runtime extra)", False),
        ("matplotlib", "matplotlib (plots extra)", False),
    )
    for dist, label, needed in packages:
        v = _version(dist)
        rows.append(Check("versions", label, (v is not None) if needed else None, v or "not installed"))
    return rows


def cbc_check() -> Check:
    """PuLP's CBC binary: where it is and whether it starts (``cbc -quit`` prints its version)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pulp

            path = pulp.PULP_CBC_CMD(msg=False).path
    except Exception as exc:
        return Check("versions", "CBC binary", False, f"PuLP cannot locate it: {exc}")
    if not path or not os.path.isfile(path):
        return Check("versions", "CBC binary", False, f"not found ({path or 'no path'})")
    path = os.path.realpath(path)
    try:
        proc = subprocess.run([path, "-quit"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("versions", "CBC binary", False, f"{path}: does not run ({exc})")
    version = next((ln.split(":", 1)[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("Version:")), "?")
    ok = proc.returncode == 0
    return Check("versions", "CBC binary", ok, f"{version} at {path}" + ("" if ok else f" (exit {proc.returncode})"))


def gpu_checks() -> list[Check]:
    """GPUs as torch sees them; else as nvidia-smi lists them (a CPU torch build sees none)."""
    torch = _import("torch")
    if torch is not None and torch.cuda.is_available():
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        names = [f"{p.name} ({p.total_memory / 2**30:.1f} GiB)" for p in props]
        detail = f"{len(names)} via torch.cuda (CUDA {torch.version.cuda}): " + ", ".join(names)
        return [Check("gpus", "GPUs visible", None, detail)]
    why = "torch not installed" if torch is None else f"torch {torch.__version__} sees none"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [Check("gpus", "GPUs visible", None, f"none ({why}; no nvidia-smi on PATH)")]
    try:
        proc = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("gpus", "GPUs visible", None, f"none ({why}; nvidia-smi failed: {exc})")]
    gpus = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not gpus:
        return [Check("gpus", "GPUs visible", None, f"none ({why}; nvidia-smi lists none)")]
    return [Check("gpus", "GPUs visible", None, f"{len(gpus)} via nvidia-smi ({why}): " + "; ".join(gpus))]


def distributed_checks() -> list[Check]:
    """torch.distributed backends this torch build provides (gloo runs CPU ranks, NCCL GPU ranks)."""
    torch = _import("torch")
    if torch is None:
        return [Check("torch.distributed", "backends", None, "torch not installed (autopar run needs it)")]
    import torch.distributed as dist

    if not dist.is_available():
        return [Check("torch.distributed", "backends", False, "torch.distributed is not built into this torch")]
    probes = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    return [
        Check("torch.distributed", name, None, "available" if probe() else "not available")
        for name, probe in probes.items()
    ]


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def run_checks() -> list[Check]:
    """Every check, in report order."""
    solvers = [solve_check(b) for b in (*ORTOOLS_ENGINES, "pulp-cbc")] + [lp_check(s) for s in ("ortools", "pulp")]
    return version_checks() + [cbc_check()] + solvers + gpu_checks() + distributed_checks()


def usable_solvers(checks: list[Check]) -> list[str]:
    """The `autopar plan --solver` values whose every check (MILP and LP) passed."""
    usable = []
    for solver in PLAN_SOLVERS.values():
        mine = [c for c in checks if c.serves == solver]
        if mine and all(c.ok for c in mine):
            usable.append(solver)
    return usable


def planning_works(checks: list[Check]) -> bool:
    return bool(usable_solvers(checks))


def report_json(checks: list[Check]) -> dict:
    return {"planning_works": planning_works(checks), "checks": [asdict(c) for c in checks]}


def verdict(checks: list[Check]) -> str:
    """One line for stderr: which `autopar plan --solver` values work."""
    usable = usable_solvers(checks)
    if usable:
        return "planning works with " + " and ".join(f"--solver {s}" for s in usable)
    return (
        "planning does not work: neither `--solver ortools` (OR-Tools) nor `--solver pulp` (PuLP's CBC) "
        "solved the test MILP and its LP relaxation; reinstall ortools or pulp"
    )
