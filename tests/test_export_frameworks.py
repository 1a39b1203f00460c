"""Every export of a matrix of plans loaded by the framework itself: torchtitan 0.3's
``ConfigManager`` and ``ParallelDims`` (0.2.2's too when ``AUTOPAR_TORCHTITAN_0_2`` names a
``pip install --target`` folder of it), and DeepSpeed's ``DeepSpeedConfig`` with its batch check
under the launch the export's notes describe. Each compares every parallelism field, the batch
and the recompute setting with the plan, and checks the export writes no key the framework
ignores. Megatron-LM's parser does not install on Python 3.11: tests/test_export_megatron.py."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from hardware.cluster import load_cluster
from models.load import load_model
from planner.config import Parallel, Training
from planner.export import export_plan
from test_export import write_plan

MIXED = ("none",) * 51 + ("selective",) * 28 + ("full",)  # issue 19: a mix torchtitan turned into full
# id -> (model, cluster, training, plan): dense, MoE with ep (and tp, pp), cp, fp8, pipeline with mixed
# recompute, HSDP, DDP, uneven GPipe; "searched" is planned by `autopar plan` (plans fixture).
MATRIX = {
    "dense-fsdp-tp": ("llama3-8b", "h100-sxm-80gb:16", Training(128, 8192),
                      Parallel(dp=4, tp=4, zero=3, sequence_parallel=True, recompute="selective")),
    "moe-ep": ("qwen3-30b-a3b", "h100-sxm-80gb:16", Training(256, 4096),
               Parallel(dp=16, ep=8, zero=3, micro_batch=2, recompute="full")),
    "moe-ep-tp": ("mixtral-8x7b", "h100-sxm-80gb:32", Training(256, 4096),
                  Parallel(dp=8, tp=4, ep=8, zero=3, sequence_parallel=True, recompute="full")),
    "moe-pp-ep": ("deepseek-v3", "h100-sxm-80gb:64", Training(256, 4096),
                  Parallel(dp=16, pp=4, ep=8, zero=1, recompute="full", stage_layers=(15, 16, 16, 14))),
    "cp": ("llama3-8b", "h100-sxm-80gb:16", Training(32, 32768),
           Parallel(dp=2, tp=2, cp=4, zero=3, sequence_parallel=True, recompute="full")),
    "fp8": ("llama3-70b", "h100-sxm-80gb:64", Training(512, 4096, dtype="fp8"),
            Parallel(dp=8, tp=8, zero=3, sequence_parallel=True, recompute="full")),
    "pp-mixed-recompute": ("llama3-70b", "h100-sxm-80gb:64", Training(1024, 4096),
                           Parallel(dp=2, tp=8, pp=4, vpp=2, schedule="interleaved", zero=1,
                                    sequence_parallel=True, recompute=MIXED)),
    "hsdp": ("llama3-8b", "h100-sxm-80gb:32", Training(256, 8192), Parallel(dp=32, dp_replicate=4, zero=3, micro_batch=2)),
    "ddp-1b": ("llama3.2-1b", "h100-sxm-80gb:8", Training(64, 4096), Parallel(dp=8, micro_batch=4)),
    "gpipe-uneven": ("llama3-8b", "h100-sxm-80gb:8", Training(64, 4096),
                     Parallel(dp=2, pp=4, schedule="gpipe", zero=1, stage_layers=(7, 9, 9, 7), recompute="full")),
}
CASES = [*MATRIX, "searched"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """case -> (plan file, its JSON)."""
    root, out = tmp_path_factory.mktemp("matrix"), {}
    for case, (model, cluster, train, par) in MATRIX.items():
        out[case] = write_plan(root / f"{case}.json", load_model(model), load_cluster(cluster), train, par)
    searched = root / "searched.json"
    r = CliRunner().invoke(app, ["plan", "--model", "llama3-8b", "--cluster", "h100-sxm-80gb:8", "--global-batch",
                                 "64", "--seq-len", "4096", "--stack", "torchtitan", "--time-limit", "5",
                                 "--out", str(searched)])
    assert r.exit_code == 0, r.stderr
    out["searched"] = searched
    return {case: (path, json.loads(path.read_text())) for case, path in out.items()}


def facts(doc: dict) -> dict:
    """What the plan file says, in the frameworks' terms."""
    p, t = doc["parallelism"], doc["inputs"]["training"]
    blocks = [o for s in doc["stages"] for o in s["recompute"]]
    as_run = blocks[0] if len(set(blocks)) == 1 else ("full" if "full" in blocks else "selective")
    world = p["dp"] * p["tp"] * p["pp"] * p["cp"]
    ddp = p["zero_stage"] == 0 and world == p["dp"]
    return {**p, "world": world, "ddp": ddp, "global": t["global_batch_size"], "seq_len": t["seq_len"], "dtype": t["dtype"],
            "m": p["num_micro_batches"], "blocks": blocks, "ac": as_run,
            "sizes": [s["layers"][1] - s["layers"][0] for s in doc["stages"]], "model": doc["inputs"]["model"]}


