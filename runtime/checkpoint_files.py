"""A checkpoint directory on disk and the rules for resuming from it (no torch import).

Layout (``root`` is ``--checkpoint-dir``; one directory per saved step)::

    root/step-00000003/
        .metadata            DCP's global metadata: every key, its global shape and its chunks
        __<rank>_0.distcp    DCP's data, one file per rank that wrote something
        plan.json            the plan the checkpoint was written under
        checkpoint.json      step, world size, optimizer, format version; written last by rank 0

``checkpoint.json`` is the completion marker: a directory without it (a save cut short) is never
resumed from. ``step`` counts completed optimizer steps, which is also the index of the next
batch (:class:`runtime.train.TokenSource` is indexed by step), so it is the data position too.

Resuming under another plan is allowed when what is trained is the same: the same model (every
``ModelSpec`` field but its ``name`` and ``source`` labels) and the same global batch and sequence
length (the data position is a step; another batch would read other tokens). Anything else — dp,
tp, pp, ZeRO stage, micro-batching, layer split, recompute, world size — may change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from runtime.plan_io import PlanError, model_spec, read_parallelism

CHECKPOINT_SCHEMA_VERSION = "1.0"
META_FILE = "checkpoint.json"
PLAN_FILE = "plan.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_MODEL_LABELS = ("name", "source")  # labels, not architecture: a renamed spec loads the same
_SAME_DATA = ("global_batch_size", "seq_len")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def write_meta(directory: Path, plan: dict, step: int, world_size: int, optimizer: str, scheduler: str | None) -> None:
    """plan.json, then checkpoint.json (the completion marker: written last)."""
    (directory / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    meta = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "kind": "checkpoint",
        "format": "torch.distributed.checkpoint",
        "step": step,
        "world_size": world_size,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: ``path`` itself if it is one (holds checkpoint.json), else
    the complete ``step-*`` directory under it with the highest step. PlanError if none."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    if not path.is_dir():
        raise PlanError(f"--resume {path}: no such directory")
    steps = sorted(
        (int(m.group(1)), d) for d in path.iterdir() if (m := _STEP_DIR.match(d.name)) and (d / META_FILE).is_file()
    )
    if not steps:
        raise PlanError(f"--resume {path}: no complete checkpoint (a step-* directory with {META_FILE})")
    return steps[-1][1]


def read_meta(directory: Path) -> tuple[dict, dict]:
    """(checkpoint.json, plan.json) of a checkpoint directory; a newer major format is refused."""
    meta = json.loads((directory / META_FILE).read_text())
    major = str(meta.get("schema_version", "")).split(".")[0]
    if meta.get("kind") != "checkpoint" or major != CHECKPOINT_SCHEMA_VERSION.split(".")[0]:
        raise PlanError(
            f"{directory / META_FILE}: not a checkpoint of format {CHECKPOINT_SCHEMA_VERSION} "
            f"(kind {meta.get('kind')!r}, schema_version {meta.get('schema_version')!r})"
        )
    return meta, json.loads((directory / PLAN_FILE).read_text())


@dataclass(frozen=True)
class ResumePoint:
    """Where a run resumes: the checkpoint directory, its step, and how the plan changed."""

    path: str
    step: int
    optimizer: str  # class name, e.g. "SGD", "AdamW"
    lr_scheduler: str | None  # class name of the schedule whose state it holds, if any
    changes: tuple[str, ...]  # "dp 4 -> 2", ...; empty when resuming under the same plan
    same_layout: bool  # same parallelism, stages and world size: rank r does what it did before

    def report_entry(self) -> dict:
        """The run report's ``resumed_from``."""
        return {"checkpoint": self.path, "step": self.step, "plan_changes": list(self.changes)}

    def describe(self) -> str:
        if not self.changes:
            return f"resuming from {self.path} at step {self.step} under the same plan"
        return f"resuming from {self.path} at step {self.step} under a different plan: {', '.join(self.changes)}"


