"""Turn a published training run (../shared/reference/published_cases.json format) into autopar
inputs, with every assumption stated. Used by bench/accuracy.py, bench/fit.py and the tests.

Rules (the same for every case — nothing here is tuned per case):
- Stack: the case's ``stack`` field when it names a profile (or an alias below), else read from
  the source and system text (``case_stack``): torchtitan (compiled when torch.compile is
  mentioned), DeepSpeed, llm-foundry/MosaicML, NeMo Automodel, Megatron-LM 2021 (Narayanan) and
  2022 (Korthikanti), and Megatron-Core/NeMo for the rest. The stack's profile gives the kernels,
  the overlap behaviour and the defaults of every unstated knob.
- Architecture from the activation string: GeLU -> GPT style (LayerNorm, learned positions,
  biases, tied embeddings, dropout 0.1 for Megatron-LM 2021/22 runs); "MPT" -> ALiBi, no biases,
  no dropout; SwiGLU -> Llama style (RMSNorm, RoPE, untied); squared ReLU -> Nemotron style. A
  preset with the same dimensions is used when the case matches one (it carries fields the case
  omits, e.g. Qwen3's head_dim, DeepSeek's MLA). MoE from the case's ``moe`` block.
- FSDP -> ZeRO-3; ZeRO stage, sequence parallelism and recompute unstated -> the stack's
  defaults; micro-batch unstated -> 1; "interleaved" without a virtual-stage count -> the fewest
  chunks per rank above one that Megatron-LM accepts (layers divisible by pp·vpp).
- A default recompute that does not fit -> the least recompute (none, selective, full) that fits:
  the run did run, so it fit (the note says so).
- The compared figure: tokens/s per GPU when published, else TFLOP/s per GPU in the source's
  convention (hardware FLOPs with the recompute forward when the source says so, eq. 3 of
  Narayanan et al. 2021; model FLOPs otherwise), else MFU × the 16-bit peak.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hardware.cluster import ClusterSpec, load_cluster
from models.load import load_model
from models.spec import ModelSpec, MoESpec
from planner.config import Parallel, Training
from planner.cost.estimate import estimate
from planner.stacks import StackProfile, list_stacks, load_stack

DATA = Path(__file__).resolve().parent / "data"
# A copy of ../shared/reference/published_cases.json, kept in the repo so CI needs nothing outside it.
CASES = DATA / "published_cases.json"
# Published runs found by this project (same format, each with its source): bench/data/found_cases.json.
FOUND = DATA / "found_cases.json"

GPU_PRESETS = [
    ("96GB", "h100-sxm-96gb"),
    ("H800", "h800-sxm-80gb"),
    ("H200", "h200-sxm-141gb"),
    ("H100", "h100-sxm-80gb"),
    ("A100-SXM4-40GB", "a100-sxm-40gb"),
    ("A100", "a100-sxm-80gb"),
    ("Ampere", "a100-sxm-80gb"),
    ("B200", "b200-sxm-180gb"),
    ("GB200", "gb200"),
]
PRESET_MATCH = ["llama3-8b", "llama3-70b", "llama3-405b", "qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3"]
# Stack names used by sources for software that a profile describes.
STACK_ALIASES = {
    "megatron-lm-2023": "megatron-lm-2022",
    "megascale": "megatron-core",
    "hai-llm": "megatron-core",
    "meta-llama3-internal": "megatron-core",
    "megatron-deepspeed": "deepspeed",
    "metaseq": "llm-foundry",
}


# Tokenizer vocabulary of a model family, for runs that name the model but not its vocabulary (the
# first pattern found in the model's name, lower case). Each is the family's published tokenizer.
FAMILY_VOCAB = [
    (r"llama ?2", 32000, "Touvron et al. 2023 (Llama 2) §2.1: the Llama 1 tokenizer, 32k tokens"),
    (r"llama ?3", 128256, "meta-llama/Meta-Llama-3-8B config.json vocab_size"),
    (r"gpt-?3", 50257, "Brown et al. 2020 §2.1: GPT-2's byte-level BPE (Radford et al. 2019: 50,257)"),
    (r"\bopt-", 50272, "facebook/opt-* config.json vocab_size (GPT-2 BPE, padded)"),
    (r"nemotron", 256000, "Nemotron-4 15B/340B reports §2: SentencePiece, 256,000 tokens (Nemotron-3 8B card: 256K)"),
    (r"deepseek-v3", 129280, "deepseek-ai/DeepSeek-V3 config.json vocab_size"),
    (r"mixtral|mistral", 32000, "mistralai/Mixtral-8x7B-v0.1 config.json vocab_size"),
    (r"qwen ?[23]", 151936, "Qwen/Qwen2-7B and Qwen3 config.json vocab_size"),
    (r"gpt-oss", 201088, "openai/gpt-oss-120b config.json vocab_size (o200k_harmony)"),
]


def family_vocab(name: str) -> tuple[int, str] | None:
    """(vocabulary, its source) of the model family ``name`` belongs to, or None."""
    low = name.lower()
    return next(((v, src) for pat, v, src in FAMILY_VOCAB if re.search(pat, low)), None)


class CaseSkipped(Exception):
    """A case this bench cannot model (the reason is its message)."""


@dataclass
class CaseInputs:
    id: str
    source: str  # the publication (leave-one-source-out groups)
    stack: StackProfile
    model: ModelSpec
    cluster: ClusterSpec
    train: Training
    par: Parallel
    metric: str  # which published figure is compared
    published: float
    published_mem_gib: float | None
    assumptions: list[str] = field(default_factory=list)
    group: str | None = None  # comparison_group


def load_cases(path: Path = CASES) -> list[dict]:
    return json.loads(Path(path).read_text())["cases"]


def all_cases() -> list[dict]:
    """The shared published runs and the ones this project found (bench/data)."""
    return load_cases(CASES) + (load_cases(FOUND) if FOUND.exists() else [])


def case_source(c: dict) -> str:
    """The publication a case comes from: the source reference up to its first comma or
    parenthesis ('Narayanan et al. 2021', 'pytorch/torchtitan benchmarks/...')."""
    ref = re.sub(r"\s+at commit \S+", "", c["source"]["ref"])
    return re.split(r"[,(]", ref)[0].strip()


def _text(c: dict) -> str:
    parts = [c["source"].get("ref", ""), c["cluster"].get("system", ""), c.get("notes", ""), c["precision"]]
    parts += [str(c["plan"].get("other", "")), str(c["plan"].get("fsdp") or "")]
    return " ".join(p for p in parts if p).lower()


def case_stack(c: dict) -> str:
    """The stack profile a case ran on (module docstring)."""
    named = c.get("stack")
    if named:
        named = STACK_ALIASES.get(named, named)
        if named in list_stacks():
            return named
    t = _text(c)
    if "torchtitan" in t:
        setup = f"{c['precision']} {c['plan'].get('other', '')}".lower()
        return "torchtitan-compile" if "compile" in setup and "eager" not in setup else "torchtitan"
    if "automodel" in t:
        return "nemo-automodel"
    if "deepspeed" in t and "megatron-core" not in t:
        return "deepspeed"
    if any(k in t for k in ("llm-foundry", "mosaicml", "composer")):
        return "llm-foundry"
    if "narayanan" in t or "2104.04473" in t:
        return "megatron-lm-2021"
    if "korthikanti" in t or "2205.05198" in t:
        return "megatron-lm-2022"
    return "megatron-core"


def _moe(m: dict) -> MoESpec | None:
    moe = m.get("moe")
    if not moe:
        return None
    return MoESpec(
        num_experts=int(moe["num_experts"]),
        top_k=int(moe["top_k"]),
        expert_ffn_hidden_size=int(moe["expert_ffn_hidden"]),
        num_shared_experts=int(moe.get("shared_experts") or 0),
    )


def _matches(p: ModelSpec, m: dict) -> bool:
    """A preset is the case's model when the published dimensions agree; a field the case leaves
    out (kv_heads, vocab) takes the preset's, and MoE must agree on experts and top-k."""
    dims = (p.num_layers, p.hidden_size, p.num_heads) == (m["layers"], m["hidden"], m["heads"])
    optional = all(m.get(k) in (None, v) for k, v in (("kv_heads", p.kv_heads), ("vocab", p.vocab_size)))
    moe = m.get("moe")
    same_moe = (p.moe is None and not moe) or (
        p.moe is not None and bool(moe) and (p.moe.num_experts, p.moe.top_k) == (moe["num_experts"], moe["top_k"])
    )
    return dims and optional and same_moe


