"""Checkpoints (torch.distributed.checkpoint) that resume under another plan (issue 20, item 2).

Plan A (dp 4) trains 6 steps and saves after step 3; resumed under plan B (tp 2 x pp 2) and plan C
(dp 2 x ZeRO-3 x tp 2, and dp 2 x ZeRO-3 x cp 2; a MoE model under ep 2 in its own test), steps 4-6 reproduce A's losses and final parameters within 1e-5 (fp32
reductions in another order: ~1e-7). The model has tied embeddings, so B's head copy must come
from a checkpoint written with one shared tensor. AdamW state round-trips through ZeRO-1's
per-FQN form; a checkpoint of another model or batch is refused before any rank starts."""

from __future__ import annotations

import json

from conftest import run_python

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from cli import app  # noqa: E402
from models.load import load_model  # noqa: E402
from runtime.checkpoint_files import check_resume, checkpoint_options, step_dir, write_meta  # noqa: E402
from runtime.launch import print_torchrun_command, run  # noqa: E402
from runtime.plan_io import PlanError, make_plan  # noqa: E402
from runtime.recipe import SGD_PARITY, Recipe  # noqa: E402
from runtime.train import run_reference  # noqa: E402

GPT = load_model("debug-gpt", {"dropout": 0.0})  # tied embeddings, learned positions, bias
LLAMA = load_model("debug")
SEQ = 16
PLAN_A = make_plan(GPT, dp=4, num_micro_batches=2, seq_len=SEQ)  # global batch 8 everywhere
PLAN_B = make_plan(GPT, tp=2, pp=2, num_micro_batches=8, schedule="1f1b", seq_len=SEQ)
PLAN_C = make_plan(GPT, dp=2, zero_stage=3, tp=2, num_micro_batches=4, seq_len=SEQ)
PLAN_C_CP = make_plan(GPT, dp=2, zero_stage=3, cp=2, num_micro_batches=4, seq_len=SEQ)
MOE = load_model("debug-moe")  # routed experts in layers 1-3


def _train(plan, steps, tmp, name, **kwargs) -> tuple[list[dict], dict]:
    """SGD unless a test names a recipe: AdamW's normalised steps move parameters whose gradient is
    rounding noise (a key bias's is zero in exact arithmetic) by ~lr, which would hide resharding
    errors the 1e-5 comparison must catch."""
    params = tmp / f"{name}.pt"
    kwargs.setdefault("recipe", SGD_PARITY)
    report = run(plan, steps, out=tmp / f"{name}.json", save_params=params, **kwargs)
    return report["steps"], torch.load(params, weights_only=True)


def _param_err(got: dict, want: dict) -> float:
    """max |a - b| / (1 + |b|) over every element; a head's copy of a tied embedding is compared
    with the embedding (one tensor where the model is not split)."""
    worst = 0.0
    for name, value in got.items():
        ref = want.get(name, want["tok_embeddings.weight"] if name == "output.weight" else None)
        assert ref is not None, name
        worst = max(worst, ((value - ref).abs() / (1 + ref.abs())).max().item())
    return worst


def _loss_err(got: list[dict], want: list[dict]) -> float:
    by_step = {s["step"]: s["loss"] for s in want}
    return max(abs(s["loss"] - by_step[s["step"]]) / abs(by_step[s["step"]]) for s in got)


def test_resume_under_another_plan_continues_the_losses(tmp_path, capsys) -> None:
    ckpt = tmp_path / "ckpt"
    steps_a, params_a = _train(PLAN_A, 6, tmp_path, "a", checkpoint_dir=ckpt, checkpoint_every=3)
    ref = run_reference(PLAN_A, 6, SGD_PARITY)  # the uninterrupted run is itself right
    assert max(abs(s["loss"] - r) / r for s, r in zip(steps_a, ref["losses"])) <= 1e-5
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000003", "step-00000006"]
    saved = json.loads((ckpt / "step-00000003" / "plan.json").read_text())
    assert saved["parallelism"] == PLAN_A["parallelism"]

    gathered = {}
    for name, plan in (("b", PLAN_B), ("c", PLAN_C), ("c-cp", PLAN_C_CP)):
        steps, params = gathered[name] = _train(plan, 6, tmp_path, name, resume=ckpt / "step-00000003")
        assert [s["step"] for s in steps] == [3, 4, 5]
        assert _loss_err(steps, steps_a) <= 1e-5, (name, steps, steps_a)
        assert _param_err(params, params_a) <= 1e-5, name
        assert "under a different plan: dp 4 -> " in capsys.readouterr().err
    assert "output.weight" in gathered["b"][1]  # pipeline B's head copy of the tied embedding was compared
    report_b = json.loads((tmp_path / "b.json").read_text())
    assert report_b["resumed_from"]["step"] == 3 and "pp 1 -> 2" in report_b["resumed_from"]["plan_changes"]

    # The same checkpoint under another model or another global batch: refused, nothing started.
    with pytest.raises(PlanError, match=r"written for another model \("):
        run(make_plan(LLAMA, dp=4, num_micro_batches=2, seq_len=SEQ), 6, out=tmp_path / "x.json", resume=ckpt, recipe=SGD_PARITY)
    with pytest.raises(PlanError, match="global_batch_size 8 != 4"):
        run(make_plan(GPT, dp=4, seq_len=SEQ), 6, out=tmp_path / "x.json", resume=ckpt, recipe=SGD_PARITY)
    assert not (tmp_path / "x.json").exists()