@dataclass(frozen=True)
class CheckpointOptions:
    """What a run does with checkpoints (``autopar run --checkpoint-dir/--checkpoint-every/--resume``)."""

    directory: str | None = None  # where to save; None: save nothing
    every_steps: int = 0  # save after every N completed steps; 0: only after the last step
    resume: ResumePoint | None = None  # load this first (from check_resume, run before any rank starts)

    def due(self, done: int, total: int) -> bool:
        """Whether to save after ``done`` of ``total`` steps: every N, and always at the end."""
        if self.directory is None:
            return False
        return done == total or (self.every_steps > 0 and done % self.every_steps == 0)


def _model_fields(plan: dict) -> dict:
    spec = model_spec(plan).model_dump(mode="json")
    return {k: v for k, v in spec.items() if k not in _MODEL_LABELS}


def _refuse_other_training(path: Path, old: dict, new: dict) -> None:
    """One line naming what differs: the model's fields, or the global batch / sequence length."""
    a, b = _model_fields(old), _model_fields(new)
    fields = [f"{k} {a.get(k)} != {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if fields:
        raise PlanError(f"checkpoint {path} was written for another model ({'; '.join(fields)})")
    t_old, t_new = old["inputs"]["training"], new["inputs"]["training"]
    data = [f"{k} {t_old[k]} != {t_new[k]}" for k in _SAME_DATA if t_old[k] != t_new[k]]
    if data:
        raise PlanError(
            f"checkpoint {path} was written for another batch ({'; '.join(data)}): the data position would not match"
        )


def plan_changes(old: dict, new: dict) -> tuple[str, ...]:
    """What differs between two plans of the same training: parallelism knobs, stages, dtype, seed."""
    p_old, p_new = read_parallelism(old), read_parallelism(new)
    out = [f"{k} {p_old.get(k)} -> {p_new.get(k)}" for k in p_new if p_old.get(k) != p_new.get(k)]
    if old["stages"] != new["stages"]:
        out.append("stages (layer split or recompute)")
    t_old, t_new = old["inputs"]["training"], new["inputs"]["training"]
    out += [f"{k} {t_old.get(k)} -> {t_new.get(k)}" for k in ("dtype", "seed") if t_old.get(k) != t_new.get(k)]
    return tuple(out)


def check_resume(path: str | Path, plan: dict, steps: int) -> ResumePoint:
    """The checkpoint ``path`` resolves to, after checking ``plan`` may resume from it and that
    ``steps`` (the total) leaves steps to run. PlanError with one line otherwise."""
    directory = find_checkpoint(path)
    meta, old = read_meta(directory)
    _refuse_other_training(directory, old, plan)
    if steps <= meta["step"]:
        raise PlanError(
            f"checkpoint {directory} is at step {meta['step']}: --steps {steps} (the total) leaves nothing to run"
        )
    same = read_parallelism(old) == read_parallelism(plan) and old["stages"] == plan["stages"]
    return ResumePoint(
        str(directory), meta["step"], meta["optimizer"], meta["lr_scheduler"], plan_changes(old, plan), same
    )


def checkpoint_options(
    plan: dict,
    steps: int,
    directory: str | Path | None = None,
    every_steps: int = 0,
    resume: str | Path | None = None,
    optimizer: str | None = None,
) -> CheckpointOptions:
    """The run's checkpoint options, checked before any rank starts (PlanError, one line).
    ``optimizer``: the class name the run will use, which a resumed checkpoint must hold."""
    if every_steps < 0:
        raise PlanError(f"--checkpoint-every must be >= 0 (got {every_steps}; 0 saves after the last step only)")
    if every_steps and directory is None:
        raise PlanError("--checkpoint-every needs --checkpoint-dir (where to save)")
    point = None if resume is None else check_resume(resume, plan, steps)
    if point is not None and optimizer is not None and point.optimizer != optimizer:
        raise PlanError(f"checkpoint {point.path} holds {point.optimizer} state; this run uses {optimizer}")
    return CheckpointOptions(None if directory is None else str(directory), every_steps, point)
