"""Token files (issue 20, item 5): raw uint16/uint32/int32 ids or llm.c's ``.bin`` with its 256-int32
header, memory-mapped with their id type; ids above 65,535 reach the model (the run's first loss
equals one computed here from the file's ids with numpy, not through the runtime's reader); ids
outside the vocabulary and damaged headers exit 2 with one line before any rank starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from runtime.tokens import LLMC_HEADER_INTS, check_token_file, open_token_file

torch = pytest.importorskip("torch")
runner = CliRunner()
VOCAB, SEQ, BATCH = 70_000, 16, 2


def _llmc(path, ids: np.ndarray, magic: int, version: int, dtype: str, count: int | None = None) -> None:
    """What llm.c's dev/data/data_common.py write_datafile writes."""
    header = np.zeros(LLMC_HEADER_INTS, dtype=np.int32)
    header[:3] = magic, version, len(ids) if count is None else count
    path.write_bytes(header.tobytes() + ids.astype(dtype).tobytes())


def _ids(n: int = 600) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 6007 + 65_536) % VOCAB  # most ids above 65,535


def _plan(tmp_path, vocab: int = VOCAB):
    path = tmp_path / "p.json"
    r = runner.invoke(app, ["plan", "-m", "debug", "-c", "cpu:1", "-b", str(BATCH), "-s", str(SEQ), "--dtype",
                            "fp32", "--set", f"model.vocab_size={vocab}", "--out", str(path)])
    assert r.exit_code == 0, r.stderr
    return path


def _first_loss_from(ids: np.ndarray, plan_path) -> float:
    """Step 0's loss from the first BATCH windows of SEQ + 1 ids, outside the runtime's reader."""
    from runtime.model import build_model, next_token_loss
    from runtime.plan_io import load_plan, model_spec

    plan = load_plan(plan_path)
    model = build_model(model_spec(plan), plan["inputs"]["training"]["seed"])
    batch = torch.from_numpy(ids[: BATCH * (SEQ + 1)].reshape(BATCH, SEQ + 1).astype(np.int64))
    with torch.no_grad():
        return next_token_loss(model(batch[:, :-1]), batch[:, 1:]).item()


@pytest.mark.parametrize("layout", ["int32", "uint32", "llmc-uint32"])
def test_ids_above_65535_reach_the_model(tmp_path, layout):
    plan, ids, data = _plan(tmp_path), _ids(), tmp_path / "t.bin"
    if layout == "llmc-uint32":
        _llmc(data, ids, 20240801, 7, "uint32")
        extra = []
    else:
        ids.astype(layout).tofile(data)
        extra = ["--data-dtype", layout]
    metrics = tmp_path / "m.jsonl"
    r = runner.invoke(app, ["run", str(plan), "--steps", "1", "--data", str(data), *extra,
                            "--metrics", str(metrics), "--out", str(tmp_path / "r.json"), "--lr", "0.1"])
    assert r.exit_code == 0, r.stdout + r.stderr
    step = json.loads((tmp_path / "r.json").read_text())["steps"][0]
    loss = step["loss"]
    assert loss == pytest.approx(_first_loss_from(ids, plan), rel=1e-6)
    assert loss != pytest.approx(_first_loss_from(ids % 65_536, plan), rel=1e-3), "truncated ids give another loss"
    line = json.loads(metrics.read_text().splitlines()[0])
    assert line["step"] == 0 and line["loss"] == loss and line["lr"] == 0.1 and line["grad_norm"] == step["grad_norm"] > 0
    assert line["tokens"] == BATCH * SEQ and line["tokens_per_s"] > 0 and len(line["peak_memory_bytes_per_rank"]) == 1


def test_llmc_headers_are_read_as_llmc_writes_them(tmp_path):
    plan = json.loads(_plan(tmp_path, vocab=50_257).read_text())
    ids = np.arange(100, dtype=np.int64) % 50_257
    _llmc(tmp_path / "a.bin", ids, 20240520, 1, "uint16")
    tf = check_token_file(str(tmp_path / "a.bin"), plan)
    assert (tf.layout, tf.dtype, tf.offset, tf.count) == ("llmc", "uint16", 1024, 100)
    assert np.array_equal(np.asarray(tf.ids()), ids)
    _llmc(tmp_path / "b.bin", ids, 20240520, 1, "uint16", count=99)
    with pytest.raises(ValueError, match=r"header says 99 uint16 ids, so 1024 \+ 99 \* 2 = 1222 bytes; the file has 1224"):
        open_token_file(str(tmp_path / "b.bin"), 50_257)
    _llmc(tmp_path / "c.bin", ids, 20240801, 1, "uint32")
    with pytest.raises(ValueError, match="llm.c magic 20240801 with version 1; llm.c writes 7"):
        open_token_file(str(tmp_path / "c.bin"), 50_257)
    with pytest.raises(ValueError, match="its llm.c header says uint16 ids, --data-dtype int32"):
        open_token_file(str(tmp_path / "a.bin"), 50_257, "int32")


def test_ids_at_or_above_the_vocabulary_exit_2_with_one_line(tmp_path):
    plan = _plan(tmp_path, vocab=70_000)
    _llmc(tmp_path / "t.bin", np.full(100, 70_000), 20240801, 7, "uint32")
    r = runner.invoke(app, ["run", str(plan), "--steps", "1", "--data", str(tmp_path / "t.bin")])
    assert r.exit_code == 2, r.stdout + r.stderr
    assert "read as uint32 holds id 70000, outside the model's vocabulary of 70000" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
