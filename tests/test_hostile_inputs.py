"""Bad input never crashes (issue 21, item 1): hypothesis generates malformed and hostile model
specs, cluster specs, Hugging Face configs, plan files and command-line values for every entry
point, run in-process through typer's CliRunner. Each must end with exit 0/1 (a valid input) or
exit 2 with one line on stderr; never exit 3, never a traceback, never past the deadline.

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
    path.write_bytes(raw)
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
    path.write_bytes(data.draw(RAW_FILES) if data.draw(st.integers(0, 5)) == 0 else _serialise(doc, ".json"))
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
    path.write_bytes(data.draw(RAW_FILES) if data.draw(st.integers(0, 5)) == 0 else _serialise(doc, ".json"))
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
