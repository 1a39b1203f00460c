"""Megatron-LM command-line arguments for a plan (megatron/training/arguments.py, Megatron-Core).

Mapping (docs/exports.md has the full table):
- degrees: ``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``,
  ``--context-parallel-size``, ``--expert-model-parallel-size``, ``--sequence-parallel``;
- batch: ``--micro-batch-size`` and ``--global-batch-size`` (Megatron derives the micro-batches
  per step as global / (micro · dp) with dp = world / (tp · pp · cp), the plan's rule);
- pipeline split, first form that fits: even (nothing), ``--num-virtual-stages-per-pipeline-rank``
  for even interleaving, ``--decoder-first/last-pipeline-num-layers`` when only the end stages
  differ (vpp 1), otherwise ``--pipeline-model-parallel-layout`` ("Et*4|t*6|...|t*4L": one
  ``|``-separated stage per chunk in chunk order, E = embedding, L = head and loss), which
  states any split exactly;
- ZeRO: 1 -> ``--use-distributed-optimizer``; 2/3 -> Megatron-FSDP
  (``--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads|optim_grads_params``), HSDP
  as its hybrid form (``--num-distributed-optimizer-instances r --outer-dp-sharding-strategy no_shard``);
- recompute: ``--recompute-granularity full --recompute-method uniform --recompute-num-layers 1``
  (every block), ``--recompute-method block --recompute-num-layers k`` (first k blocks of every
  chunk), ``--recompute-granularity selective`` (attention core, Korthikanti et al. 2022);
- model: shape flags, RoPE base and scaling (``--rotary-base``, YaRN, Llama 3.1 scaling),
  ``--norm-epsilon``, ``--qk-layernorm`` and DeepSeek-V3 routing (sigmoid scores, expert bias,
  group-limited routing).
What Megatron-LM runs differently from the plan (GPipe as 1F1B, recompute mixes) is re-scored.
"""

from __future__ import annotations

import shlex
from typing import Any

from planner.config import grad_reduce_bytes
from planner.export.common import Export, PlanView, common_notes, recompute_note, recompute_pattern
from planner.export.rescore import AsRun, rescore_note

Args = list[tuple[str, str | None]]
FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}


def megatron_export(view: PlanView) -> Export:
    """Arguments for pretrain_gpt.py (Megatron-Core GPT model) and a note per unmapped setting."""
    notes, run = common_notes(view), AsRun.of(view)
    args: Args = []
    args += _degree_args(view, run, notes)
    args += _split_args(view)
    args += _zero_args(view, notes)
    args += _recompute_args(view, run, notes)
    args += _precision_args(view, notes)
    args += _model_args(view, notes)
    notes += rescore_note(view, run, "Megatron-LM")
    flat = [s for flag, value in args for s in ((flag,) if value is None else (flag, value))]
    return Export("megatron", _script(view, args, notes), flat, notes)


def _degree_args(view: PlanView, run: AsRun, notes: list[str]) -> Args:
    p, t = view.par, view.train
    args: Args = [
        ("--tensor-model-parallel-size", str(p.tp)),
        ("--pipeline-model-parallel-size", str(p.pp)),
        ("--context-parallel-size", str(p.cp)),
    ]
    if p.ep > 1:
        # The cost model prices expert parallelism as all-to-all (hardware/comm), Megatron's alltoall dispatcher.
        args += [("--expert-model-parallel-size", str(p.ep)), ("--moe-token-dispatcher-type", "alltoall")]
    if p.sequence_parallel:
        args.append(("--sequence-parallel", None))
        if p.tp > 1 and t.tp_overlap == "full":  # Transformer Engine userbuffers (needs SP)
            args.append(("--tp-comm-overlap", None))
    args += [
        ("--micro-batch-size", str(p.micro_batch)),
        ("--global-batch-size", str(t.global_batch)),
        ("--seq-length", str(t.seq_len)),
    ]
    if not p.schedule_spec.megatron and p.pp > 1:
        notes.append(
            f"schedule {p.schedule}: Megatron-LM has no {p.schedule_spec.title} schedule and runs 1F1B "
            "instead (the same bubble, at most pp micro-batches in flight, so no more activation memory "
            "than planned)"
        )
        run.set(f"1F1B for {p.schedule_spec.title}", schedule="1f1b")
    return args


