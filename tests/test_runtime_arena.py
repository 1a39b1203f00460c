"""``--memory-plan arena`` (runtime.arena, runtime.arena_hooks, runtime.arena_trace): saved
activations at CP-SAT-planned offsets of one buffer per rank. Two-rank runs keep loss and
parameter parity with the single-process reference (1e-5) and measure a high-water mark equal to
the planned arena; in one process the hooks give bitwise the gradients of a run without them,
reuse bytes across micro-batches, and refuse a step that strays from the plan."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

torch = pytest.importorskip("torch")

from models.load import load_model  # noqa: E402
from planner.search.milp.arena import Buffer  # noqa: E402
from runtime.arena import ALIGN_BYTES, plan_arena, schedule_buffers  # noqa: E402
from runtime.arena_hooks import ArenaHooks, ArenaMismatch  # noqa: E402
from runtime.arena_trace import ChunkTrace, SlotSpec  # noqa: E402
from runtime.model import build_model, next_token_loss  # noqa: E402
from runtime.parity import check_parity  # noqa: E402
from runtime.plan_io import make_plan  # noqa: E402
from runtime.step import ParallelModel  # noqa: E402

LLAMA = load_model("debug")
SEQ = 16


def _slot(packed_at: int, released_at: int | None) -> SlotSpec:
    return SlotSpec((2, 4), (4, 1), torch.float32, 32, packed_at, released_at)


def test_lifetimes_follow_the_schedule_order():
    """F events take packs + 1 time points, B events releases + 1; a slot starts at its pack and
    ends one point after its release; one released with the graph lives to the end of the step."""
    trace = ChunkTrace((_slot(0, 1), _slot(1, 0), _slot(3, None)), (0, 1, None, 2), ("parameter",), 2)
    order = (("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1))  # 1F1B, pp rank 0 of 2, 2 micro-batches
    buffers, keys = schedule_buffers([trace], order)
    assert keys == [(0, i, d) for i in (0, 1) for d in (0, 1, 2)]
    # F(0) on [0, 5), F(1) on [5, 10), B(0) on [10, 13), B(1) on [13, 16); the step ends at 16.
    expected = [(0, 12), (1, 11), (3, 17), (5, 15), (6, 14), (8, 17)]
    assert [(b.start, b.end) for b in buffers] == expected
    assert all(b == Buffer(b.name, b.start, b.end, 1) for b in buffers)  # 32 bytes: one 64-byte unit


def _one_process(num_micro_batches: int = 2):
    plan = make_plan(LLAMA, num_micro_batches=num_micro_batches, seq_len=SEQ)
    model = build_model(LLAMA, 0, torch.float32)
    pm = ParallelModel([model], [0], plan)
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, LLAMA.vocab_size, (num_micro_batches, SEQ + 1), generator=g)
    return pm, batch[:, :-1], batch[:, 1:]


def test_hooks_give_the_same_gradients_and_reach_the_planned_arena():
    torch.set_num_threads(1)
    pm, x, y = _one_process()
    pm.forward_backward(x, y)
    expected = [p.grad.clone() for p in pm.parameters()]
    layout = plan_arena(pm, 0)  # the dry run leaves no gradient behind
    assert all(p.grad is None for p in pm.parameters())
    hooks = ArenaHooks(layout, pm.parts, pm.device)
    with hooks:
        pm.forward_backward(x, y)
    assert all(torch.equal(p.grad, e) for p, e in zip(pm.parameters(), expected))
    assert hooks.high_water_bytes == layout.arena_bytes
    assert hooks.peak_bytes == layout.summary()["planned_max_live_bytes"]
    # Accumulation runs F0 B0 F1 B1: micro-batch 1 reuses micro-batch 0's bytes.
    total = sum(layout.slot_bytes.values())
    assert layout.arena_bytes == total // 2 and total % (2 * ALIGN_BYTES) == 0
    assert "parameter" in layout.summary()["by_reference_kinds"]  # weights are saved by reference


def test_a_step_that_strays_from_the_planned_order_is_refused():
    """Planned for F0 B0 F1 B1, both forwards first would put micro-batch 1 over micro-batch 0's
    live tensors: an error, never a silent overwrite."""
    pm, x, y = _one_process()
    hooks = ArenaHooks(plan_arena(pm, 0), pm.parts, pm.device)
    model = pm.parts[0]
    with hooks, pytest.raises(ArenaMismatch, match="would overwrite"):
        kept = [next_token_loss(model(x[i : i + 1]), y[i : i + 1]) for i in range(2)]
        del kept
    longer = torch.zeros(1, SEQ * 2, dtype=torch.long)
    with ArenaHooks(plan_arena(pm, 0), pm.parts, pm.device), pytest.raises(ArenaMismatch, match="the trace had"):
        model(longer)


@pytest.mark.parametrize(
    "kwargs",
    [dict(pp=2, num_micro_batches=4, schedule="1f1b"), dict(dp=2, num_micro_batches=2)],
    ids=["pp2-1f1b", "dp2"],
)
def test_two_rank_parity_and_high_water_equal_to_the_plan(kwargs):
    result = check_parity(make_plan(LLAMA, seq_len=SEQ, **kwargs), steps=3, memory_plan="arena")
    assert result.max_loss_rel_err <= 1e-5, (result.losses, result.reference_losses)
    assert result.max_param_err <= 1e-5, result.worst_param
    report = result.report
    assert report["schema_version"] == "1.3"
    ranks = report["memory_plan"]["ranks"]
    assert len(ranks) == 2
    for entry, live in zip(ranks, report["measured"]["peak_memory_bytes_per_rank"]):
        assert entry["measured_high_water_bytes_per_step"] == [entry["planned_arena_bytes"]] * 3
        assert entry["planned_max_live_bytes"] <= entry["planned_arena_bytes"] <= entry["best_fit_bytes"]
        assert live == entry["planned_max_live_bytes"]  # the lifetimes the plan assumed are the run's
        assert entry["buffers"] > 0 and entry["by_reference_per_microbatch"] > 0


def test_cli_refuses_an_unknown_memory_plan_and_a_plan_it_cannot_place(tmp_path):
    runner = CliRunner()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(LLAMA, tp=2, seq_len=SEQ)))
    out = str(tmp_path / "r.json")
    r = runner.invoke(app, ["run", str(plan), "--memory-plan", "heap", "--out", out])
    assert r.exit_code == 2 and "--memory-plan must be one of none, arena (got 'heap')" in r.stderr
    r = runner.invoke(app, ["run", str(plan), "--memory-plan", "arena", "--out", out])
    assert r.exit_code == 2 and "not tp = 2" in r.stderr and "Traceback" not in r.stderr
