"""Activation recomputation of one block: "none", "selective" or "full".

* full: the whole block runs under non-reentrant ``torch.utils.checkpoint``; only its input is
  kept and the forward is replayed in backward.
* selective: ``create_selective_checkpoint_contexts`` with an op policy that keeps (MUST_SAVE) the
  outputs of the matmuls and of the attention kernel, the expensive ops, and recomputes the rest
  (norms, activations, RoPE, residual adds, elementwise products, collectives) in backward. This
  is torchtitan's "op" SAC policy without its every-other-matmul thinning.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from runtime.memory import SavedTensorMeter

RECOMPUTE_MODES = ("none", "selective", "full")

_aten = torch.ops.aten
# Ops whose outputs selective recompute keeps: the matmuls of F.linear (mm, or addmm with a
# bias), bmm, and each SDPA backend (CPU flash, CUDA flash / memory-efficient / cuDNN).
SAVED_OPS = frozenset(
    {
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
    }
)


def _save_matmuls_and_attention(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    if func in SAVED_OPS:
        # SAC caches these outside autograd's saved tensors: tell the meter, if one is counting.
        SavedTensorMeter.note_cached(ctx.op_output)
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_block(block: nn.Module, mode: str) -> nn.Module:
    """``block`` wrapped for recompute ``mode``; the block itself when mode is "none"."""
    if mode == "none":
        return block
    if mode == "full":
        return checkpoint_wrapper(block)
    if mode == "selective":
        context_fn = functools.partial(create_selective_checkpoint_contexts, _save_matmuls_and_attention)
        return checkpoint_wrapper(block, context_fn=context_fn)
    raise ValueError(f"recompute mode {mode!r} is not one of {RECOMPUTE_MODES}")
