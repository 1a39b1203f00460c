"""Turn a published training run (../shared/reference/published_cases.json format) into autopar
inputs, with every assumption stated. Used by bench/accuracy.py and the planner tests.

Rules (the same for every case — nothing here is tuned per case):
- Architecture from the activation string: GeLU -> GPT style (LayerNorm, learned positions,
  biases, tied embeddings, dropout 0.1 for Megatron runs); "MPT" -> ALiBi, no biases, no dropout;
  SwiGLU -> Llama style (RMSNorm, RoPE, untied). A preset with the same dimensions is used when
  the case matches one (it carries fields the case omits, e.g. Qwen3's head_dim).
- Attention kernel: Megatron-LM runs of 2021-22 predate FlashAttention -> eager; others flash.
- Backward TP overlap (training.tp_overlap): Megatron-LM from 2022 on overlaps the backward TP
  collectives with the weight-gradient GEMMs (Korthikanti et al. 2022, whose Table 4 backward
  times show it) -> backward; the 2021 runs predate Megatron's async TP all-reduce and
  torchtitan's eager DTensor TP exposes them -> none.
- FSDP -> ZeRO-3; no ZeRO/FSDP stated -> 0. Unstated micro-batch -> 1. "interleaved" without a
  virtual-stage count -> the fewest chunks per rank above one that Megatron-LM accepts (layers
  divisible by pp·vpp): 2 for most, 3 for 105 layers on 35 stages.
- Unstated recompute -> the least recompute (none, selective, full) that fits in memory: the run
  did run, so it fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hardware.cluster import load_cluster
from models.load import load_model
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.estimate import estimate

# A copy of ../shared/reference/published_cases.json, kept in the repo so CI needs nothing outside it.
CASES = Path(__file__).resolve().parent / "data" / "published_cases.json"

GPU_PRESETS = [
    ("96GB", "h100-sxm-96gb"),
    ("H100", "h100-sxm-80gb"),
    ("A100-SXM4-80GB", "a100-sxm-80gb"),
    ("A100-SXM4-40GB", "a100-sxm-40gb"),
    ("H200", "h200-sxm-141gb"),
    ("B200", "b200-sxm-180gb"),
]
PRESET_MATCH = ["llama3-8b", "llama3-70b", "llama3-405b", "qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"]


@dataclass
class CaseInputs:
    id: str
    model: ModelSpec
    cluster: object
    train: Training
    par: Parallel
    metric: str  # which published figure is compared
    published: float
    published_mem_gib: float | None
    assumptions: list[str]


def load_cases(path: Path = CASES) -> list[dict]:
    return json.loads(path.read_text())["cases"]


def case_model(c: dict) -> ModelSpec:
    m = c["model"]
    for name in PRESET_MATCH:
        p = load_model(name)
        if (p.num_layers, p.hidden_size, p.num_heads, p.kv_heads) == (
            m["layers"],
            m["hidden"],
            m["heads"],
            m["kv_heads"],
        ) and p.vocab_size == m["vocab"]:
            return p
    act = m["activation"]
    base = dict(
        name=c["id"],
        num_layers=m["layers"],
        hidden_size=m["hidden"],
        num_heads=m["heads"],
        num_kv_heads=m["kv_heads"],
        ffn_hidden_size=m["ffn_hidden"],
        vocab_size=m["vocab"],
        max_seq_len=m["seq_len"],
    )
    if "SwiGLU" in act:
        return ModelSpec(**base, norm="rmsnorm", activation="swiglu", position="rope")
    if "MPT" in act:
        return ModelSpec(**base, norm="layernorm", activation="gelu", position="alibi", tie_embeddings=True)
    return ModelSpec(
        **base, norm="layernorm", activation="gelu", position="learned", bias=True, tie_embeddings=True, dropout=0.1
    )


def _cluster(c: dict):
    cl = c["cluster"]
    preset = next(p for key, p in GPU_PRESETS if key in cl["gpu"])
    over = {"inter_node_bw_GBps": float(cl["inter_node_GBps_per_gpu"])} if cl.get("inter_node_GBps_per_gpu") else None
    return load_cluster(f"{preset}:{cl['num_gpus']}", over)


def _recompute(text: str | None) -> str | None:
    if not text or text == "none":
        return None if not text else "none"
    return "full" if text.startswith("full") else "selective"


def case_inputs(c: dict) -> CaseInputs:
    p, notes = c["plan"], []
    megatron = c["id"].startswith(("narayanan", "korthikanti"))
    dtype = "fp8" if "FP8" in c["precision"] else "bf16"
    overlap = "backward" if c["id"].startswith("korthikanti") else "none"
    train = Training(
        p["global_batch_seqs"], c["model"]["seq_len"], dtype, "eager" if megatron else "flash", tp_overlap=overlap
    )
    zero = 3 if p.get("fsdp") else (p.get("zero_stage") or 0)
    mbs = p.get("micro_batch") or 1
    if not p.get("micro_batch"):
        notes.append("micro-batch 1 (unstated)")
    sched = p.get("schedule") or ""
    interleaved = "interleaved" in sched and p["pp"] > 1
    vpp = p.get("vpp") or (_megatron_vpp(c["model"]["layers"], p["pp"]) if interleaved else 1)
    if interleaved and not p.get("vpp"):
        notes.append(f"vpp {vpp} (unstated)")
    sp = bool(p.get("sp"))
    if p.get("sp") is None and c["id"].startswith("tt") and p["tp"] > 1:
        sp = True  # torchtitan's tensor-parallel plan always shards norms/residuals by sequence
        notes.append("sequence parallel (torchtitan TP implies it)")
    par = Parallel(
        dp=p["dp"],
        tp=p["tp"],
        pp=p["pp"],
        cp=p["cp"],
        ep=p["ep"],
        micro_batch=mbs,
        zero=zero,
        schedule="interleaved" if interleaved else "1f1b",
        vpp=vpp,
        sequence_parallel=sp,
    )
    model, cluster = case_model(c), _cluster(c)
    rc = _recompute(p.get("recompute"))
    if rc is None:
        rc = next(
            (o for o in ("none", "selective", "full") if estimate(model, cluster, train, par.with_(recompute=o)).fits),
            "full",
        )
        notes.append(f"recompute {rc} (unstated: least that fits)")
    par = par.with_(recompute=rc)
    meas = c["measured"]
    metric, value = (
        ("tokens_per_s_per_gpu", meas["tokens_per_s_per_gpu"])
        if meas.get("tokens_per_s_per_gpu")
        else ("tflops_per_gpu_eq3", meas["tflops_per_gpu"])
    )
    return CaseInputs(c["id"], model, cluster, train, par, metric, value, meas.get("peak_mem_gib"), notes)


def _megatron_vpp(layers: int, pp: int) -> int:
    """The fewest virtual stages above 1 that Megatron-LM accepts: it needs num_layers divisible by
    pp·vpp (105 layers on pp 35: 3)."""
    per_rank = layers // pp
    return next((v for v in range(2, per_rank + 1) if layers % pp == 0 and per_rank % v == 0), 2)


def eq3_flops_per_step(model: ModelSpec, train: Training, recompute: str) -> float:
    """Narayanan et al. 2021 eq. 3: 72·B·s·l·h²(1 + s/6h + V/12hl) without recompute, 96·B·s·l·h²
    (1 + s/6h + V/16lh) with full recompute (an extra forward of every layer); l layers is ``n`` here."""
    b, s, n, h, v = train.global_batch, train.seq_len, model.num_layers, model.hidden_size, model.vocab_size
    if recompute == "full":
        return 96 * b * s * n * h * h * (1 + s / (6 * h) + v / (16 * n * h))
    return 72 * b * s * n * h * h * (1 + s / (6 * h) + v / (12 * n * h))
