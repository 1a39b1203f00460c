"""Bad input never crashes (issue 21, item 1): hypothesis generates malformed and hostile model
specs, cluster specs, Hugging Face configs, plan files, command-line values and token files
(`run --data`) for every entry point, run in-process through typer's CliRunner. Each must end
with exit 0/1 (a valid input) or exit 2 with one line on stderr (usage errors included); never
exit 3, never a traceback, never past the deadline. Token files go through the check `run` makes
before any rank starts (runtime.launch.check_inputs), one in ten through the CLI with the launch
stubbed, and must agree with an independent reading of the bytes (``_expected_dtype``).

The counts of generated inputs per entry point are printed in the terminal summary
(tests/conftest.py, ``pytest_terminal_summary``). CI runs ``EXAMPLES`` (2,000) per entry point;
AUTOPAR_HOSTILE_EXAMPLES sets another count.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import app

runner = CliRunner()
# typer's CliRunner rebuilds the click command from the app on every call (~12 ms); built once,
# a call costs 1-3 ms, which is what lets CI run 2,000 inputs per entry point.
COMMAND = typer.main.get_command(app)
EXAMPLES = int(os.environ.get("AUTOPAR_HOSTILE_EXAMPLES", "2000"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=10_000,  # ms per input: bounded time (a hang or an O(10**9) loop fails here); wide for shared CI cores
    derandomize=True,  # the same inputs on every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
WORK = Path(tempfile.mkdtemp(prefix="autopar-hostile-"))
DEBUG_MODEL = yaml.safe_load((Path(__file__).parents[1] / "models/presets/debug.yaml").read_text())
CLUSTER = {"gpu": "cpu", "num_nodes": 1, "gpus_per_node": 4}
HF = json.loads((Path(__file__).parent / "data/hf/gpt2/config.json").read_text())

# Values an attacker or a typo puts in a field.
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0, -1, 10**9, 10**15, 10**18, 10**300, 2**63, 2**64 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["4", "4.0", "1e400", "nan", "inf", ".inf", "-.inf", "\x00", "🙂"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _nested(depth: int) -> object:
    node: object = 1
    for _ in range(depth):
        node = {"a": node}
    return node


def _mutate(base: dict, data) -> dict:
    """``base`` with a few keys replaced by hostile values, deleted, or added."""
    doc = copy.deepcopy(base)
    keys = sorted(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["set", "set", "delete", "add", "nest"]))
        key = data.draw(st.sampled_from(keys))
        if how == "set":
            doc[key] = data.draw(HOSTILE)
        elif how == "delete":
            doc.pop(key, None)
        elif how == "add":
            doc[data.draw(st.text(min_size=1, max_size=8))] = data.draw(HOSTILE)
        else:
            doc[key] = _nested(data.draw(st.sampled_from([40, 100])))  # 3,000 deep: RAW_FILES
    return doc


RAW_FILES = st.sampled_from(
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2",
        b"null",
        b"[]",
        b"a: &a [1, 1]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: [*c, *c, *c, *c]\n",
        b"!!python/object/apply:os.system ['echo pwned']\n",
        b"name: !!python/name:os.system\n",
        b"[" * 5000 + b"]" * 5000,
        b"a:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 300)),
        b"x = " + b"[" * 3000 + b"]" * 3000,
        b"num_layers: .inf\n",
    ]
)


def _write(path: Path, raw: bytes) -> None:
    """Replace ``path``'s content in place. ``write_bytes`` truncates to 0 first, and on ext4 a
    file truncated to 0 and rewritten is flushed to disk at close (auto_da_alloc): 4.5 ms a
    write measured on CI's disk, 9 s of each 2,000-input test; writing then cutting to the new
    size costs 0.003 ms."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, len(raw))
    finally:
        os.close(fd)


def _serialise(doc: object, suffix: str) -> bytes:
    """``doc`` as ``suffix`` text: YAML, else JSON (TOML parsers read none of it: a parse error,
    which is an input too; hand-written TOML is in RAW_FILES)."""
    try:
        if suffix == ".yaml":
            return yaml.safe_dump(doc).encode()
    except (Exception, RecursionError):  # noqa: BLE001 - an unserialisable value: write it as JSON instead
        pass
    return json.dumps(doc).encode(errors="surrogatepass")