def _split_args(view: PlanView) -> Args:
    """The pipeline split in the first Megatron form that states it exactly."""
    p, sizes = view.par, [c.num_blocks for c in view.chunks]
    if p.pp == 1:
        return []
    if view.even_split:
        return [("--num-virtual-stages-per-pipeline-rank", str(p.vpp))] if p.vpp > 1 else []
    if p.vpp == 1 and len(set(sizes[1:-1])) <= 1:
        first: Args = [("--decoder-first-pipeline-num-layers", str(sizes[0]))]
        # With two stages the last one holds the rest; Megatron divides the middle by pp - 2.
        return first + ([("--decoder-last-pipeline-num-layers", str(sizes[-1]))] if p.pp > 2 else [])
    return [("--pipeline-model-parallel-layout", megatron_layout(view))]


def megatron_layout(view: PlanView) -> str:
    """``--pipeline-model-parallel-layout``: chunk j's stage is E (embedding), t per block and L
    (final norm, output layer and loss), written ``t*n``; stages joined by ``|`` in chunk order."""
    stages = []
    for c in view.chunks:
        body = "t" if c.num_blocks == 1 else (f"t*{c.num_blocks}" if c.num_blocks else "")
        stages.append(("E" if c.has_embedding else "") + body + ("L" if c.has_head else ""))
    return "|".join(stages)


def _zero_args(view: PlanView, notes: list[str]) -> Args:
    z = view.par.zero
    if z == 0:
        return []
    if z == 1:
        # Megatron's distributed optimizer shards optimizer states and fp32 main weights over dp
        # and reduce-scatters gradients: ZeRO-1 (Rajbhandari et al. 2020, section 5.1).
        return [("--use-distributed-optimizer", None)]
    notes.append(
        f"ZeRO-{z}: mapped to Megatron-FSDP (--data-parallel-sharding-strategy {FSDP_STRATEGY[z]}), "
        "which needs --ckpt-format fsdp_dtensor and no gradient-accumulation fusion"
        + ("; Megatron-FSDP documents TP, EP and CP as compatible, not pipeline parallelism" if view.par.pp > 1 else "")
    )
    args: Args = [
        ("--use-megatron-fsdp", None),
        ("--data-parallel-sharding-strategy", FSDP_STRATEGY[z]),
        ("--use-distributed-optimizer", None),
        ("--no-gradient-accumulation-fusion", None),
        ("--ckpt-format", "fsdp_dtensor"),
    ]
    if view.par.dp_replicate > 1:
        notes.append(
            f"dp_replicate {view.par.dp_replicate}: HSDP as Megatron-FSDP's hybrid sharding "
            "(--num-distributed-optimizer-instances, --outer-dp-sharding-strategy no_shard); check that "
            "your Megatron-LM has both flags"
        )
        args += [
            ("--num-distributed-optimizer-instances", str(view.par.dp_replicate)),
            ("--outer-dp-sharding-strategy", "no_shard"),
        ]
    return args


