"""DeepSpeed config (JSON) for a plan, checked against DeepSpeed 0.19's source.

Launch (the notes say which applies): without pipelining, ``deepspeed.initialize(model=model,
config=...)`` on every rank; then ``DeepSpeedConfig`` counts all ranks as data-parallel in its
batch check (deepspeed/runtime/config.py ``_batch_assertion``: train_batch_size = micro ·
accumulation · world), AutoTP's included, or world / ``sequence_parallel_size`` with Ulysses'
``mpu``. With pipelining, a ``deepspeed.pipe.PipelineModule`` whose grid counts dp ranks.

Keys: ``train_batch_size`` (for that count), ``zero_optimization.stage`` (no HSDP: 0.19.8 removed
MiCS), ``bf16``/``fp16``, ``communication_data_type``,
``activation_checkpointing``, ``pipeline.activation_checkpoint_interval`` (the only pipeline key
the engine reads besides pipe/grad partitioning and ``use_reentrant``; stages and the partition
method are ``PipelineModule`` arguments), ``tensor_parallel.autotp_size`` (AutoTP),
``expert_parallel`` (AutoEP); Ulysses' ``sequence_parallel_size`` goes to its ``mpu``.
"""

from __future__ import annotations

import json

from planner.config import grad_reduce_bytes
from planner.export.common import Export, PlanView, common_notes, recompute_note, recompute_pattern, tp_overlap_note
from planner.export.rescore import AsRun, rescore_note
from planner.kept_sets import is_kept_set


def deepspeed_export(view: PlanView) -> Export:
    """A DeepSpeed config; what DeepSpeed takes in code (PipelineModule, Ulysses' mpu) is in notes."""
    p, t = view.par, view.train
    notes, run = common_notes(view), AsRun.of(view)
    world = batch_ranks(view)
    cfg: dict = {
        "train_batch_size": p.micro_batch * view.num_micro_batches * world,
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": view.num_micro_batches,
        "zero_optimization": _ds_zero(view, run, notes),
    }
    notes += _launch_notes(view, world)
    if t.dtype in ("bf16", "fp8", "fp16"):
        cfg["fp16" if t.dtype == "fp16" else "bf16"] = {"enabled": True}
        # The dtype the plan's gradient traffic was priced in (config.grad_reduce_bytes).
        cfg["communication_data_type"] = (
            "fp32" if grad_reduce_bytes(t, p.zero) == 4 else ("fp16" if t.dtype == "fp16" else "bf16")
        )
    if t.dtype == "fp8":
        notes.append("dtype fp8: DeepSpeed's config has no FP8 switch; use Transformer Engine layers in the model")
    ckpt, interval = _ds_recompute(view, run, notes)
    if ckpt:
        cfg["activation_checkpointing"] = ckpt
    cfg.update(_ds_model_parallel(view, run, notes))
    if p.pp > 1:
        if interval:
            cfg["pipeline"] = {"activation_checkpoint_interval": interval}
        notes += _ds_pipeline(view, run, interval)
    notes += rescore_note(view, run, "DeepSpeed")
    return Export("deepspeed", json.dumps(cfg, indent=2) + "\n", cfg, notes)


def batch_ranks(view: PlanView) -> int:
    """The ranks DeepSpeed's batch check counts as data-parallel under the launch the notes give:
    a PipelineModule's grid counts dp; otherwise every rank (AutoTP ranks read the same
    micro-batches but count), divided by Ulysses' sequence-parallel size."""
    p = view.par
    return p.dp if p.pp > 1 else p.dp * p.tp


def _launch_notes(view: PlanView, world: int) -> list[str]:
    p, t = view.par, view.train
    if p.pp > 1:
        return []  # _ds_pipeline says how to build the PipelineModule
    call = "deepspeed.initialize(model=model, config=<this file>" + (", mpu=<Ulysses mpu>)" if p.cp > 1 else ")")
    notes = [f"launch: {call} on all {p.world} ranks"]
    if p.tp > 1:
        notes.append(
            f"train_batch_size {t.global_batch * p.tp}: DeepSpeed's batch check counts all {world} AutoTP ranks as "
            f"data-parallel (micro {p.micro_batch} x accumulation {view.num_micro_batches} x {world}); the {p.tp} "
            f"ranks of a TP group read the same micro-batches, so a step trains the plan's {t.global_batch} sequences"
        )
    return notes


