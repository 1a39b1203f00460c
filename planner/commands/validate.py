"""`autopar validate`: re-derive everything a plan file claims and collect every finding (the CI gate).

Checks, in order; each finding names a JSON path of the plan, a severity and the numbers (the
checks of the plan's own records, 4 and 5, are in planner/planfile/checks.py):

1. schema: ``schema_version`` must be MAJOR.MINOR with this autopar's major (else bad input,
   exit 2, as for every command: ``planner.planfile.integrity.check_version``); the structure must
   match ``autopar schema plan`` (one finding per pydantic error, at its path).
2. hashes: sha256 of the canonical JSON of ``inputs.{model,cluster,training}`` must equal
   ``inputs.sha256.*``. When the plan's ``reproduce`` command still resolves to inputs with the
   recorded hashes, the edited keys themselves are named (``inputs.model.num_layers``).
3. inputs: the recorded specs, or ``--model``/``--cluster`` (with ``--set``) in their place; an
   input that differs from the recorded one is a warning listing the changed keys.
4. degrees: the plan's redundant records (``RECORDS``) must hold; a field whose one changed value
   would repair every broken record is named as the likely edit (and repaired for the checks
   that follow); then ``check_plan`` (divisibility of heads, batch, sequence, experts, pipeline).
5. stages: chunk i has ``index`` i, ``pp_rank`` i mod pp, ``virtual_index`` i div pp; the layer
   ranges are contiguous and cover [0, num_layers) exactly once; one recompute option per block;
   the embedding on the first chunk, the head on the last; pipeline rank r holds ranks
   r·k .. (r+1)·k − 1 with k = len(stages[0].ranks).
6. memory: every pipeline rank re-estimated with the current cost model against usable capacity.
7. drift: recorded ``predicted`` figures against the re-estimate, beyond the tolerance (warning).
8. regression (``--against golden.json``): re-estimated step time or peak memory above the
   golden plan's recorded figures by more than the tolerance (error).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hardware.cluster import ClusterSpec, load_cluster
from models.errors import SpecError
from models.load import (
    apply_overrides,  # the same dotted-path semantics as --set on a spec
    load_model,
)
from models.spec import ModelSpec
from planner.commands.common import Opt
from planner.commands.diff import flat_changes
from planner.cost.estimate import Estimate, estimate
from planner.inputs import apply_training_sets, build_inputs, parse_sets
from planner.planfile.accept import PlanRejected, accept_plan, runtime_limits
from planner.planfile.build import input_block, input_sha256  # input_sha256: the hash plan files carry
from planner.planfile.checks import (
    Finding,
    Severity,
    check_records,
    check_rules,
    check_stages,
    check_summary,
    check_training,
    short_repr,
)
from planner.planfile.integrity import check_version
from planner.planfile.load import plan_inputs, read_json
from planner.planfile.schema import SCHEMA_VERSION, PlanFile

GiB = 2**30
VALIDATE_OPTIONS = (
    Opt("plan_file", Path, ..., (), "Plan JSON to check (written by `autopar plan --out`).", argument=True),
    Opt("model", str | None, None, ("--model", "-m"), "Re-derive with this model instead of the recorded one."),
    Opt("cluster", str | None, None, ("--cluster", "-c"), "Re-derive with this cluster instead of the recorded one."),
    Opt(
        "against",
        Path | None,
        None,
        ("--against",),
        "Golden plan: step time or peak memory above its figures by more than the tolerance is an error.",
    ),
    Opt(
        "tolerance",
        str,
        "2%",
        ("--tolerance",),
        "Allowed regression and drift: a percentage (2%) or a fraction (0.02).",
    ),
    Opt("fmt", str, "table", ("--format", "-f"), "table, json or github (one Actions annotation line per finding)."),
)
DRIFT_KEYS = ("step_time_s", "tokens_per_s", "mfu", "peak_memory_bytes", "memory_capacity_bytes")


@dataclass
class Report:
    """Everything `validate` found; ``predicted`` is None when the plan could not be re-estimated."""

    plan: str
    tolerance: float
    findings: list[Finding] = field(default_factory=list)
    recorded: dict = field(default_factory=dict)
    predicted: dict | None = None
    against: dict | None = None

    @property
    def valid(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: Severity) -> int:
        return sum(f.severity == severity for f in self.findings)

    def as_json(self) -> dict:
        return {
            "valid": self.valid,
            "plan": self.plan,
            "tolerance": self.tolerance,
            "errors": self.count("error"),
            "warnings": self.count("warning"),
            "findings": [vars(f) for f in self.findings],
            "predicted": self.predicted,
            "recorded": self.recorded,
            "against": self.against,
        }


def parse_tolerance(text: str) -> float:
    """``2%`` -> 0.02 and ``0.02`` -> 0.02; a bare number must be a fraction below 1 (``2`` is ambiguous)."""
    s = str(text).strip()
    pct = s.endswith("%")
    try:
        value = float(s[:-1]) / 100 if pct else float(s)
    except ValueError:
        raise SpecError(f"--tolerance {text!r}: expected a percentage like 2% or a fraction like 0.02") from None
    if not math.isfinite(value) or value < 0 or (not pct and value >= 1):
        raise SpecError(f"--tolerance {text!r}: expected a percentage like 2% or a fraction in [0, 1) like 0.02")
    return value


def json_path(loc: tuple) -> str:
    """pydantic location ('stages', 3, 'layers') -> 'stages[3].layers'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def check_schema(doc: dict) -> tuple[list[Finding], bool]:
    """Version and structure findings, and whether the blocks the re-derivation reads are sound
    (a missing or unknown ``schema_version`` was refused before: ``check_version``, exit 2)."""
    version, ours = doc["schema_version"], SCHEMA_VERSION.split(".")
    minor = version.split(".")[1]
    out = []
    if int(minor) > int(ours[1]):
        out.append(
            Finding(
                "schema_version",
                "warning",
                f"schema_version {version!r} is newer than {SCHEMA_VERSION}: fields it added are not checked",
            )
        )
    try:
        PlanFile.model_validate(doc)
    except ValidationError as exc:
        for e in exc.errors():
            got = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e.get("input"), dict) else ""
            out.append(Finding(json_path(e["loc"]), "error", f"{json_path(e['loc'])}: {e['msg']}{got}"))
    bad_tops = {f.field.split(".")[0].split("[")[0] for f in out if f.severity == "error"}
    return out, not bad_tops & {"inputs", "parallelism", "stages", "predicted"}