def test_resume_into_and_out_of_expert_parallelism(tmp_path) -> None:
    """Under ep each rank holds only its experts, under their global names: a dp 4 checkpoint
    resumes under dp 2 x ZeRO-3 x ep 2 (AdamW state included), and that plan's own checkpoint
    resumes under plain dp 4 again, every expert gathered from the ranks that saved it."""
    a = make_plan(MOE, dp=4, num_micro_batches=2, seq_len=SEQ)
    ep = make_plan(MOE, dp=4, ep=2, zero_stage=3, num_micro_batches=2, seq_len=SEQ)
    adamw = {"recipe": Recipe(optimizer="adamw", lr=1e-2)}
    ckpt, ckpt_ep = tmp_path / "ckpt", tmp_path / "ckpt-ep"
    steps_a, params_a = _train(a, 5, tmp_path, "a", checkpoint_dir=ckpt, checkpoint_every=2, **adamw)
    steps_e, params_e = _train(ep, 5, tmp_path, "e", resume=ckpt / "step-00000002", checkpoint_dir=ckpt_ep,
                               checkpoint_every=3, **adamw)
    assert _loss_err(steps_e, steps_a) <= 1e-5 and _param_err(params_e, params_a) <= 1e-5
    steps_b, params_b = _train(a, 5, tmp_path, "b", resume=ckpt_ep / "step-00000003", **adamw)
    assert [s["step"] for s in steps_b] == [3, 4]
    assert _loss_err(steps_b, steps_a) <= 1e-5 and _param_err(params_b, params_a) <= 1e-5


def test_adamw_state_resumes_exactly_and_leaves_zero_one(tmp_path) -> None:
    """AdamW (step, exp_avg, exp_avg_sq) under ZeRO-1, where each dp rank saves the state of the
    parameters it owns: resumed under the same plan the run is bitwise the uninterrupted one;
    on 4 ranks under tp 2 x interleaved pp 2 (state as DTensor shards, two chunks per rank) within
    1e-5. Without the state the resumed losses move by ~2e-3 (measured by dropping it on load)."""
    zero1 = make_plan(LLAMA, dp=2, zero_stage=1, num_micro_batches=2, seq_len=SEQ)
    tp = make_plan(LLAMA, tp=2, pp=2, num_micro_batches=4, schedule="interleaved", virtual_stages=2, seq_len=SEQ)
    adamw = {"recipe": Recipe(optimizer="adamw", lr=1e-2)}
    ckpt = tmp_path / "ckpt"
    steps_x, params_x = _train(zero1, 4, tmp_path, "x", checkpoint_dir=ckpt, checkpoint_every=2, **adamw)
    steps_y, params_y = _train(zero1, 4, tmp_path, "y", resume=ckpt / "step-00000002", **adamw)
    assert [s["loss"] for s in steps_y] == [s["loss"] for s in steps_x[2:]]
    assert all(torch.equal(params_y[k], params_x[k]) for k in params_x)
    steps_z, params_z = _train(tp, 4, tmp_path, "z", resume=ckpt / "step-00000002", **adamw)
    assert _loss_err(steps_z, steps_x) <= 1e-5 and _param_err(params_z, params_x) <= 1e-5
    with pytest.raises(PlanError, match="holds AdamW state; this run uses SGD"):
        run(tp, 5, out=tmp_path / "w.json", resume=ckpt, recipe=SGD_PARITY)  # the latest: step 4


def _fake_checkpoint(root, plan, step: int, complete: bool = True):
    """A checkpoint directory's metadata only: what resuming checks before any rank starts."""
    directory = step_dir(root, step)
    directory.mkdir(parents=True)
    if complete:
        write_meta(directory, plan, step, 2, "SGD", None)
    return directory


def test_resume_finds_the_latest_complete_checkpoint_and_checks_the_steps(tmp_path) -> None:
    plan = make_plan(LLAMA, dp=2, seq_len=SEQ)
    _fake_checkpoint(tmp_path, plan, 2)
    latest = _fake_checkpoint(tmp_path, plan, 10)
    _fake_checkpoint(tmp_path, plan, 12, complete=False)  # a save cut short
    point = check_resume(tmp_path, plan, 20)
    assert point.path == str(latest) and point.step == 10 and point.same_layout and not point.changes
    assert "under the same plan" in point.describe()
    other = check_resume(tmp_path, make_plan(LLAMA, tp=2, num_micro_batches=2, seq_len=SEQ), 20)
    assert not other.same_layout and "tp 1 -> 2" in other.changes
    with pytest.raises(PlanError, match="at step 10: --steps 10 .* leaves nothing to run"):
        check_resume(tmp_path, plan, 10)
    with pytest.raises(PlanError, match="no complete checkpoint"):
        check_resume(step_dir(tmp_path, 12), plan, 20)
    with pytest.raises(PlanError, match="--checkpoint-every needs --checkpoint-dir"):
        checkpoint_options(plan, 5, every_steps=2)