def _ds_zero(view: PlanView, run: AsRun, notes: list[str]) -> dict:
    """ZeRO stage. DeepSpeed 0.19.8 has no HSDP: MiCS (``mics_shard_size``) is removed
    (runtime/config.py ``_REMOVED_ZERO_CONFIG_KEYS``), so ZeRO shards over all data-parallel
    ranks; its pipeline engine asserts ZeRO < 2 (runtime/pipe/engine.py)."""
    p = view.par
    zero = p.zero
    if p.pp > 1 and zero >= 2:
        notes.append(f"ZeRO-{zero} with pp {p.pp}: DeepSpeed's pipeline engine rejects ZeRO-2/3; exported ZeRO-1")
        zero = 1
        run.set(f"ZeRO-1 for ZeRO-{p.zero} (pipeline engine)", zero=1)
    if p.dp_replicate > 1:
        notes.append(
            f"dp_replicate {p.dp_replicate}: DeepSpeed has no hybrid sharding (0.19.8 rejects MiCS' mics_shard_size; "
            f"ZeRO++ zero_hpz_partition_size only keeps a second weight shard per group); exported ZeRO-{zero} over "
            f"all {p.dense_dp} data-parallel ranks"
        )
        run.set(f"ZeRO-{zero} over all {p.dense_dp} data-parallel ranks (no HSDP)", dp_replicate=1)
    return {"stage": zero}


def _ds_model_parallel(view: PlanView, run: AsRun, notes: list[str]) -> dict:
    """AutoTP (``tensor_parallel.autotp_size``, DeepSpeed >= 0.16.4; ZeRO 0-3: engine.py
    ``_configure_tensor_parallel_states``), Ulysses (its mpu, ``sequence_parallel_size``) and AutoEP
    (``expert_parallel.autoep_size``, module_inject/auto_ep_config.py)."""
    p, out = view.par, {}
    if p.tp > 1 and p.pp == 1:
        out["tensor_parallel"] = {"autotp_size": p.tp}
        notes.append(f"tp {p.tp}: AutoTP training shards the Hugging Face model's linear layers (ZeRO 0-3)")
        if p.sequence_parallel:
            run.set("no sequence parallelism (AutoTP has none)", sequence_parallel=False)
        if view.train.tp_overlap != "none":
            notes.extend(tp_overlap_note(view, "DeepSpeed", "AutoTP's all-reduces block"))
            run.set_training("TP all-reduces exposed (AutoTP)", tp_overlap="none")
    if p.cp > 1:  # DeepSpeedConfig reads sequence_parallel_size only without an mpu: the mpu carries it
        notes.append(
            f"cp {p.cp}: run it as DeepSpeed Ulysses sequence parallelism, mpu = UlyssesSPAttentionHF."
            f"register_with_transformers(..., sequence_parallel_size={p.cp}) passed to deepspeed.initialize; "
            f"Ulysses all-to-alls attention heads (heads % {p.cp} == 0) where the plan priced context parallelism, "
            "and the cost model has no Ulysses knob, so this is not re-scored"
            + ("; DeepSpeed documents no AutoTP + Ulysses combination" if p.tp > 1 else "")
        )
    if p.ep > 1:
        out["expert_parallel"] = {"enabled": True, "autoep_size": p.ep}
        notes.append(
            f"ep {p.ep}: AutoEP replaces the Hugging Face MoE layers (expert_parallel.autoep_size)"
            + (
                "; with AutoTP it folds ep over the dp*tp ranks and keeps each expert whole "
                "(expert_tensor_parallel_size 1), where the plan splits experts over tp: not re-scored"
                if p.tp > 1
                else ""
            )
        )
    return out