def _reproduced_inputs(doc: dict) -> dict | None:
    """The inputs block the plan's ``reproduce`` command resolves to today (None when it cannot)."""
    try:
        args = shlex.split(str(doc.get("reproduce", "")))
        opts = dict(zip(args, args[1:]))  # "--model X" -> opts["--model"] = "X"
        sets = [v for k, v in zip(args, args[1:]) if k == "--set"]
        inp = build_inputs(
            opts["--model"],
            opts["--cluster"],
            int(opts["--global-batch"]),
            int(opts["--seq-len"]),
            opts.get("--dtype", "bf16"),
            opts.get("--attention"),
            parse_sets(sets),
            None,
            opts.get("--stack"),
            opts.get("--memory-headroom"),
        )
    except (SpecError, KeyError, ValueError, OSError):
        return None
    return input_block(inp.model, inp.cluster, inp.training)


def check_hashes(doc: dict) -> list[Finding]:
    """Recorded inputs against their recorded sha256; name the edited keys when ``reproduce`` allows."""
    inputs, out = doc["inputs"], []
    sha = inputs.get("sha256")
    if not isinstance(sha, dict):
        return [Finding("inputs.sha256", "error", "missing: the plan does not record the hashes of its inputs")]
    again = None
    for key in ("model", "cluster", "training"):
        if key not in inputs:
            out.append(Finding(f"inputs.{key}", "error", f"inputs.{key} is missing"))
            continue
        now = input_sha256(inputs[key])
        if now == sha.get(key):
            continue
        again = again if again is not None else (_reproduced_inputs(doc) or {})
        orig = again.get(key)
        if isinstance(orig, dict) and input_sha256(orig) == sha.get(key):
            for path, was, rec in flat_changes(orig, inputs[key], f"inputs.{key}"):
                out.append(
                    Finding(
                        path,
                        "error",
                        f"{path} is {short_repr(rec)} but inputs.sha256.{key} matches "
                        f"{short_repr(was)} (what `reproduce` resolves to): edited by hand",
                    )
                )
        else:
            out.append(
                Finding(
                    f"inputs.{key}",
                    "error",
                    f"sha256 of inputs.{key} is {now[:12]}… but "
                    f"inputs.sha256.{key} records {str(sha.get(key))[:12]}…: edited by hand?",
                )
            )
    return out