def case_model(c: dict, stack: StackProfile, notes: list[str] | None = None) -> ModelSpec:
    m = dict(c["model"])
    missing = [k for k in ("layers", "hidden", "heads", "seq_len") if not m.get(k)]
    if missing:
        raise CaseSkipped(f"model {', '.join(missing)} not published")
    if not m.get("vocab") and (fam := family_vocab(m.get("name") or "")) is not None:
        m["vocab"] = fam[0]
        if notes is not None:
            notes.append(f"vocabulary {fam[0]} of the model family ({fam[1]})")
    for name in PRESET_MATCH:
        p = load_model(name)
        if _matches(p, m):
            return p
    if m.get("arch") == "moe" and not m.get("moe"):
        raise CaseSkipped("MoE without its expert configuration")
    if not m.get("vocab") or not (m.get("ffn_hidden") or m.get("moe")):
        raise CaseSkipped(f"model {'vocab' if not m.get('vocab') else 'ffn_hidden'} not published (and no preset)")
    act = (m.get("activation") or "").lower()
    base = dict(
        name=c["id"],
        num_layers=m["layers"],
        hidden_size=m["hidden"],
        num_heads=m["heads"],
        num_kv_heads=m["kv_heads"] or m["heads"],
        ffn_hidden_size=m["ffn_hidden"],
        vocab_size=m["vocab"],
        max_seq_len=max(m["seq_len"], 4096),
        moe=_moe(m),
    )
    if "swiglu" in act:
        return ModelSpec(**base, norm="rmsnorm", activation="swiglu", position="rope")
    if "squared relu" in act:
        return ModelSpec(**base, norm="layernorm", activation="relu2", position="rope")
    if "mpt" in act or "alibi" in act:
        return ModelSpec(**base, norm="layernorm", activation="gelu", position="alibi", tie_embeddings=True)
    dropout = 0.1 if stack.name.startswith("megatron-lm-20") else 0.0
    return ModelSpec(
        **base, norm="layernorm", activation="gelu", position="learned", bias=True, tie_embeddings=True, dropout=dropout
    )


