"""The training recipe: optimizer, precision, gradient clipping and learning-rate schedule, as data.

No torch import (``autopar run``'s options read it). :mod:`runtime.optim` turns a recipe into
torch objects; :func:`runtime.train.train_rank` and :func:`runtime.train.run_reference` both
follow it, so a parallel run and the single-process reference do the same arithmetic.

Defaults are torchtitan's (0.3.0, the stack the ``autopar`` runtime resembles most: FSDP2,
DTensor TP, torch.distributed.pipelining):

* AdamW, lr 8e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1:
  ``torchtitan/components/optimizer/optimizer.py`` ``default_adamw``;
* gradient clipping at global norm 1.0: ``torchtitan/config/configs.py`` ``Training.max_norm``;
* linear warm-up over 200 steps, clamped to the run's steps, then decay to ``min_lr_ratio`` x lr
  (``min_lr_factor`` 0.0): ``torchtitan/components/optimizer/lr_scheduler.py``
  ``linear_warmup_stable_decay`` (whose formula :func:`lr_factor` copies); the decay is cosine
  here (torchtitan offers ``decay_type`` cosine; its default is linear) as issue 20 asks;
* mixed precision: fp32 parameters, 16-bit compute, fp32 gradient reduction
  (``Training.mixed_precision_param`` bfloat16, ``mixed_precision_reduce`` float32).

SGD (lr :data:`runtime.defaults.DEFAULT_LR`, no clipping, constant rate) stays for the parity
tests: Adam is scale-invariant and would hide a wrongly scaled gradient (:data:`SGD_PARITY`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from runtime.defaults import DEFAULT_LR
from runtime.plan_io import PlanError

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")
ADAMW_LR = 8e-4  # torchtitan default_adamw
ADAMW_WEIGHT_DECAY = 0.1  # torchtitan default_adamw
WARMUP_STEPS = 200  # torchtitan LRScheduler.warmup_steps
CLIP_GRAD_NORM = 1.0  # torchtitan Training.max_norm


@dataclass(frozen=True)
class Recipe:
    """How a run optimises. ``lr`` None: the optimizer's default (AdamW 8e-4, SGD 0.1);
    ``weight_decay`` None: AdamW 0.1, SGD 0; ``clip_grad_norm`` None or 0: no clipping;
    ``precision`` auto: the plan's ``training.dtype`` (fp8 computes its activations in bf16)."""

    optimizer: str = "adamw"
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float | None = None
    warmup_steps: int = WARMUP_STEPS
    min_lr_ratio: float = 0.0
    schedule: str = "cosine"
    clip_grad_norm: float | None = CLIP_GRAD_NORM
    precision: str = "auto"

    def __post_init__(self) -> None:
        checks = (
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})",
            ),
            (
                self.precision in PRECISIONS,
                f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})",
            ),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.warmup_steps >= 0, f"--warmup-steps must be >= 0 (got {self.warmup_steps})"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio})"),
            (
                self.clip_grad_norm is None or self.clip_grad_norm >= 0,
                f"--clip-grad-norm must be >= 0 (got {self.clip_grad_norm})",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return ADAMW_LR if self.optimizer == "adamw" else DEFAULT_LR

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return ADAMW_WEIGHT_DECAY if self.optimizer == "adamw" else 0.0

    @property
    def max_norm(self) -> float | None:
        return self.clip_grad_norm or None

    def compute_dtype(self, plan: dict) -> str:
        """fp32, bf16 or fp16: the dtype forward and backward run in (parameters stay fp32)."""
        name = plan["inputs"]["training"]["dtype"] if self.precision == "auto" else self.precision
        return "bf16" if name == "fp8" else name

    def reduce_dtype(self, plan: dict) -> str:
        """The dtype gradients cross the wire in, as the planner prices it (planner.config
        ``grad_reduce_bytes``): fp32 unless the plan's stack says bf16, or fp16 compute below
        ZeRO-3 with ``grad_reduce_dtype`` auto (Megatron's fp16 default)."""
        compute, t = self.compute_dtype(plan), plan["inputs"]["training"]
        asked = t.get("grad_reduce_dtype", "auto")
        if compute == "fp32":
            return "fp32"
        if asked == "auto":
            return "fp16" if compute == "fp16" and plan["parallelism"]["zero_stage"] < 3 else "fp32"
        return asked if asked in ("fp32", "bf16") else "fp32"

    def with_(self, **changes) -> Recipe:
        return replace(self, **changes)


# The parity tests' recipe: plain SGD at a rate that moves the debug models visibly.
SGD_PARITY = Recipe(optimizer="sgd", lr=DEFAULT_LR, warmup_steps=0, schedule="constant", clip_grad_norm=None)


def lr_factor(recipe: Recipe, steps: int, step: int) -> float:
    """The multiple of the peak rate at 0-based ``step`` of ``steps``: torchtitan's
    ``linear_warmup_stable_decay`` with its one stable step: warm-up ``(step + 1) / warmup``, 1 at
    ``step == warmup``, then a cosine from 1 towards ``min_lr_ratio``, progress
    ``(step - warmup) / (steps - warmup)``. Warm-up is clamped to ``steps`` (as torchtitan does)."""
    warmup = min(recipe.warmup_steps, steps)
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "constant" or step == warmup:
        return 1.0
    progress = (step - warmup) / (steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine


# `autopar run` / `python -m runtime.launch` flags that set a recipe field: (field, flag, type, help).
RECIPE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("optimizer", "--optimizer", str, "adamw or sgd (sgd: the parity tests' optimizer)."),
    ("lr", "--lr", float, f"Peak learning rate (default: AdamW {ADAMW_LR:g}, SGD {DEFAULT_LR:g})."),
    (
        "weight_decay",
        "--weight-decay",
        float,
        f"Decoupled weight decay (default: AdamW {ADAMW_WEIGHT_DECAY:g}, SGD 0).",
    ),
    ("warmup_steps", "--warmup-steps", int, f"Linear warm-up steps, clamped to --steps (default {WARMUP_STEPS})."),
    ("min_lr_ratio", "--min-lr-ratio", float, "Cosine decay floor as a fraction of the peak rate (default 0)."),
    (
        "clip_grad_norm",
        "--clip-grad-norm",
        float,
        f"Clip gradients to this global norm; 0 = off (default {CLIP_GRAD_NORM:g}).",
    ),
    (
        "precision",
        "--precision",
        str,
        "auto, fp32, bf16 or fp16 compute over fp32 parameters (auto: the plan's dtype).",
    ),
)


def recipe_from(values: dict) -> Recipe:
    """A recipe from flag values by field name; None (a flag not given) keeps the default.
    A bad value raises PlanError (the CLI's bad input: one line, exit 2)."""
    try:
        return Recipe(**{name: values[name] for name, *_ in RECIPE_FLAGS if values.get(name) is not None})
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def recipe_argv(recipe: Recipe) -> str:
    """The flags that reproduce ``recipe`` (the torchrun line of a multi-node run)."""
    default, parts = Recipe(), []
    for name, flag, *_ in RECIPE_FLAGS:
        value = getattr(recipe, name)
        if value != getattr(default, name):
            parts.append(f"{flag} {value}")
    return " ".join(parts)