# --- torchtitan 0.3 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def titan(tmp_path_factory):
    """torchtitan 0.3's ConfigManager and ParallelDims, with the float8 converters recorded instead
    of built (they need an SM89 GPU and torchao)."""
    pytest.importorskip("torchtitan.config")
    if not importlib.metadata.version("torchtitan").startswith("0.3"):
        pytest.skip("these checks are for torchtitan 0.3.x")
    from torchtitan.components.quantization import Float8GroupedExpertsConverter, Float8LinearConverter
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.parallel_dims import ParallelDims

    built: list[str] = []

    class Recorded:
        def __init__(self, name: str) -> None:
            built.append(name)

        def convert(self, model_config):
            return model_config

    mp = pytest.MonkeyPatch()
    for cls in (Float8LinearConverter, Float8GroupedExpertsConverter):
        mp.setattr(cls.Config, "build", lambda self, _n=cls.__name__, **kw: Recorded(_n))
    folder = tmp_path_factory.mktemp("tt03")
    sys.path.insert(0, str(folder))
    yield ConfigManager, ParallelDims, folder, built
    sys.path.remove(str(folder))
    mp.undo()


@pytest.mark.parametrize("case", CASES)
def test_torchtitan_03_loads_the_export(plans, titan, case):
    manager, parallel_dims, folder, built = titan
    path, doc = plans[case]
    f, exp = facts(doc), export_plan(path, "torchtitan", "0.3")
    module = f"autopar_{case.replace('-', '_')}"
    (folder / f"{module}.py").write_text(exp.text)
    importlib.invalidate_caches()
    built.clear()
    cfg = manager().parse_args(["--module", module, "--config", "autopar_plan"])  # runs Trainer.Config checks
    par, tr = cfg.parallelism, cfg.training
    dims = parallel_dims.from_config(par, f["world"])  # asserts dp_replicate*dp_shard*cp*tp*pp == world
    replicate = f["dp"] if f["ddp"] else f["dp_replicate"]  # ZeRO-0 on a 1-D mesh: torchtitan's DDP
    assert (dims.dp_replicate, dims.dp_shard, dims.tp, dims.pp, dims.cp, dims.ep) == (
        replicate, f["dp"] // replicate, f["tp"], f["pp"], f["cp"], f["ep"])
    assert (dims.dp_shard * dims.cp * dims.tp) % dims.ep == 0  # efsdp = dp_shard*cp*tp/ep is whole
    assert tr.seq_len == f["seq_len"] and tr.seq_len % dims.seq_len_divisor == 0  # Trainer.__init__'s check
    assert par.enable_sequence_parallel == (f["sequence_parallel"] or f["tp"] == 1)
    _check_titan_batch(cfg, f)
    _check_titan_recompute_and_model(cfg, f, exp.notes)
    if f["dtype"] == "fp8":
        assert built == ["Float8LinearConverter"] + (["Float8GroupedExpertsConverter"] if f["model"].get("moe") else [])
    if f["pp"] > 1:
        _check_titan_parts(par.module_fqns_per_model_part, f, cfg)


def _check_titan_batch(cfg, f: dict) -> None:
    """torchtitan 0.3 trainer: accumulation = global / (local * dp); with pp, local / microbatch
    pipeline micro-batches."""
    tr, par = cfg.training, cfg.parallelism
    dp = par.data_parallel_replicate_degree * par.data_parallel_shard_degree
    assert tr.global_batch_size == f["global"] and tr.global_batch_size % (tr.local_batch_size * dp) == 0
    accumulation = tr.global_batch_size // (tr.local_batch_size * dp)
    if f["pp"] > 1:
        assert (accumulation, tr.local_batch_size // par.pipeline_parallel_microbatch_size) == (1, f["m"])
        assert par.pipeline_parallel_microbatch_size == f["micro_batch_size"]
    else:
        assert (accumulation, tr.local_batch_size) == (f["m"], f["micro_batch_size"])


def _check_titan_recompute_and_model(cfg, f: dict, notes: list[str]) -> None:
    from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC

    want = {"none": type(None), "full": FullAC.Config, "selective": SelectiveAC.Config}[f["ac"]]
    assert type(cfg.activation_checkpoint) is want
    zero = f["zero_stage"]
    if f["dp"] > 1 and not f["ddp"]:
        assert cfg.parallelism.fsdp_reshard_after_forward == ("default" if zero == 3 else "never")
    m, spec = cfg.model_spec, f["model"]
    if spec["name"] == "mixtral-8x7b":  # no torchtitan model: no spec at all, never the debug model
        assert m is None and any("no torchtitan flavor" in n for n in notes)
        return
    assert (len(m.model.layers), m.model.dim, m.model.vocab_size) == (
        spec["num_layers"], spec["hidden_size"], spec["vocab_size"])


def _check_titan_parts(parts: list[list[str]], f: dict, cfg) -> None:
    """The split names torchtitan's modules, each block once, in the plan's chunk sizes."""
    n = len(cfg.model_spec.model.layers)
    names = [x for part in parts for x in part]
    assert set(names) <= {"tok_embeddings", "norm", "lm_head"} | {f"layers.{i}" for i in range(n)}
    assert [x for x in names if x.startswith("layers.")] == [f"layers.{i}" for i in range(n)]
    assert [sum(x.startswith("layers.") for x in part) for part in parts] == f["sizes"]


# --- torchtitan 0.2.2 (its own install, in a subprocess) ---------------------------------------------

LOAD_02 = """
import json, sys
from torchtitan.config import ConfigManager
from torchtitan.distributed.parallel_dims import ParallelDims
import torchtitan.components.quantization
from torchtitan.protocols.model_converter import _registry_model_converter_cls
out = {}
for case, path, world in json.loads(sys.argv[1]):
    c = ConfigManager().parse_args(["--job.config_file", path])
    p = c.parallelism
    d = ParallelDims(p.data_parallel_replicate_degree, p.data_parallel_shard_degree, p.context_parallel_degree,
                     p.tensor_parallel_degree, p.pipeline_parallel_degree, p.expert_parallel_degree,
                     p.expert_tensor_parallel_degree, world)
    assert all(name in _registry_model_converter_cls for name in c.model.converters), c.model.converters
    out[case] = dict(dims=[d.dp_replicate, d.dp_shard, d.tp, d.pp, d.cp, d.ep, d.etp], model=[c.model.name,
                     c.model.flavor], local=c.training.local_batch_size, glob=c.training.global_batch_size,
                     mb=p.pipeline_parallel_microbatch_size, ac=c.activation_checkpoint.mode,
                     converters=c.model.converters, parts=p.module_fqns_per_model_part)
print(json.dumps(out))
"""


def test_torchtitan_02_loads_every_export(plans, tmp_path):
    root = os.environ.get("AUTOPAR_TORCHTITAN_0_2")
    if not root:
        pytest.skip("set AUTOPAR_TORCHTITAN_0_2 to a `pip install --no-deps --target` folder of torchtitan==0.2.2")
    jobs = []
    for case, (path, doc) in plans.items():
        toml = tmp_path / f"{case}.toml"
        toml.write_text(export_plan(path, "torchtitan", "0.2").text)
        jobs.append((case, str(toml), facts(doc)["world"]))
    env = {**os.environ, "PYTHONPATH": root}
    r = subprocess.run([sys.executable, "-c", LOAD_02, json.dumps(jobs)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for case, (_, doc) in plans.items():
        f, g = facts(doc), got[case]
        etp = f["tp"] if f["ep"] > 1 else 1
        replicate = f["dp"] if f["ddp"] else f["dp_replicate"]
        assert g["dims"] == [replicate, f["dp"] // replicate, f["tp"], f["pp"], f["cp"], f["ep"], etp]
        assert g["glob"] == f["global"] and g["ac"] == f["ac"]
        assert g["local"] == (f["micro_batch_size"] * f["m"] if f["pp"] > 1 else f["micro_batch_size"])
        assert ("quantize.linear.float8" in g["converters"]) == (f["dtype"] == "fp8")
        if f["model"]["name"] in ("mixtral-8x7b", "llama3.2-1b"):  # no 0.2 flavor: torchtitan refuses the name
            assert g["model"][0] == f["model"]["name"]
        if f["pp"] > 1:
            assert [sum(x.startswith("layers.") for x in part) for part in g["parts"]] == f["sizes"]


# --- DeepSpeed ---------------------------------------------------------------------------------------

# Pipeline keys DeepSpeed 0.19.8 reads (deepspeed/runtime/pipe/engine.py PipelineEngine.__init__: lines
# 135-138 pipe/grad_partitioned, 210-212 use_reentrant, 217-218 activation_checkpoint_interval);
# "stages" and "partition" are only defaults in runtime/config.py get_pipeline_config (line 272).
PIPELINE_READ = {"pipe_partitioned", "grad_partitioned", "use_reentrant", "activation_checkpoint_interval"}
# Sections DeepSpeed reads key by key (get_scalar_param / dict.get) rather than validating with a
# pydantic model that forbids unknown keys.
READ_BY_KEY = ("activation_checkpointing", "expert_parallel")


class Seen(dict):
    """A config dict recording the keys DeepSpeed reads (``[]``, ``get``, ``in``), by path."""

    def __init__(self, data: dict, log: set, prefix: str = "") -> None:
        super().__init__({k: Seen(v, log, f"{prefix}{k}.") if k in READ_BY_KEY else v for k, v in data.items()})
        self.log, self.prefix = log, prefix

    def __getitem__(self, key):
        self.log.add(self.prefix + key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.log.add(self.prefix + key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.log.add(self.prefix + key)
        return super().__contains__(key)


class PipeGrid:
    """A PipelineModule's grid as DeepSpeedConfig sees it (``mpu=model.mpu()``)."""

    def __init__(self, dp: int) -> None:
        self.dp = dp

    def get_data_parallel_world_size(self) -> int:
        return self.dp


class UlyssesMpu:
    """deepspeed.runtime.sequence_parallel.parallel_state_sp: no data-parallel size of its own."""

    def __init__(self, sp: int) -> None:
        self.sp = sp

    def get_sequence_parallel_world_size(self) -> int:
        return self.sp


@pytest.fixture(scope="module")
def deepspeed_config():
    pytest.importorskip("deepspeed")
    import deepspeed.comm as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    mp = pytest.MonkeyPatch()
    mp.setattr(dist, "get_rank", lambda group=None: 0)
    yield DeepSpeedConfig, mp
    mp.undo()


@pytest.mark.parametrize("case", CASES)
def test_deepspeed_config_accepts_the_export(plans, deepspeed_config, case):
    config_cls, mp = deepspeed_config
    path, doc = plans[case]
    f, exp = facts(doc), export_plan(path, "deepspeed")
    # the launch the notes give: a PipelineModule's grid, Ulysses' mpu, or plain deepspeed.initialize
    mpu = PipeGrid(f["dp"]) if f["pp"] > 1 else UlyssesMpu(f["cp"]) if f["cp"] > 1 else None
    assert any("PipelineModule(" in n for n in exp.notes) == (f["pp"] > 1)
    assert any("mpu=<Ulysses mpu>" in n for n in exp.notes) == (f["pp"] == 1 and f["cp"] > 1)
    mp.setattr("deepspeed.comm.get_world_size", lambda group=None: f["world"])
    read: set[str] = set()
    ds = config_cls(Seen(exp.config, read), mpu)  # _batch_assertion: train = micro * accumulation * world
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (f["micro_batch_size"], f["m"])
    assert ds.train_batch_size // ds.world_size * (f["dp"]) == f["global"]  # per-rank sequences x dp ranks
    assert ds.zero_optimization_stage == (min(f["zero_stage"], 1) if f["pp"] > 1 else f["zero_stage"])
    assert ds.tensor_parallel_config.autotp_size == (f["tp"] if f["pp"] == 1 and f["tp"] > 1 else 0)
    assert any(f"sequence_parallel_size={f['cp']})" in n for n in exp.notes) == (f["cp"] > 1)
    ep = ds.expert_parallel_config
    assert (ep.enabled, ep.autoep_size) == ((True, f["ep"]) if f["ep"] > 1 else (False, 1))
    if f["dp_replicate"] > 1:  # no HSDP in DeepSpeed 0.19.8 (MiCS removed): re-scored over all dp ranks
        assert any("re-scored:" in n and "no HSDP" in n for n in exp.notes)
    any_full = "full" in f["blocks"]
    assert ds.pipeline["activation_checkpoint_interval"] == (1 if f["pp"] > 1 and any_full else 0)
    assert set(exp.config.get("pipeline", {})) <= PIPELINE_READ
    assert ds.bfloat16_config.enabled == (f["dtype"] in ("bf16", "fp8"))
    written = {f"{k}.{s}" if k in READ_BY_KEY else k for k, v in exp.config.items()
               for s in (v if k in READ_BY_KEY else [None])}
    assert written <= read | {"pipeline"}, written - read  # no key DeepSpeed ignores
    if f["ep"] > 1:
        from deepspeed.module_inject.auto_ep_config import validate_autoep_config

        validate_autoep_config(ep, f["world"], f["pp"], ds.tensor_parallel_config.autotp_size or 1, f["cp"],
                               zero_stage=ds.zero_optimization_stage)