def _recompute_args(view: PlanView, run: AsRun, notes: list[str]) -> Args:
    pat = recompute_pattern(view)
    if pat.block_full is not None:
        args: Args = [
            ("--recompute-granularity", "full"),
            ("--recompute-method", "block"),
            ("--recompute-num-layers", str(pat.block_full)),
        ]
        emitted = f"--recompute-method block --recompute-num-layers {pat.block_full} (first k blocks of every chunk)"
    elif pat.mode == "full":
        args = [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", "1")]
        emitted = "full recompute of every block"
    elif pat.mode == "selective":
        args, emitted = [("--recompute-granularity", "selective")], "selective recompute of every block"
    else:
        args, emitted = [], "no recompute"
    note = recompute_note(view, pat, "Megatron-LM", emitted, block_ok=True)
    if note:
        notes.append(note)
        run.set(f"recompute {emitted}", recompute=_emitted_blocks(view, pat.mode, pat.block_full))
    return args


def _emitted_blocks(view: PlanView, mode: str, block_full: int | None) -> tuple[str, ...]:
    """What Megatron-LM recomputes per block: the first k blocks of every chunk in full
    (``--recompute-method block``), or one option for every block."""
    if block_full is None:
        return (mode,) * view.model.num_layers
    return tuple("full" if i < block_full else "none" for c in view.chunks for i in range(c.num_blocks))


def _precision_args(view: PlanView, notes: list[str]) -> Args:
    t = view.train
    by_dtype: dict[str, Args] = {
        "bf16": [("--bf16", None)],
        "fp16": [("--fp16", None)],
        "fp32": [],
        "fp8": [("--bf16", None), ("--fp8-format", "hybrid")],
    }
    args = by_dtype[t.dtype]
    if t.dtype == "fp8":
        notes.append(
            "dtype fp8: the plan models FP8 matmuls with bf16 activations (Transformer Engine); "
            "--fp8-format hybrid (e4m3 forward, e5m2 backward) is the usual recipe, check yours"
        )
    if t.dtype in ("bf16", "fp8") and grad_reduce_bytes(t, view.par.zero) == 2:
        args.append(("--grad-reduce-in-bf16", None))  # Megatron's default reduces bf16 grads in fp32
    args.append(("--attention-backend", "flash" if t.attention_impl == "flash" else "unfused"))
    return args


def _model_args(view: PlanView, notes: list[str]) -> Args:
    """Model shape flags; architecture features Megatron's GPT model lacks become notes."""
    m, t = view.model, view.train
    ffn = m.moe.dense_ffn_hidden_size if m.moe and m.moe.dense_ffn_hidden_size else m.ffn_hidden_size
    args: Args = [
        ("--num-layers", str(m.num_layers)),
        ("--hidden-size", str(m.hidden_size)),
        ("--ffn-hidden-size", str(ffn)),
        ("--num-attention-heads", str(m.num_heads)),
    ]
    if m.kv_heads != m.num_heads and m.mla is None:
        args += [("--group-query-attention", None), ("--num-query-groups", str(m.kv_heads))]
    if m.head_dim and m.head_dim * m.num_heads != m.hidden_size and m.mla is None:
        args.append(("--kv-channels", str(m.head_dim)))
    args += [
        ("--max-position-embeddings", str(max(t.seq_len, m.max_seq_len))),
        ("--normalization", "RMSNorm" if m.norm == "rmsnorm" else "LayerNorm"),
    ]
    act = {"swiglu": [("--swiglu", None)], "gelu": [], "relu2": [("--squared-relu", None)]}
    if m.activation in act:
        args += act[m.activation]
    else:
        notes.append(f"activation {m.activation}: no Megatron-LM flag (it offers gelu, --swiglu, --squared-relu)")
    pos = {"rope": "rope", "learned": "learned_absolute", "none": "none"}
    if m.position == "rope":
        args += _rope_args(view, notes)
    elif m.position in pos:
        args.append(("--position-embedding-type", pos[m.position]))
    else:
        notes.append(f"position {m.position}: Megatron-LM has no ALiBi; choose rope or learned_absolute yourself")
    eps = getattr(m, "norm_eps", None)
    if eps is not None:
        args.append(("--norm-epsilon", f"{eps:g}"))
    if getattr(m, "qk_norm", False):
        args.append(("--qk-layernorm", None))
    if not m.bias:
        args.append(("--disable-bias-linear", None))
    if not m.tie_embeddings:
        args.append(("--untie-embeddings-and-output-weights", None))
    args += [("--attention-dropout", str(m.dropout)), ("--hidden-dropout", str(m.dropout))]
    args += _moe_mla_args(view)
    for flag, what in (
        (m.parallel_residual, "parallel residual (GPT-J/NeoX blocks)"),
        (m.sliding_window, "sliding-window attention"),
        (m.attention_mask == "bidirectional", "a bidirectional encoder (use pretrain_bert.py)"),
    ):
        if flag:
            notes.append(f"model: {what} has no pretrain_gpt.py flag here; set it up by hand")
    return args


def _moe_mla_args(view: PlanView) -> Args:
    m = view.model
    args: Args = []
    if m.moe:
        e = m.moe
        args += [
            ("--num-experts", str(e.num_experts)),
            ("--moe-router-topk", str(e.top_k)),
            ("--moe-ffn-hidden-size", str(e.expert_ffn_hidden_size)),
        ]
        if e.num_shared_experts:
            shared = e.num_shared_experts * (e.shared_expert_ffn_hidden_size or e.expert_ffn_hidden_size)
            args.append(("--moe-shared-expert-intermediate-size", str(shared)))
        pattern = [int(m.is_moe_layer(i)) for i in range(m.num_layers)]
        if not all(pattern):
            args.append(("--moe-layer-freq", _run_length(pattern)))
        if e.capacity_factor:
            args.append(("--moe-expert-capacity-factor", str(e.capacity_factor)))
        args += _routing_args(e)
    if m.mla:
        a = m.mla
        args += [
            ("--multi-latent-attention", None),
            ("--kv-lora-rank", str(a.kv_lora_rank)),
            ("--qk-head-dim", str(a.qk_nope_head_dim)),
            ("--qk-pos-emb-head-dim", str(a.qk_rope_head_dim)),
            ("--v-head-dim", str(a.v_head_dim)),
        ]
        if a.q_lora_rank:
            args.append(("--q-lora-rank", str(a.q_lora_rank)))
    return args


def _rope_args(view: PlanView, notes: list[str]) -> Args:
    """RoPE: ``--rotary-base`` (an int in Megatron-LM), Llama 3.1 scaling (``--use-rope-scaling``),
    YaRN (``--position-embedding-type yarn`` with its factor, original length, betas and mscales),
    linear interpolation by an integer factor; other scalings become notes. Spec fields are read
    with getattr: a ModelSpec without them exports plain rope."""
    m = view.model
    scaling, theta = getattr(m, "rope_scaling", None), getattr(m, "rope_theta", None)
    kind = "yarn" if scaling is not None and scaling.type == "yarn" else "rope"
    args: Args = [("--position-embedding-type", kind)]
    if theta is not None and float(theta).is_integer():
        args.append(("--rotary-base", str(int(theta))))
    elif theta is not None:
        notes.append(f"rope_theta {theta}: Megatron-LM's --rotary-base takes an integer; set the base by hand")
    if scaling is None:
        return args
    if scaling.type == "llama3" and scaling.factor:
        return args + [("--use-rope-scaling", None), ("--rope-scaling-factor", f"{scaling.factor:g}")]
    if scaling.type == "linear" and scaling.factor and float(scaling.factor).is_integer():
        return args + [("--rotary-seq-len-interpolation-factor", str(int(scaling.factor)))]
    if kind == "rope":
        notes.append(f"rope_scaling {scaling.type}: no Megatron-LM flag for it here; set it up by hand")
        return args
    yarn = (
        ("--rotary-scaling-factor", scaling.factor),
        ("--yarn-original-max-position-embeddings", scaling.original_max_seq_len),
        ("--yarn-beta-fast", scaling.beta_fast),
        ("--yarn-beta-slow", scaling.beta_slow),
        ("--mscale", scaling.mscale),
        ("--mscale-all-dim", scaling.mscale_all_dim),
    )
    return args + [(flag, f"{value:g}") for flag, value in yarn if value is not None]


def _routing_args(e: Any) -> Args:
    """Router options beyond softmax top-k (DeepSeek-V3: sigmoid scores, aux-loss-free expert bias,
    routed scaling factor, group-limited routing), read with getattr like the RoPE fields."""
    args: Args = []
    score = getattr(e, "router_score_function", "softmax")
    if score != "softmax":
        args.append(("--moe-router-score-function", score))
    if getattr(e, "router_expert_bias", False):  # Megatron allows it with sigmoid scores only
        args.append(("--moe-router-enable-expert-bias", None))
    for flag, name in (
        ("--moe-router-topk-scaling-factor", "router_topk_scaling_factor"),
        ("--moe-router-num-groups", "router_num_groups"),
        ("--moe-router-group-topk", "router_group_topk"),
    ):
        value = getattr(e, name, None)
        if value is not None:
            args.append((flag, f"{value:g}"))
    return args


def _run_length(bits: list[int]) -> str:
    """Megatron's list-expression form of a 0/1 layer pattern: [0,0,0,1,1] -> ([0]*3+[1]*2)."""
    runs: list[list[int]] = []
    for b in bits:
        if runs and runs[-1][0] == b:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    return "(" + "+".join(f"[{b}]*{n}" for b, n in runs) + ")"


def _script(view: PlanView, args: Args, notes: list[str]) -> str:
    """A bash file: the arguments as an array, the notes as comments, a launch line to adapt."""
    p, c = view.par, view.cluster
    lines = [
        "#!/usr/bin/env bash",
        f"# Megatron-LM arguments exported by autopar from {view.source}",
        f"# {view.title}",
    ]
    lines += [f"# note: {n}" for n in notes]
    if (p.tp > 1 or p.cp > 1) and p.zero < 2:
        lines.append("export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron asserts it with tp or cp > 1 before Blackwell")
    lines.append("MEGATRON_ARGS=(")
    lines += [f"    {flag}" + ("" if value is None else f" {shlex.quote(value)}") for flag, value in args]
    lines.append(")")
    lines.append(
        f"# torchrun --nnodes {c.num_nodes} --nproc-per-node {c.gpus_per_node} pretrain_gpt.py "
        '"${MEGATRON_ARGS[@]}" <tokenizer, data, optimizer and checkpoint arguments>'
    )
    return "\n".join(lines) + "\n"
