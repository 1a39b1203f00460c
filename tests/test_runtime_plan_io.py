"""The runtime's plan reader follows the registries: ``parallelism`` knobs (types, bounds, choices,
defaults of keys newer than 1.0) from ``planner.knobs``, schedule rules from ``planner.schedules``.
No torch needed."""

from __future__ import annotations

import copy

import pytest
from conftest import run_python

from models.load import load_model
from planner.knobs import KNOBS
from planner.schedules import SCHEDULES
from runtime.defaults import DEFAULT_LR
from runtime.plan_io import PARALLELISM_KNOBS, PlanError, make_plan, read_parallelism, validate_plan

LLAMA = load_model("debug")


def test_the_reader_covers_every_valued_knob_of_the_registry() -> None:
    assert {k.json_key for k in PARALLELISM_KNOBS} == {k.json_key for k in KNOBS if k.kind in ("int", "bool", "choice")}
    assert set(make_plan(LLAMA)["parallelism"]) >= {k.json_key for k in PARALLELISM_KNOBS}


@pytest.mark.parametrize("knob", PARALLELISM_KNOBS, ids=lambda k: k.json_key)
def test_a_missing_knob_is_refused_unless_newer_than_1_0(knob) -> None:
    plan = copy.deepcopy(make_plan(LLAMA))
    del plan["parallelism"][knob.json_key]
    if knob.since == "1.0":
        with pytest.raises(PlanError, match=f"missing field 'parallelism.{knob.json_key}'"):
            validate_plan(plan)
    else:
        validate_plan(plan)
        assert read_parallelism(plan)[knob.json_key] == knob.default


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("zero_stage", 4, r"'parallelism.zero_stage' must be 0..3, got 4"),
        ("tp", 0, r"'parallelism.tp' must be >= 1, got 0"),
        ("schedule", "zb", r"'parallelism.schedule' must be one of \('1f1b', 'interleaved', 'gpipe'\), got 'zb'"),
        ("sequence_parallel", 1, r"'parallelism.sequence_parallel' must be bool, got 1"),
    ],
)
def test_knob_values_are_checked_against_the_registry(key, value, message) -> None:
    plan = copy.deepcopy(make_plan(LLAMA))
    plan["parallelism"][key] = value
    with pytest.raises(PlanError, match=message):
        validate_plan(plan)


def test_schedule_rules_come_from_the_schedule_registry() -> None:
    with pytest.raises(PlanError, match=r"'parallelism.virtual_stages' \(2\) > 1 needs schedule 'interleaved'"):
        make_plan(LLAMA, pp=2, virtual_stages=2, schedule="1f1b", num_micro_batches=4)
    with pytest.raises(PlanError, match=r"'parallelism.num_micro_batches' \(3\) % pp \(2\) = 1"):
        make_plan(LLAMA, pp=2, virtual_stages=2, schedule="interleaved", num_micro_batches=3)
    for name, entry in SCHEDULES.items():
        n = 1  # fewer micro-batches than pipeline ranks
        v = 2 if entry.virtual_stages else 1
        if entry.min_microbatches_pp:
            with pytest.raises(PlanError, match=r"'parallelism.num_micro_batches' \(1\) < pp \(2\)"):
                make_plan(LLAMA, pp=2, virtual_stages=v, schedule=name, num_micro_batches=n)
        else:
            make_plan(LLAMA, pp=2, virtual_stages=v, schedule=name, num_micro_batches=n)


def test_any_1_x_version_is_read() -> None:
    for version in ("1.0", "1.1", "1.7"):
        plan = copy.deepcopy(make_plan(LLAMA))
        plan["schema_version"] = version
        validate_plan(plan)


def test_default_lr_is_importable_without_torch() -> None:
    assert DEFAULT_LR == 0.1
    out = run_python("import sys; from runtime.defaults import DEFAULT_LR; import runtime.plan_io; "
                     "print('torch' in sys.modules)", timeout=120)
    assert out.stdout.strip() == "False", out.stderr