def _one_input(kind: str, recorded: Any, arg: str | None, overrides: dict, out: list[Finding]):
    """The spec to re-derive with: ``arg`` loaded fresh, else the recorded one (``--set`` on either)."""
    loader, cls = (load_model, ModelSpec) if kind == "model" else (load_cluster, ClusterSpec)
    if arg is not None:
        spec, how = loader(arg, overrides or None), f"--{kind} {arg}"
    elif not isinstance(recorded, dict):
        out.append(
            Finding(
                f"inputs.{kind}",
                "error",
                f"inputs.{kind} is {short_repr(recorded)}, not a {kind} spec: give --{kind} to validate against one",
            )
        )
        return None
    else:
        try:
            data = apply_overrides(recorded, overrides) if overrides else recorded
            spec, how = cls.model_validate(data), "--set"
        except ValidationError as exc:
            if overrides:
                raise SpecError(
                    f"--set on the recorded {kind}: "
                    + "; ".join(f"{json_path(e['loc'])}: {e['msg']}" for e in exc.errors())
                ) from None
            out += [
                Finding(
                    ".".join([f"inputs.{kind}"] + ([json_path(e["loc"])] if e["loc"] else [])),
                    "error",
                    f"the recorded {kind} is not valid for this autopar: {e['msg']}",
                )
                for e in exc.errors()
            ]
            return None
    changes = flat_changes(recorded, spec.model_dump(), "") if isinstance(recorded, dict) else []
    if changes:
        shown = ", ".join(f"{p} {short_repr(a)} -> {short_repr(b)}" for p, a, b in changes[:6])
        out.append(
            Finding(
                f"inputs.{kind}",
                "warning",
                f"re-derived with {how}, which differs from the recorded "
                f"{kind} in {len(changes)} key(s): {shown}{' …' if len(changes) > 6 else ''}",
            )
        )
    return spec


def _figures(pred: dict) -> dict:
    return {k: pred.get(k) for k in DRIFT_KEYS}


def fmt_figure(key: str, x: Any) -> str:
    """A figure with its unit: seconds, GiB, percent (mfu) or a count."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return "-" if x is None else repr(x)
    if key.endswith("_bytes"):
        return f"{x / GiB:.2f} GiB"
    if key.endswith("time_s"):
        return f"{x:.4f} s"
    return f"{x:.2%}" if key == "mfu" else f"{x:,.0f}"


def _rel(now: float, ref: Any) -> float | None:
    return now / ref - 1 if isinstance(ref, (int, float)) and not isinstance(ref, bool) and ref > 0 else None


def check_estimate(doc: dict, est: Estimate, tol: float) -> list[Finding]:
    """Memory per pipeline rank against capacity, and drift of the recorded figures."""
    pred, out = est.predicted.to_json(), []  # compared key by key with the recorded block
    cap = pred["memory_capacity_bytes"]
    recorded = doc["predicted"].get("stages") if isinstance(doc["predicted"].get("stages"), list) else []
    for r, st in enumerate(pred["stages"]):
        need = st["memory"]["total_bytes"]
        if need > cap:
            was = recorded[r].get("memory", {}).get("total_bytes") if r < len(recorded) else None
            was_txt = f" (the plan recorded {was / GiB:.2f} GiB)" if isinstance(was, (int, float)) else ""
            out.append(
                Finding(
                    f"predicted.stages[{r}].memory",
                    "error",
                    f"pipeline rank {r} needs {need / GiB:.2f} "
                    f"GiB per GPU with the current cost model{was_txt}, {(need - cap) / GiB:.2f} GiB over "
                    f"the {cap / GiB:.2f} GiB usable",
                )
            )
    for key in DRIFT_KEYS:
        rec = doc["predicted"].get(key)
        rel = _rel(pred[key], rec)
        if rel is None:
            out.append(
                Finding(
                    f"predicted.{key}", "warning", f"predicted.{key} is {short_repr(rec)}: expected a positive number"
                )
            )
        elif abs(rel) > tol:
            out.append(
                Finding(
                    f"predicted.{key}",
                    "warning",
                    f"recorded {fmt_figure(key, rec)}, re-estimated "
                    f"{fmt_figure(key, pred[key])} "
                    f"({rel:+.2%}, tolerance {tol:.2%}): the cost model or the inputs changed",
                )
            )
    return out


def check_against(est: Estimate, golden_path: Path, tol: float) -> tuple[list[Finding], dict]:
    """Regression of step time and peak memory against a golden plan's recorded figures."""
    gold = read_json(golden_path, "golden plan").get("predicted")
    out: list[Finding] = []
    block: dict[str, Any] = {"file": str(golden_path)}
    for key, what in (("step_time_s", "slower"), ("peak_memory_bytes", "more memory")):
        ref = gold.get(key) if isinstance(gold, dict) else None
        rel = _rel(getattr(est.predicted, key), ref)
        if rel is None:
            raise SpecError(f"{golden_path}: predicted.{key} is missing or not a positive number")
        block |= {key: ref, f"{key}_change": rel}
        if rel > tol:
            out.append(
                Finding(
                    f"predicted.{key}",
                    "error",
                    f"{fmt_figure(key, getattr(est.predicted, key))} re-estimated "
                    f"vs {fmt_figure(key, ref)} in {golden_path}: {rel:+.2%} {what}, beyond the "
                    f"{tol:.2%} tolerance",
                )
            )
    return out, block