def _file(data, base: dict, name: str) -> Path:
    """A hostile file: a mutated ``base`` in YAML, JSON or TOML, or raw hostile bytes."""
    suffix = data.draw(st.sampled_from([".yaml", ".json", ".toml"]))
    path = WORK / f"{name}{suffix}"
    if data.draw(st.integers(0, 4)) == 0:
        raw = data.draw(RAW_FILES)
    else:
        raw = _serialise(_mutate(base, data), suffix)
        if data.draw(st.integers(0, 9)) == 0:
            raw = raw[: data.draw(st.integers(0, len(raw)))]  # truncated
    _write(path, raw)
    return path


def _check(args: list[str], counts: list[int]) -> None:
    counts[0] += 1
    r = runner.invoke(COMMAND, [str(a) for a in args])
    assert r.exit_code in (0, 1, 2), (args, r.exit_code, r.stderr[-2000:], r.exception)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, (args, r.stderr[-2000:])
    if r.exit_code == 2:  # usage errors too (a value of the wrong type): one line (planner/render/usage.py)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)


@pytest.fixture
def counted(request):
    """Counts the inputs a test generated; the terminal summary prints them (conftest.py)."""
    counts = [0]
    yield counts
    request.node.user_properties.append(("hostile_inputs", counts[0]))


@pytest.fixture(scope="module")
def plan_doc() -> dict:
    pytest.importorskip("torch")  # imported once here, not inside the first example's deadline
    out = WORK / "good-plan.json"
    r = runner.invoke(
        COMMAND, ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--dtype", "fp32", "--out", str(out)]
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(out.read_text())


@SETTINGS
@given(data=st.data())
def test_model_spec_files(data, counted):
    path = _file(data, {**DEBUG_MODEL, "name": "hostile"}, "model")
    _check(["estimate", "-m", path, "-c", "cpu:4", "-b", "16", "-s", "64", "--tp", "1", "--pp", "1"], counted)


@SETTINGS
@given(data=st.data())
def test_cluster_files(data, counted):
    base = {**CLUSTER, "gpu": {"extends": "cpu", "hbm_bytes": 2**36}, "inter_node_latency_us": 50.0}
    path = _file(data, base, "cluster")
    _check(["estimate", "-m", "debug", "-c", path, "-b", "16", "-s", "64", "--tp", "1", "--pp", "1"], counted)


@SETTINGS
@given(data=st.data())
def test_hf_configs(data, counted):
    doc = _mutate(HF, data)
    path = WORK / "hf-config.json"
    _write(path, data.draw(RAW_FILES) if data.draw(st.integers(0, 5)) == 0 else _serialise(doc, ".json"))
    _check(["import-hf", path], counted)


PLAN_COMMANDS = (
    ["export", "{p}", "--to", "megatron"],
    ["estimate", "--plan", "{p}"],
    ["validate", "{p}"],
    ["diff", "{p}", "{p}"],
    ["run", "{p}", "--nnodes", "2"],  # checks the plan fully, prints the torchrun line, starts no rank
)


def _plan_file(data, plan_doc: dict) -> Path:
    doc = copy.deepcopy(plan_doc)
    block = data.draw(st.sampled_from([None, "parallelism", "training", "stages", "sha256"]))
    if block == "parallelism":
        doc["parallelism"] = _mutate(doc["parallelism"], data)
    elif block == "training":
        doc["inputs"]["training"] = _mutate(doc["inputs"]["training"], data)
    elif block == "stages":
        doc["stages"][0] = _mutate(doc["stages"][0], data)
    elif block == "sha256":
        doc["inputs"] = _mutate(doc["inputs"], data)
    else:
        doc = _mutate(doc, data)
    path = WORK / "plan.json"
    _write(path, data.draw(RAW_FILES) if data.draw(st.integers(0, 5)) == 0 else _serialise(doc, ".json"))
    return path


@SETTINGS
@given(data=st.data())
def test_plan_files(data, counted, plan_doc):
    pytest.importorskip("torch")
    path = _plan_file(data, plan_doc)
    command = data.draw(st.sampled_from(PLAN_COMMANDS))
    _check([a.format(p=path) for a in command], counted)


CLI_VALUE = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "10" + "0" * 18, "", "abc", "1e-9", "-0"]),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@SETTINGS
@given(data=st.data())
def test_command_line_values(data, counted):
    # Every knob fixed but dp: a valid value plans in milliseconds, so the 2,000 inputs stay fast.
    fixed = ["--tp", "1", "--pp", "1", "--zero", "0", "--micro-batch", "1", "--recompute", "none"]
    args = ["plan", "-m", "debug", "-c", "cpu:4", "-b", "16", "-s", "64", "--time-limit", "2", *fixed]
    flag = data.draw(
        st.sampled_from(["-b", "-s", "--time-limit", "--gap", "--top-k", "-c", "--memory-headroom", "--dtype"])
    )
    value = data.draw(CLI_VALUE)
    if flag == "-c":
        value = f"cpu:{value}"
    _check([*args, flag, value, "--out", WORK / "cli-plan.json"], counted)