def _cluster(c: dict) -> ClusterSpec:
    cl = c["cluster"]
    preset = next((p for key, p in GPU_PRESETS if key.lower() in cl["gpu"].lower()), None)
    if preset is None:
        raise CaseSkipped(f"no GPU preset for {cl['gpu']!r}")
    over = {"inter_node_bw_GBps": float(cl["inter_node_GBps_per_gpu"])} if cl.get("inter_node_GBps_per_gpu") else None
    return load_cluster(f"{preset}:{cl['num_gpus']}", over)


def _recompute(text: str | None) -> str | None:
    if not text:
        return None
    t = text.lower()
    if t.startswith("none") or t.startswith("no ") or t == "off":
        return "none"
    return "full" if t.startswith("full") else "selective"


def case_training(c: dict, stack: StackProfile) -> Training:
    prec = c["precision"].lower()
    dtype = "fp8" if ("fp8" in prec or "float8" in prec) and "bf16 mfu" not in prec else "bf16"
    if dtype == "bf16" and "bf16" not in prec and stack.name in ("megatron-lm-2021", "deepspeed"):
        dtype = "fp16"  # 2021 mixed precision: fp16 (Megatron-LM examples/pretrain_gpt3_175B.sh --fp16)
    p = c["plan"]
    setup = f"{p.get('other', '')} {c['precision']}".lower()
    # Async TP (torchtitan) and --tp-comm-overlap (Transformer Engine) hide the TP collectives under
    # the GEMMs forward and backward: tp_overlap full.
    decomposed = any(k in setup for k in ("asynctp", "async tp", "async-tp", "tp-comm-overlap", "tp_comm_overlap"))
    overlap = "full" if decomposed else stack.tp_overlap
    return Training(
        p["global_batch_seqs"],
        c["model"]["seq_len"],
        dtype,
        stack.attention_impl,
        stack.grad_reduce_dtype,
        stack.norm_impl,
        overlap,
        stack,
        "0%",  # the bench asks what fits physically: no planning headroom
    )


