"""The runtime: executes a plan with torch.distributed and reports what it measured.

Public API (documented in docs/runtime.md):

* ``runtime.model``: ``build_model(spec, seed)``, ``Transformer``, ``next_token_loss``
* ``runtime.parallelize``: ``apply_plan(model, plan, mesh)`` -> ``ParallelModel``, ``build_mesh``
* ``runtime.launch``: ``run(plan_path, steps, ...)``, ``print_torchrun_command``
* ``runtime.train``: ``run_reference(plan, steps)``, ``TokenSource``
* ``runtime.memory``: ``SavedTensorMeter``, ``state_tensors``
* ``runtime.measure``: ``measure_saved_bytes_per_layer``
* ``runtime.plan_io``: ``load_plan``, ``validate_plan``, ``make_plan``, ``read_parallelism``, ``PlanError``
* ``runtime.defaults``: ``DEFAULT_LR``
* ``runtime.recipe``: ``Recipe`` (optimizer, precision, clipping, schedule)

Names are resolved lazily so that ``import runtime.plan_io`` or ``runtime.defaults`` (the CLI,
the planner's tests) does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "runtime.model",
    "apply_plan": "runtime.parallelize",
    "build_mesh": "runtime.parallelize",
    "ParallelModel": "runtime.step",
    "run": "runtime.launch",
    "print_torchrun_command": "runtime.launch",
    "run_reference": "runtime.train",
    "measure_saved_bytes_per_layer": "runtime.measure",
    "SavedTensorMeter": "runtime.memory",
    "load_plan": "runtime.plan_io",
    "validate_plan": "runtime.plan_io",
    "make_plan": "runtime.plan_io",
    "read_parallelism": "runtime.plan_io",
    "PlanError": "runtime.plan_io",
    "DEFAULT_LR": "runtime.defaults",
    "Recipe": "runtime.recipe",
}
__all__ = [  # every name of _EXPORTS
    "DEFAULT_LR",
    "ParallelModel",
    "PlanError",
    "Recipe",
    "SavedTensorMeter",
    "apply_plan",
    "build_mesh",
    "build_model",
    "load_plan",
    "make_plan",
    "measure_saved_bytes_per_layer",
    "print_torchrun_command",
    "read_parallelism",
    "run",
    "run_reference",
    "validate_plan",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