def test_cli_saves_and_resumes(tmp_path) -> None:
    """The flags end to end on one rank: saves after steps 1 and 2, resumes from the latest."""
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps(make_plan(LLAMA, seq_len=SEQ)))
    base = ["run", str(plan), "--out", str(tmp_path / "r.json"), "--format", "json"]
    r = CliRunner().invoke(app, [*base, "--steps", "2", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "1"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000001", "step-00000002"]
    r = CliRunner().invoke(app, [*base, "--steps", "3", "--resume", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["step"] for s in report["steps"]] == [2] and report["resumed_from"]["step"] == 2
    assert "at step 2 under the same plan" in r.stderr
    command = print_torchrun_command(make_plan(LLAMA, dp=2, seq_len=SEQ), 2, "h0:29500", checkpoint_dir="ck",
                                     checkpoint_every=50, resume="ck")
    assert command.endswith("--checkpoint-dir ck --checkpoint-every 50 --resume ck")


def test_cli_refuses_another_model_in_one_line(tmp_path) -> None:
    _fake_checkpoint(tmp_path / "ckpt", make_plan(GPT, dp=2, seq_len=SEQ), 3)
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps(make_plan(LLAMA, dp=2, seq_len=SEQ)))
    r = CliRunner().invoke(app, ["run", str(plan), "--steps", "6", "--resume", str(tmp_path / "ckpt")])
    assert r.exit_code == 2, r.stdout + r.stderr
    assert "was written for another model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_same_plan_resume_gives_each_rank_its_generator_back(tmp_path) -> None:
    """Dropout masks come from each rank's torch generator: under the same plan every rank gets
    its saved generator back, so the resumed step is bitwise the uninterrupted run's (with the
    generators as initialised, the resumed step would draw step 0's masks again)."""
    plan = make_plan(LLAMA.model_copy(update={"dropout": 0.2}), dp=2, seq_len=SEQ)
    ckpt = tmp_path / "ckpt"
    steps_x, params_x = _train(plan, 3, tmp_path, "x", checkpoint_dir=ckpt, checkpoint_every=2)
    steps_y, params_y = _train(plan, 3, tmp_path, "y", resume=ckpt / "step-00000002")
    assert [s["loss"] for s in steps_y] == [steps_x[2]["loss"]]
    assert all(torch.equal(params_y[k], params_x[k]) for k in params_x)


SCHEDULE_ROUND_TRIP = """
import tempfile, torch, torch.distributed as dist
from models.load import load_model
from runtime.checkpoint import load_checkpoint, save_checkpoint
from runtime.checkpoint_files import check_resume
from runtime.model import build_model, next_token_loss
from runtime.optim import build_scheduler
from runtime.parallelize import apply_plan
from runtime.plan_io import make_plan
from runtime.recipe import Recipe
from runtime.train import TokenSource

tmp = tempfile.mkdtemp()
dist.init_process_group("gloo", store=dist.FileStore(tmp + "/store", 1), rank=0, world_size=1)
plan = make_plan(load_model("debug"), seq_len=16)

def build():
    pm = apply_plan(build_model(load_model("debug"), 0), plan)
    recipe = Recipe(optimizer="adamw", lr=1e-2, warmup_steps=2)
    opt = pm.build_optimizer(recipe)
    return pm, opt, build_scheduler(opt, recipe, 10)

pm, opt, sched = build()
for step in range(3):
    batch = TokenSource(plan).batch(step)
    next_token_loss(pm.parts[0](batch[:, :-1]), batch[:, 1:]).backward()
    opt.step(); opt.zero_grad(); sched.step()
save_checkpoint(tmp + "/ckpt", 3, pm, opt, sched)
pm2, opt2, sched2 = build()
assert load_checkpoint(check_resume(tmp + "/ckpt", plan, 4), pm2, opt2, sched2) == 3
for a, b in ((sched, sched2), (opt, opt2)):
    assert a.state_dict().keys() == b.state_dict().keys()
assert sched2.each[0].last_epoch == sched.each[0].last_epoch == 3
assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] != 1e-2
p, p2 = pm.parts[0].layers["0"].attention.wq.weight, pm2.parts[0].layers["0"].attention.wq.weight
assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"]) and torch.equal(p, p2)
dist.destroy_process_group()
print("ok", opt2.param_groups[0]["lr"])
"""


def test_a_learning_rate_schedule_round_trips(tmp_path) -> None:
    """The run's schedule (runtime.optim: warm-up + cosine over LambdaLR) and AdamW,
    saved after 3 steps and loaded into fresh objects, continue with the same lr and moments. In a
    fresh interpreter: it opens a one-rank process group."""
    out = run_python(SCHEDULE_ROUND_TRIP)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