def _ds_pipeline(view: PlanView, run: AsRun, interval: int) -> list[str]:
    """PipelineModule arguments (DeepSpeed reads no stage count or split from the config), the
    split it makes and the schedule it runs."""
    p, sizes = view.par, [c.num_blocks for c in view.chunks]
    topo = (
        f"topology=PipeModelDataParallelTopology(num_pp={p.pp}, num_mp={p.tp}, num_dp={p.dp})"
        if p.tp > 1
        else f"num_stages={p.pp}"
    )
    notes = [
        f"pp {p.pp}: build deepspeed.pipe.PipelineModule(layers, {topo}, partition_method='type:<your block "
        f"class>', activation_checkpoint_interval={interval}) and pass it to deepspeed.initialize; its grid counts "
        f"{p.dp} data-parallel ranks"
        + (" (tensor parallelism inside the layers is model code, e.g. Megatron-DeepSpeed)" if p.tp > 1 else "")
    ]
    per_rank = [sum(c.num_blocks for c in view.chunks if c.pp_rank == r) for r in range(p.pp)]
    if p.vpp > 1 or not p.schedule_spec.deepspeed:
        notes.append(f"schedule {p.schedule} (vpp {p.vpp}): DeepSpeed's pipeline engine runs 1F1B without interleaving")
        run.set(f"non-interleaved 1F1B for {p.schedule} v{p.vpp}", schedule="1f1b", vpp=1, stage_layers=tuple(per_rank))
    if len(set(per_rank)) > 1:
        notes.append(f"split: DeepSpeed balances the blocks over its stages ('type:'), not the plan's {per_rank}")
        if view.model.num_layers % p.pp == 0:
            run.set(f"an even split for {sizes}", stage_layers=None)
    return notes


def _ds_recompute(view: PlanView, run: AsRun, notes: list[str]) -> tuple[dict | None, int]:
    """Without pipelining the model code checkpoints blocks (deepspeed.checkpointing.checkpoint), so
    the note lists the plan's blocks and the run is exact. A PipelineModule checkpoints every
    ``activation_checkpoint_interval`` layers alike: 1 when any block recomputes fully (all blocks
    full, never less than planned); selective-only plans stay in the layer code. The section
    sizes DeepSpeed's checkpoint buffers (``number_checkpoints``: most blocks on one rank)."""
    pat = recompute_pattern(view)
    if pat.mode == "none":
        return None, 0
    # A kept set (planner/kept_sets.py) has no DeepSpeed form: its blocks checkpoint whole, as full.
    full = any(o == "full" or is_kept_set(o) for c in view.chunks for o in c.recompute)
    interval = 1 if view.par.pp > 1 and full else 0
    if interval:
        note = recompute_note(view, pat, "DeepSpeed's PipelineModule", "activation_checkpoint_interval 1 (every block)")
        if note:
            notes.append(note)
            run.set(f"recompute full for all {view.model.num_layers} blocks", recompute="full")
    else:
        notes.append(f"recompute: {_recompute_code(view)} (the config section sizes DeepSpeed's checkpoint buffers)")
    per_rank: dict[int, int] = {}
    for c in view.chunks:
        per_rank[c.pp_rank] = per_rank.get(c.pp_rank, 0) + sum(o != "none" for o in c.recompute)
    ckpt = {
        "partition_activations": False,
        "cpu_checkpointing": False,
        "contiguous_memory_optimization": False,
        "number_checkpoints": max(per_rank.values()),
        "synchronize_checkpoint_boundary": False,
        "profile": False,
    }
    return ckpt, interval


def _recompute_code(view: PlanView) -> str:
    """Which blocks the model code checkpoints: whole blocks (full, and kept sets, which DeepSpeed
    cannot keep selectively) and attention cores (selective)."""
    blocks = ["full" if is_kept_set(o) else o for c in view.chunks for o in c.recompute]
    parts = []
    if any(is_kept_set(o) for c in view.chunks for o in c.recompute):
        parts.append("kept sets (keep(...)) have no DeepSpeed form and are checkpointed whole, as full")
    for option, what in (
        ("full", "full: wrap blocks {} in deepspeed.checkpointing.checkpoint"),
        ("selective", "selective: wrap the attention core of blocks {} in it"),
    ):
        ids = [i for i, o in enumerate(blocks) if o == option]
        if ids:
            parts.append(what.format(_ranges(ids)))
    return "; ".join(parts)


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> ``0-2, 5``."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
