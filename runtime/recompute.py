"""Activation recomputation of one block: "none", "selective", "full" or a kept set.

* full: the whole block runs under non-reentrant ``torch.utils.checkpoint``; only its input is
  kept and the forward is replayed in backward.
* selective: ``create_selective_checkpoint_contexts`` with an op policy that keeps (MUST_SAVE) the
  outputs of the matmuls and of the attention kernel, the expensive ops, and recomputes the rest
  (norms, activations, RoPE, residual adds, elementwise products, collectives) in backward. This
  is torchtitan's "op" SAC policy without its every-other-matmul thinning.
* a kept set ``keep:attn.q+attn.v+ffn.down_out`` (planner/kept_sets.py, a point of the block's
  Pareto front that the planner chose): the same selective checkpointing, with a policy that
  keeps (MUST_SAVE) exactly the listed tensors and recomputes every other op. A matmul output is
  found by its position among the block's matmuls in forward order (``MATMUL_OUTPUTS``: wq, wk,
  wv, wo, then w1, w3, w2 — torchtitan's op policy counts ``mm`` calls the same way), the
  attention outputs by the SDPA kernel; the counts restart for each forward and each recompute
  (``ctx.is_recompute``), so both passes make the same decisions.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from planner.kept_sets import ATTENTION_OUTPUTS, MATMUL_OUTPUTS, is_kept_set, kept_names, runtime_refusal
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


MATMUL_OPS = frozenset({_aten.mm.default, _aten.addmm.default})
ATTENTION_OPS = SAVED_OPS - MATMUL_OPS - {_aten.bmm.default}


class KeptSetPolicy:
    """The SAC policy of one block under a kept set (module docstring). ``saved`` lists, for the
    latest forward, the tensor names whose producing op the policy kept, in forward order."""

    def __init__(self, value: str, gated: bool) -> None:
        why = runtime_refusal(value, gated)
        if why:
            raise ValueError(why)
        names = set(kept_names(value))
        self.order = MATMUL_OUTPUTS[gated]
        self.matmuls = frozenset(i for i, n in enumerate(self.order) if n in names)
        self.attention = bool(names & set(ATTENTION_OUTPUTS))
        self.saved: list[str] = []

    def contexts(self):
        """Fresh forward/recompute contexts for one call of the block (its own op counts)."""
        counts = {"forward": 0, "recompute": 0}

        def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
            mode = "recompute" if ctx.is_recompute else "forward"
            name = None
            if func in MATMUL_OPS:
                i = counts[mode]
                counts[mode] += 1
                if i == 0 and mode == "forward":
                    self.saved = []
                name = self.order[i] if i in self.matmuls else None
            elif func in ATTENTION_OPS and self.attention:
                name = "+".join(ATTENTION_OUTPUTS)
            if name is None:
                return CheckpointPolicy.PREFER_RECOMPUTE
            if mode == "forward":
                self.saved.append(name)
            SavedTensorMeter.note_cached(ctx.op_output)
            return CheckpointPolicy.MUST_SAVE

        return create_selective_checkpoint_contexts(policy)


_POLICIES: weakref.WeakKeyDictionary[nn.Module, KeptSetPolicy] = weakref.WeakKeyDictionary()


def kept_set_policy(block: nn.Module) -> KeptSetPolicy | None:
    """The policy of a block ``checkpoint_block`` wrapped for a kept set (what it kept last)."""
    return _POLICIES.get(block)


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
    if is_kept_set(mode):
        ffn = getattr(block, "feed_forward", None)
        if not hasattr(ffn, "w1"):
            raise ValueError(
                f"recompute {mode!r}: kept sets apply to dense blocks (this one's FFN is {type(ffn).__name__})"
            )
        policy = KeptSetPolicy(mode, getattr(ffn, "w3", None) is not None)
        wrapped = checkpoint_wrapper(block, context_fn=policy.contexts)
        _POLICIES[wrapped] = policy
        return wrapped
    raise ValueError(f"recompute mode {mode!r} is not one of {RECOMPUTE_MODES} or a kept set keep:<tensor>+<tensor>")
