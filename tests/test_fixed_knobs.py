"""A knob the user fixes holds in the plan and in the advice when nothing fits (issue 19, item 1):
the polish steps after the search (least recompute, deeper interleaving) stay within the allowed
recompute options."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _plan(*args: str) -> dict:
    r = runner.invoke(app, ["plan", *args, "--time-limit", "20", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _recompute(doc: dict) -> set[str]:
    return {o for s in doc["plan"]["stages"] for o in s["recompute"]} if "plan" in doc else {
        o for s in doc["stages"] for o in s["recompute"]
    }


@pytest.mark.parametrize(
    "args",
    [
        ("-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "64", "-s", "8192"),
        ("-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--zero", "3"),
        ("-m", "llama3-70b", "-c", "h100-sxm-80gb:64", "-b", "64", "-s", "4096", "--pp", "4", "--tp", "8"),
    ],
)
def test_fixed_recompute_holds_in_every_block(args):
    doc = _plan(*args, "--recompute", "full")
    assert _recompute(doc) == {"full"}
    doc = _plan(*args, "--recompute", "selective,full")
    assert "none" not in _recompute(doc)


def test_nothing_fits_advice_keeps_the_fixed_recompute():
    r = runner.invoke(app, ["plan", "-m", "llama3-70b", "-c", "h100-sxm-80gb:8", "-b", "16", "-s", "4096",
                            "--recompute", "none", "--time-limit", "10"])
    assert r.exit_code == 1
    assert "none recompute" in r.stderr and "full recompute" not in r.stderr


def test_error_messages_keep_their_brackets():
    """Install hints such as autopar[plots] are printed as written, not eaten as rich markup."""
    r = runner.invoke(app, ["estimate", "-m", "spam[plots]", "-c", "h100-sxm-80gb:8", "-b", "8", "-s", "128"])
    assert r.exit_code == 2 and "spam[plots]" in r.stderr


def test_warnings_for_tp_across_nodes_beyond_kv_heads_and_too_long_sequences():
    r = runner.invoke(app, ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:16", "-b", "16", "-s", "16384",
                            "--tp", "16"])
    assert "tp 16 spans 2 nodes" in r.stderr and "tp 16 > 8 KV heads" in r.stderr
    assert "seq_len 16384 > the model's max_seq_len 8192" in r.stderr
    ok = runner.invoke(app, ["estimate", "-m", "llama3-8b", "-c", "h100-sxm-80gb:8", "-b", "8", "-s", "4096",
                             "--tp", "8"])
    assert "warning" not in ok.stderr


def test_sweep_has_json_like_every_command(tmp_path):
    args = ["sweep", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--vary", "tp=1,2",
            "--time-limit", "5"]
    r = runner.invoke(app, args + ["--format", "json", "--out", str(tmp_path / "rows.json")])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["point"]["tp"] for row in rows] == [1, 2]
    assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_sweep_prices_each_gpu_and_keeps_one_front_per_model():
    from planner.commands.sweep import finish_rows, parse_prices

    assert parse_prices("2.5") == {"*": 2.5}
    assert parse_prices("h100-sxm-80gb=2.5, b200-sxm-180gb=4.2") == {"h100-sxm-80gb": 2.5, "b200-sxm-180gb": 4.2}

    def row(model, gpu, gpus, tps):
        return {"model": model, "gpu": gpu, "num_gpus": gpus, "tokens_per_s": tps, "feasible": True,
                "time_to_train_hours": None, "gpu_hours": None, "cost_usd": None}

    rows = [row("a", "h100-sxm-80gb", 8, 100.0), row("a", "b200-sxm-180gb", 8, 180.0),
            row("b", "h100-sxm-80gb", 8, 10.0)]
    finish_rows(rows, 1e6, "h100-sxm-80gb=2.0,b200-sxm-180gb=5.0")
    assert rows[1]["cost_usd"] == pytest.approx(1e6 / 180 / 3600 * 8 * 5.0)
    # model a: b200 is faster but dearer (5/180 > 2/100 per token): both on a's front
    assert rows[0]["pareto"] and rows[1]["pareto"]
    # model b is slower than every row of a, yet on its own front
    assert rows[2]["pareto"]
    with pytest.raises(Exception, match="no price for b200-sxm-180gb"):
        finish_rows([row("a", "b200-sxm-180gb", 8, 1.0)], 1e6, "h100-sxm-80gb=2.0")


def test_diff_merges_steps_that_offset_each_other():
    from planner.commands.diff import FIGURES, Step, merge_offsetting

    def step(name, dt):
        return Step([name], [], {f: (dt if f == "step_time_s" else 0.0) for f in FIGURES}, {}, [])

    merged = merge_offsetting([step("parallelism.tp", 10.0), step("parallelism.micro_batch_size", -9.8),
                               step("parallelism.zero_stage", 0.5)], 20.0)
    assert [m.knobs for m in merged] == [["parallelism.tp", "parallelism.micro_batch_size"], ["parallelism.zero_stage"]]
    assert merged[0].delta["step_time_s"] == pytest.approx(0.2) and "offset each other" in merged[0].merged_because[0]
    kept = merge_offsetting([step("parallelism.tp", 10.0), step("parallelism.pp", -4.0)], 20.0)
    assert len(kept) == 2  # a real trade-off, not an artefact of the order