# Token files (`autopar run PLAN --data FILE`): the check every run makes before any rank starts
# (runtime.launch.check_inputs over runtime.tokens), called directly (0.1 ms) for every input and
# through the CLI for one in ten, where the launch itself is replaced so that no rank starts.
LLMC = {20240520: (1, "<u2"), 20240801: (7, "<u4")}  # llm.c data_common.py: magic -> (version, ids)
WIDTHS = {"uint16": "<u2", "uint32": "<u4", "int32": "<i4"}
BAD_IDS = st.sampled_from([256, 257, 65535, 2**31 - 1, -1, -(2**31)])


def _expected_dtype(raw: bytes | None, flag: str | None, vocab: int, seq: int) -> str | None:
    """The id type a trainable file is read as, else None: llm.c's layout when the file opens with
    one of its magics (version and count must agree with the size), raw ids of the flag's width
    (uint16 for this 256-id vocabulary) otherwise; one sequence + 1 ids, each within the vocabulary."""
    if raw is None or (flag is not None and flag not in WIDTHS):
        return None
    header = np.frombuffer(raw[:12], "<i4") if len(raw) >= 1024 else np.zeros(3, "<i4")
    if int(header[0]) in LLMC:
        version, width = LLMC[int(header[0])]
        name = {"<u2": "uint16", "<u4": "uint32"}[width]
        if header[1] != version or len(raw) != 1024 + int(header[2]) * int(width[-1]) or flag not in (None, name):
            return None
        body = raw[1024:]
    else:
        name = flag or "uint16"
        width, body = WIDTHS[name], raw
        if len(body) % int(width[-1]):
            return None
    ids = np.frombuffer(body, width).astype(np.int64)
    return name if len(ids) >= seq + 1 and ids.min() >= 0 and ids.max() < vocab else None


# One draw per token file (a draw costs ~0.25 ms of hypothesis bookkeeping): kind, seed, length,
# where a hostile id goes (None: nowhere) and which, id width, llm.c magic, version, count error,
# bytes cut from the end.
TOKEN_RECIPE = st.tuples(
    st.sampled_from(["ids"] * 5 + ["llmc", "llmc", "bytes", "text"]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 300),
    st.one_of(st.none(), st.none(), st.none(), st.floats(0, 1, exclude_max=True)),
    BAD_IDS,
    st.sampled_from(["<u2"] * 4 + ["<u4", "<i4"]),
    st.sampled_from(sorted(LLMC)),
    st.booleans(),
    st.sampled_from([0, 0, 0, 1, -1]),
    st.sampled_from([0] * 6 + [1, 3]),
)
NOT_IDS = st.one_of(st.binary(max_size=400), st.sampled_from([b"", b"hello world\n" * 20, b"1 2 3 4\n" * 40]))


