"""The plan file: its schema (``schema``, generated from the knob registry), writing it
(``build``), reading it back (``load``) and checking its own records (``checks``). No rendering."""

from planner.planfile.build import build_plan, input_block, input_sha256, parallel_dict
from planner.planfile.load import load_plan, plan_inputs, read_json
from planner.planfile.schema import SCHEMA_VERSION, PlanFile, plan_schema

__all__ = [
    "SCHEMA_VERSION",
    "PlanFile",
    "build_plan",
    "input_block",
    "input_sha256",
    "load_plan",
    "parallel_dict",
    "plan_inputs",
    "plan_schema",
    "read_json",
]