def case_parallel(c: dict, stack: StackProfile, notes: list[str]) -> Parallel:
    p = c["plan"]
    fsdp = str(p.get("fsdp") or "").lower()
    # FSDP that shards optimizer states and gradients but keeps the weights (Llama 3 §3.3.2) is ZeRO-2.
    zero = (2 if "not resharded" in fsdp or "shard_grad_op" in fsdp else 3) if fsdp else p.get("zero_stage")
    if zero is None:
        zero = stack.defaults.zero
        notes.append(f"zero {zero} ({stack.name} default)")
    mbs = p.get("micro_batch") or 1
    if not p.get("micro_batch"):
        notes.append("micro-batch 1 (unstated)")
    sched = (p.get("schedule") or "").lower()
    said = "interleaved" in sched and "non-interleaved" not in sched and "not interleaved" not in sched
    interleaved = said and p["pp"] > 1 or (p.get("vpp") or 1) > 1
    vpp = p.get("vpp") or (_megatron_vpp(c["model"]["layers"], p["pp"]) if interleaved else 1)
    if interleaved and not p.get("vpp"):
        notes.append(f"vpp {vpp} (unstated)")
    sp = p.get("sp")
    if sp is None:
        sp = stack.defaults.sequence_parallel and p["tp"] > 1
        if p["tp"] > 1:
            notes.append(f"sequence parallel {'on' if sp else 'off'} ({stack.name} default)")
    tp, cp = p["tp"], p.get("cp") or 1
    dp = p.get("dp") or c["cluster"]["num_gpus"] // (tp * p["pp"] * cp)
    return Parallel(
        dp=dp,
        tp=tp,
        pp=p["pp"],
        cp=cp,
        ep=p.get("ep") or 1,
        micro_batch=mbs,
        zero=int(zero),
        schedule="interleaved" if interleaved else "1f1b",
        vpp=vpp,
        sequence_parallel=bool(sp),
    )


def case_metric(c: dict) -> tuple[str, float]:
    meas = c["measured"]
    if meas.get("tokens_per_s_per_gpu"):
        return "tokens_per_s_per_gpu", float(meas["tokens_per_s_per_gpu"])
    other = (meas.get("other") or "").lower()
    # Narayanan et al. 2021 count the recompute forward in every table (§5.1, eq. 3).
    hardware = "eq.3" in other or "eq. 3" in other or ("recomput" in other and "hardware" in other)
    hardware = hardware or "2104.04473" in c["source"].get("ref", "") or "Narayanan" in c["source"].get("ref", "")
    kind = "tflops_per_gpu_hw" if hardware else "tflops_per_gpu_model"
    if meas.get("tflops_per_gpu"):
        return kind, float(meas["tflops_per_gpu"])
    if meas.get("mfu"):
        return kind, float(meas["mfu"]) * float(c["cluster"].get("peak_dense_tflops_16bit") or 0)
    raise CaseSkipped("no throughput figure")


def case_inputs(c: dict) -> CaseInputs:
    notes: list[str] = []
    stack = load_stack(case_stack(c))
    model, cluster = case_model(c, stack, notes), _cluster(c)
    train = case_training(c, stack)
    par = case_parallel(c, stack, notes)
    rc = _recompute(c["plan"].get("recompute"))
    if rc is None:
        rc = stack.defaults.recompute
        if not estimate(model, cluster, train, par.with_(recompute=rc)).fits:
            rc = next(
                (
                    o
                    for o in ("none", "selective", "full")
                    if estimate(model, cluster, train, par.with_(recompute=o)).fits
                ),
                "full",
            )
            notes.append(f"recompute {rc} (unstated; {stack.name}'s default does not fit: least that fits)")
        else:
            notes.append(f"recompute {rc} ({stack.name} default)")
    par = par.with_(recompute=rc)
    metric, value = case_metric(c)
    mem = c["measured"].get("peak_mem_gib")
    return CaseInputs(
        c["id"], case_source(c), stack, model, cluster, train, par, metric, value, mem, notes, c.get("comparison_group")
    )


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