def _token_bytes(data, vocab: int) -> bytes:
    """Ids of some width (mostly within the vocabulary, a hostile one now and then), raw or
    behind an llm.c header (right, or with a wrong version or count), maybe cut mid-id; or bytes
    that are no ids at all."""
    kind, seed, n, where, bad, width, magic, right_version, count_error, cut = data.draw(TOKEN_RECIPE)
    if kind in ("bytes", "text"):
        return data.draw(NOT_IDS)
    ids = np.random.default_rng(seed).integers(0, vocab, n, dtype=np.int64)
    if n and where is not None:
        ids[int(where * n)] = bad
    if kind == "llmc":
        version, width = LLMC[magic]
        header = np.zeros(256, "<i4")
        header[:3] = magic, version if right_version else 3, n + count_error
        body = header.tobytes() + ids.astype(width).tobytes()
    else:
        body = ids.astype(width).tobytes()  # an id too wide wraps, as a writer of the wrong width would
    return body[: len(body) - cut] if cut else body


@pytest.fixture(scope="module")
def stubbed_launch(plan_doc):
    """The runtime's launch with the ranks replaced by a stub that reports what it was given:
    an input the checks pass reaches it (exit 0) and starts nothing. With the plan, loaded."""
    from runtime import launch
    from runtime.plan_io import load_plan

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "_launch", lambda plan, args, *rest: {"ranks_started": 0, "data_dtype": args["data_dtype"]})
        yield launch, load_plan(WORK / "good-plan.json")


TOKEN_PATHS = st.sampled_from(["file"] * 10 + ["missing", "directory", "link-loop", "under-a-file", "fifo"])


def _token_path(data, vocab: int) -> tuple[Path, bytes | None]:
    """A token file (its bytes), or a path that is none: missing, a directory, a link to itself,
    a path under a file, a FIFO."""
    where = data.draw(TOKEN_PATHS)
    if where == "file":
        raw = _token_bytes(data, vocab)
        _write(WORK / "tokens.bin", raw)
        return WORK / "tokens.bin", raw
    path = {"missing": WORK / "no-such.bin", "directory": WORK, "link-loop": WORK / "loop.bin",
            "under-a-file": WORK / "good-plan.json" / "t.bin", "fifo": WORK / "fifo.bin"}[where]
    if where == "link-loop" and not path.is_symlink():
        path.symlink_to(path)
    if where == "fifo" and not path.exists():
        os.mkfifo(path)  # reading one would block: refused by its type
    return path, None


# --data-dtype (None: absent) and whether the input goes through the CLI (one in ten).
TOKEN_FLAGS = st.tuples(
    st.sampled_from([None] * 6 + ["uint16", "uint32", "int32", "float32", ""]),
    st.sampled_from([True] + [False] * 9),
)


@SETTINGS
@given(data=st.data())
def test_token_files(data, counted, plan_doc, stubbed_launch):
    """Every file the checks pass is one a rank can train on (the id type it is read as); every
    other ends in one line naming the file (or --data-dtype): exit 2 from the CLI."""
    from runtime.plan_io import PlanError

    launch, plan = stubbed_launch
    vocab, seq = plan["inputs"]["model"]["vocab_size"], plan["inputs"]["training"]["seq_len"]
    path, raw = _token_path(data, vocab)
    flag, via_cli = data.draw(TOKEN_FLAGS)
    want = _expected_dtype(raw, flag, vocab, seq)
    counted[0] += 1
    if via_cli:
        extra = [] if flag is None else ["--data-dtype", flag]
        args = ["run", WORK / "good-plan.json", "--steps", "1", "--data", path, *extra, "--out", WORK / "r.json"]
        r = runner.invoke(COMMAND, [str(a) for a in [*args, "-f", "json"]])
        assert r.exit_code == (2 if want is None else 0), (path, flag, raw and raw[:64], r.stderr, r.exception)
        lines = r.stderr.strip().splitlines()
        if want is None:
            assert len(lines) == 1 and lines[0].startswith("error:") and r.stdout == "", r.stderr
        else:
            assert json.loads(r.stdout) == {"ranks_started": 0, "data_dtype": want}, r.stdout
        return
    try:
        got = launch.check_inputs(plan, str(path), flag, None)
    except PlanError as exc:  # what the CLI prints after "error:" and exits 2 with
        msg = str(exc)
        assert want is None, (path, flag, raw and raw[:64], msg)
        assert "\n" not in msg and msg.startswith((f"token file {path}", "--data-dtype")), msg  # names the field
        return
    assert got == want, (path, flag, raw and raw[:64], got, want)