def check_acceptance(doc: dict) -> list[Finding]:
    """The acceptance test `autopar run` applies (planner.planfile.accept), as a finding: validate
    accepts exactly the plans the runtime accepts."""
    try:
        accept_plan(doc)
    except PlanRejected as exc:
        m = re.search(r"plan field '([^']+)'", str(exc))
        return [Finding(m.group(1) if m else "stages", "error", f"the runtime refuses it: {exc}")]
    return []


def validate_plan(
    path: Path, model_arg: str | None, cluster_arg: str | None, sets: dict[str, dict], against: Path | None, tol: float
) -> Report:
    """Run every check (module docstring); SpecError only for bad input (unreadable, not JSON)."""
    doc = read_json(path, "plan")
    check_version(doc, path)  # a file of an unknown layout is bad input (exit 2) for every command
    rep = Report(str(path), tol)
    found, sound = check_schema(doc)
    rep.findings += found
    if not sound:
        return rep
    rep.recorded = _figures(doc["predicted"])
    rep.findings += check_hashes(doc)
    model = _one_input("model", doc["inputs"].get("model"), model_arg, sets.get("model", {}), rep.findings)
    cluster = _one_input("cluster", doc["inputs"].get("cluster"), cluster_arg, sets.get("cluster", {}), rep.findings)
    if model is None or cluster is None:
        return rep
    try:
        _, _, train, par = plan_inputs(
            {**doc, "inputs": {**doc["inputs"], "model": model.model_dump(), "cluster": cluster.model_dump()}}
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        rep.findings.append(Finding("inputs.training", "error", f"cannot be read: {type(exc).__name__} {exc}"))
        return rep
    try:
        train = apply_training_sets(train, sets.get("training"))
    except SpecError as exc:
        rep.findings.append(Finding("inputs.training", "error", str(exc)))
        return rep
    if bad_training := check_training(train):
        rep.findings += bad_training
        return rep
    # A single edit named by check_records is repaired before the other checks so that they do
    # not report its consequences (a wrong pp would otherwise misplace every stage).
    blocking, repair = check_records(doc, train, cluster.num_gpus)
    fixed = par.with_(**repair)
    stage_findings = check_stages(doc, fixed.pp, model.num_layers) + check_summary(doc)
    rules = [f for f in check_rules(fixed, train, model) if not (f.field == "stages" and stage_findings)]
    blocking += stage_findings + rules
    if not blocking:
        blocking += check_acceptance(doc)
    rep.findings += blocking
    if blocking:
        return rep
    rep.findings += [Finding(f, "warning", m) for f, m in runtime_limits(doc)]
    try:
        est = estimate(model, cluster, train, par)
    except (SpecError, RuntimeError) as exc:  # a rule check_plan does not cover (RuntimeError: the schedule)
        rep.findings.append(Finding("parallelism", "error", f"cannot be estimated: {exc}"))
        return rep
    rep.predicted = _figures(est.predicted.to_json()) | {
        "fits": est.fits,
        "stages_memory_bytes": [s.memory.total_bytes for s in est.predicted.stages],
    }
    rep.findings += check_estimate(doc, est, tol)
    if against is not None:
        found, rep.against = check_against(est, against, tol)
        rep.findings += found
    return rep
