"""Tensor (Megatron-LM, Shoeybi et al. 2019) and sequence parallel (Korthikanti et al. 2022)
plans for :mod:`runtime.model`, applied with DTensor's ``parallelize_module``.

Per block: wq/wk/wv and w1/w3 are column-parallel (each rank owns heads / tp and ffn / tp),
wo and w2 row-parallel (an all-reduce, or a reduce-scatter along the sequence under SP). Under
SP the norms run on a sequence shard (``SequenceParallel``) and the inputs of attention and FFN
are all-gathered (``PrepareModuleInput``). MoE experts are each split like a dense FFN; the
router stays replicated. Top level: the embedding tables are row-parallel over the vocabulary
(or positions), the head column-parallel with its logits gathered, so the loss is plain CE.

Plans are built from the modules a (pipeline-stage) model still has, so no key goes unresolved.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.distributed.tensor.parallel.style import ParallelStyle

from runtime.model import MoE, Transformer


def _ffn_plan(prefix: str, ffn: nn.Module, out_layout) -> dict[str, ParallelStyle]:
    plan: dict[str, ParallelStyle] = {
        f"{prefix}.w1": ColwiseParallel(),
        f"{prefix}.w2": RowwiseParallel(output_layouts=out_layout),
    }
    if ffn.w3 is not None:
        plan[f"{prefix}.w3"] = ColwiseParallel()
    return plan


def block_plan(block: nn.Module, sp: bool) -> dict[str, ParallelStyle]:
    """Styles for one block's submodules, keyed by name relative to the block."""
    seq = Shard(1) if sp else Replicate()  # layout of the residual stream between sublayers
    plan: dict[str, ParallelStyle] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=seq),
    }
    ffn = block.get_submodule("feed_forward")
    if isinstance(ffn, MoE):
        # Experts see a data-dependent subset of the (gathered) tokens, so each expert's row-
        # parallel output is all-reduced to Replicate; under SP the sum is then split along the
        # sequence again (a local slice; its backward is an all-gather).
        for j, expert in ffn.experts.items():
            plan.update(_ffn_plan(f"feed_forward.experts.{j}", expert, Replicate()))
        if ffn.shared_experts is not None:
            plan.update(_ffn_plan("feed_forward.shared_experts", ffn.shared_experts, Replicate()))
        if sp:
            plan["feed_forward"] = PrepareModuleInputOutput(
                input_layouts=(Shard(1),),
                desired_input_layouts=(Replicate(),),
                use_local_input=True,
                output_layouts=(Replicate(),),
                desired_output_layouts=(Shard(1),),
                use_local_output=True,
            )
    else:
        plan.update(_ffn_plan("feed_forward", ffn, seq))
        if sp:
            plan["feed_forward"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    if sp:
        plan["attention_norm"] = SequenceParallel()
        plan["ffn_norm"] = SequenceParallel()
        # (x, rope): gather x along the sequence; rope is a replicated buffer, left alone.
        plan["attention"] = PrepareModuleInput(
            input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)
        )
    return plan


def top_level_plan(model: nn.Module, sp: bool) -> dict[str, ParallelStyle]:
    """Styles for the embeddings, final norm and head that this (stage) model still has."""
    seq = Shard(1) if sp else Replicate()
    plan: dict[str, ParallelStyle] = {}
    if getattr(model, "tok_embeddings", None) is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if sp and getattr(model, "pos_embeddings", None) is not None:
        # Same sequence split as the token embeddings, so the local shards add up position-wise.
        plan["pos_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if getattr(model, "norm", None) is not None and sp:
        plan["norm"] = SequenceParallel()
    if getattr(model, "output", None) is not None:
        plan["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate(), use_local_output=True)
    return plan


def parallelize_block(block: nn.Module, tp_mesh: DeviceMesh, sp: bool) -> nn.Module:
    return parallelize_module(block, tp_mesh, block_plan(block, sp))


def check_divisible(spec, tp: int) -> None:
    """Heads, KV heads and FFN widths must split evenly over ``tp`` ranks."""
    sizes = {"num_heads": spec.num_heads, "num_kv_heads": spec.kv_heads, "ffn_hidden_size": spec.ffn_hidden_size}
    if spec.moe is not None:
        sizes["moe.expert_ffn_hidden_size"] = spec.moe.expert_ffn_hidden_size
    for name, n in sizes.items():
        if n % tp:
            raise ValueError(f"tensor parallel: {name} ({n}) is not divisible by tp ({tp}): {n} % {tp} = {n % tp}")


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, sp: bool) -> None:
    """Tensor-(and sequence-)parallelise a whole (stage) model in place."""
    check_divisible(model.spec, tp_mesh.size())
    for block in model.layers.values():
        parallelize_block(block, tp_mesh, sp)
    parallelize_module(model, tp_mesh, top_level_plan(model, sp))
    # The vocabulary-sharded embedding (rowwise) and head (colwise) shard the same [V, h]
    # matrix on dim 0, so re-sharing the embedding's DTensor keeps the two tied.
    model.tie_weights()
