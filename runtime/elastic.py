"""What `autopar run` does when a rank is lost (a rank that died without a Python traceback:
killed, out of memory, its machine gone; runtime.supervise names it).

Without ``--elastic`` the run ends with one line naming the rank, its pid and the step, the last
complete checkpoint under ``--checkpoint-dir`` and the command that resumes from it (exit 1).

With ``--elastic`` (which needs ``--checkpoint-dir``) the launcher re-plans for the ranks that
remain through the planner itself (``planner.commands.plan.run_plan``: same model, training and
global batch; the plan's recorded cluster ``inputs.cluster`` with one node of fewer devices, since
`autopar run` starts every rank on this machine). A world the planner finds no plan for (e.g. 3
ranks for a global batch of 8 and a model no 3-way tp or pp fits) falls back to the largest world
below it that has one. The new plan is written next to the checkpoints
(``DIR/plan-elastic-<n>.json``), the run resumes from the last complete checkpoint under it
(runtime.checkpoint reshards on load; from step 0 when there is none yet) and goes on to
``--steps``; the report's ``elastic`` list records each event.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import SpecError
from planner.commands.plan import SearchSettings, run_plan
from planner.inputs import Inputs
from planner.planfile.load import plan_inputs
from runtime.checkpoint_files import find_checkpoint, read_meta
from runtime.plan_io import PlanError, load_plan, world_size
from runtime.recipe import Recipe, recipe_argv
from runtime.supervise import RankFailure

# Seconds each re-plan may search: the debug models plan in well under a second; a large model's
# plan is still good when the limit stops the search (planner.commands.plan returns the best so far).
REPLAN_TIME_LIMIT_S = 30.0


ELASTIC_NOT_APPLIED = "--elastic re-plans only for a rank lost after the first step, with a rank left"


class RankLost(RankFailure):
    """A rank was lost and the run was not elastic: the message says where to resume from."""


@dataclass(frozen=True)
class Saved:
    """A complete checkpoint to resume from."""

    path: str
    step: int


def last_checkpoint(checkpoint_dir: str | None, resume: str | None) -> Saved | None:
    """The latest complete checkpoint under ``checkpoint_dir``, else the one this run resumed from."""
    for source in (checkpoint_dir, resume):
        if source is None:
            continue
        try:
            directory = find_checkpoint(source)
        except PlanError:
            continue
        return Saved(str(directory), read_meta(directory)[0]["step"])
    return None


def describe_lost(exc: RankFailure) -> str:
    """``rank 1 (pid 4242) was lost at step 3 (exit code 1)``; several ranks joined by ``, ``."""
    at = f" at step {exc.step}" if exc.step is not None else ""
    parts = []
    for rank, pid, code in exc.lost:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        parts.append(f"rank {rank} (pid {pid}) was lost{at} ({how})")
    return ", ".join(parts)


def lost_rank_error(
    exc: RankFailure, plan_path: str | None, steps: int, saved: Saved | None, recipe: Recipe, elastic: bool = False
) -> RankLost:
    """The one-line error of a lost rank the run does not re-plan for: the checkpoint and how to
    resume. ``elastic``: the run was elastic, but the rank was lost before the first step or no
    rank is left."""
    if saved is None:
        where = "no checkpoint to resume from (run with --checkpoint-dir DIR --checkpoint-every N to keep one)"
        return RankLost(f"{describe_lost(exc)}; {where}" + (f" ({ELASTIC_NOT_APPLIED})" if elastic else ""), exc.lost)
    root = str(Path(saved.path).parent)
    flags = recipe_argv(recipe)
    command = f"autopar run {shlex.quote(plan_path or 'PLAN')} --steps {steps} --resume {shlex.quote(root)}"
    command += f" --checkpoint-dir {shlex.quote(root)}" + (f" {flags}" if flags else "")
    return RankLost(
        f"{describe_lost(exc)}; last complete checkpoint: {saved.path} (step {saved.step}); resume with: "
        f"{command} ({ELASTIC_NOT_APPLIED if elastic else 'add --elastic to re-plan for the ranks left'})",
        exc.lost,
    )


def check_elastic(plan: dict, checkpoint_dir: str | None) -> None:
    """Before any rank starts: ``--elastic`` needs a checkpoint directory and a plan that records
    the cluster it was planned for (PlanError, one line)."""
    if checkpoint_dir is None:
        raise PlanError("--elastic needs --checkpoint-dir (the run resumes from its checkpoints)")
    try:
        plan_inputs(plan)
    except SpecError as exc:
        raise PlanError(
            f"--elastic re-plans with the planner, which needs the plan's recorded inputs "
            f"(a plan written by `autopar plan`): {exc}"
        ) from None


def replan(plan: dict, ranks: int, time_limit_s: float = REPLAN_TIME_LIMIT_S) -> tuple[dict, int]:
    """The planner's plan for the largest world <= ``ranks`` it finds one for, and that world."""
    model, cluster, training, _ = plan_inputs(plan)
    for world in range(ranks, 0, -1):
        smaller = cluster.model_copy(
            update={"num_nodes": 1, "gpus_per_node": world, "name": f"{cluster.gpu.name}:{world}"}
        )
        refs = {"model": model.name, "cluster": smaller.name, "sets": {}, "stack": training.stack.name}
        try:
            result = run_plan(
                Inputs(model, smaller, training, None, refs), {}, SearchSettings(time_limit_s=time_limit_s)
            )
        except SpecError:  # no degrees split this world for this model and batch
            continue
        if result.doc is not None:
            return load_plan(result.doc), world
    raise PlanError(f"--elastic: the planner finds no plan for {ranks} or fewer ranks")


def relaunch(run: Callable[..., dict], plan: dict, exc: RankFailure, steps: int, options: dict, count: int) -> dict:
    """Re-plan without the lost ranks, resume under the new plan (``run``: runtime.launch.run with
    ``options``), and record the event in the report it writes."""
    remaining = world_size(plan) - len(exc.lost)  # >= 1: runtime.launch checked
    directory = Path(options["checkpoint_dir"])
    saved = last_checkpoint(options["checkpoint_dir"], options.get("resume"))
    new_plan, world = replan(plan, remaining)
    path = directory / f"plan-elastic-{count}.json"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(new_plan, indent=2) + "\n")
    start = f"resuming from {saved.path} (step {saved.step})" if saved else "no checkpoint yet: restarting from step 0"
    print(
        f"elastic: {describe_lost(exc)}; re-planned for {world} of {remaining} remaining ranks "
        f"({new_plan['reproduce']}) -> {path}; {start}",
        file=sys.stderr,
    )
    report = run(path, steps, **(options | {"resume": saved.path if saved else None}), _relaunch=count)
    event: dict[str, Any] = {
        "at_step": exc.step,
        "lost_ranks": [r for r, _, _ in exc.lost],
        "old_world": world_size(plan),
    }
    event |= {"new_world": world, "new_plan": str(path), "resumed_from": saved.path if saved else None}
    event["resumed_at_step"] = first = saved.step if saved else 0
    # The steps before the resume point ran only in the lost launch; their losses are kept here.
    event["losses_before_resume"] = [{"step": k, "loss": v} for k, v in sorted(exc.losses.items()) if k < first]
    report["elastic"] = [event, *report.get("elastic", [])]
    Path(options["out"]).write_text(json.dumps(report, indent=2) + "\n")
    return report
