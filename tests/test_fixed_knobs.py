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
