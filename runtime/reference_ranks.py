"""The reference of context- and expert-parallel plans: every rank's 16-bit arithmetic, in one
process and in lock step (runtime.reference walks dp ranks one after another; cp and ep ranks
cannot be walked apart, because they compute together).

A cp rank's queries attend over the keys of every cp rank, so each key's gradient is the sum of
the cp ranks' bf16 partial gradients; an expert fed by several ep ranks computes its weight
gradient over all of their tokens in one bf16 matmul, where the same tokens split over dp ranks
would be rounded rank by rank. The whole-batch or rank-by-rank reference rounds those sums
elsewhere, and five AdamW steps turn the difference into 1.7e-5 to 7.2e-5 of the loss. So, for
micro-batch i, one forward runs the rows of every dp group together, and:

* each module holding dense parameters runs once per rank ``D = dp_rank·cp + cp_rank`` on the
  tokens that rank holds (its rows; under cp its two chunks of each sequence, runtime.context's
  load-balanced layout re-derived here), in the rank's order, on the rank's own 16-bit casts of
  the fp32 masters (so each rank's 16-bit weight gradient is rounded on its own, then added in
  fp32, as the ranks' reduction does);
* attention (:class:`Context`, in the model's ``cp`` slot): each cp rank's queries over every
  rank's keys in rank order (what the all-gather delivers), with the causal/window mask taken
  from positions; the keys' gradients of the cp ranks are added in fp32 and rounded once, as the
  run's reduce-scatter in fp32 does (runtime.context);
* routed experts (:class:`Experts`, in the model's ``ep`` slot): expert e of ep group j runs
  once, on the 16-bit casts of its holder rank ``j·ep + e div (E/ep)``, on the routed copies of
  the ranks of group j in (source rank, token) order, as the all-to-all delivers them; outputs
  are summed per token in expert order, as the combine does;
* each rank's token-mean loss is backed up with the scale its rank uses; the fp32 gradients,
  summed over ranks and micro-batches, are divided by dp·cp (and by the micro-batch count where
  the pipeline schedules divide the gradients).

One process, the whole unsharded model, no torch.distributed, nothing of runtime.step,
runtime.parallelize, runtime.context or runtime.experts: a missed reduction, a wrong scale or a
token sent to the wrong expert still shows. Learned positions are looked up per rank and
broadcast over the rank's rows, as its ``x + pos`` does. Not mirrored (:func:`supported` says so
and the caller falls back to the rank-by-rank reference): expert capacity (computed per rank's
whole sequences), MoE without ep (the experts then run per rank on gathered copies), parallel
residual blocks (see :func:`supported`), 16-bit gradient reduction (fp16's default, by hand or by
FSDP; bf16 reduces in fp32), more than 64 dp·cp ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.model import MoE, next_token_loss
from runtime.plan_io import model_spec
from runtime.precision import CastCache, cast_buffers
from runtime.reference_tp import MAX_RANKS_HELD

EXPERT_MARK = ".experts."


def supported(plan: dict, reduce: torch.dtype) -> bool:
    """Whether the lock-step reference mirrors this plan (module docstring: what it does not)."""
    p, spec = plan["parallelism"], model_spec(plan)
    if p["cp"] == 1 and p["ep"] == 1:
        return False
    # MoE without ep runs the experts per rank on gathered copies: not mirrored.
    experts_mirrored = spec.moe is None or (p["ep"] > 1 and spec.moe.capacity_factor is None)
    # A parallel-residual block's input feeds both norms and the residual add: the rank adds the
    # three gradients in one order, the lock step (norms per rank, the add merged) in another.
    few_ranks = p["dp"] * p["cp"] <= MAX_RANKS_HELD  # reference_tp's per-sublayer input views
    return reduce == torch.float32 and experts_mirrored and not spec.parallel_residual and few_ranks


def cp_positions(local_len: int, cp: int, rank: int) -> torch.Tensor:
    """Positions held by cp rank ``rank``: chunks ``rank`` and ``2·cp − 1 − rank`` of the 2·cp
    chunks of each sequence (Megatron-LM's load-balanced causal layout)."""
    if cp == 1:
        return torch.arange(local_len)
    c = local_len // 2
    return torch.cat(
        (torch.arange(rank * c, (rank + 1) * c), torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c))
    )


@dataclass(frozen=True)
class Ranks:
    """The plan's ranks as the reference walks them."""

    dp: int
    cp: int
    ep: int
    micro: int
    grads_divided: bool  # pipeline schedules divide the accumulated gradients by ``micro``
    head_copy: bool  # under pp a tied head casts its own copy on the last stage

    @classmethod
    def of(cls, plan: dict) -> Ranks:
        p = plan["parallelism"]
        pp = p["pp"] > 1
        return cls(p["dp"], p["cp"], p["ep"], p["num_micro_batches"], pp, pp and model_spec(plan).tie_embeddings)

    @property
    def size(self) -> int:
        return self.dp * self.cp


class Tokens:
    """Who holds each token of one merged micro-batch ``[dp·b, S]`` (rows of dp rank g at
    ``[g·b, (g+1)·b)``): ``owner [dp·b, S]`` is the rank D, and ``perm`` lists the tokens rank
    by rank, each rank's in row-major order (the order of its ``[b, S/cp]`` tensors)."""

    def __init__(self, ranks: Ranks, rows: int, seq: int):
        pos_rank = torch.zeros(seq, dtype=torch.long)
        for r in range(ranks.cp):
            pos_rank[cp_positions(seq // ranks.cp, ranks.cp, r)] = r
        group = torch.arange(ranks.dp).repeat_interleave(rows)
        self.ranks, self.rows, self.seq = ranks, rows, seq
        self.owner = group[:, None] * ranks.cp + pos_rank[None, :]
        flat = self.owner.flatten()
        self.perm = torch.argsort(flat, stable=True)
        self.inv = torch.argsort(self.perm)
        self.sizes = torch.bincount(flat, minlength=ranks.size).tolist()
        # One slice per rank of each input, shared by the modules it feeds (wq, wk and wv), so a
        # rank's input gradient adds theirs before it reaches the merged tensor, as on the rank.
        self._slices: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    def per_rank(self, x: torch.Tensor, call: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``call(D, x_D)`` for every rank on its tokens of ``x`` (:meth:`rank_slices`), the
        results put back in place."""
        lead = self._lead(x)
        ys = [call(d, part) for d, part in enumerate(self.rank_slices(x))]
        y = torch.cat([y.reshape(-1, *y.shape[lead:]) for y in ys])[self.inv]
        return y.reshape(*x.shape[:lead], *y.shape[1:])

    def rank_slices(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each rank's tokens of ``x [dp·b, S, ...]`` (as the rank holds them: ``[b, S/cp, ...]``)
        or ``[dp·b·S, ...]`` (flat), one slice per rank and tensor, reused by every caller."""
        held = self._slices.get(id(x))
        if held is not None and held[0] is x:
            return held[1]
        lead = self._lead(x)
        parts = x.reshape(self.owner.numel(), *x.shape[lead:])[self.perm].split(self.sizes)
        if lead == 2:
            parts = tuple(part.reshape(self.rows, -1, *part.shape[1:]) for part in parts)
        self._slices[id(x)] = (x, parts)
        return parts

    def _lead(self, x: torch.Tensor) -> int:
        """How many leading dimensions of ``x`` index tokens: 2 (``[dp·b, S]``) or 1 (flat)."""
        if tuple(x.shape[:2]) == tuple(self.owner.shape):
            return 2
        if x.shape[0] != self.owner.numel():
            raise ValueError(
                f"reference: input of shape {tuple(x.shape)} is not per token of {tuple(self.owner.shape)}"
            )
        return 1

    def per_rank_rows(self, idx: torch.Tensor, call: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A lookup ``idx [1, S]`` shared by the rows (learned positions): ``call(D, idx_D)`` on
        rank D's positions, broadcast over its rows as the rank's ``x + pos`` does, put in place."""
        ranks, ys = self.ranks, []
        for d in range(ranks.size):
            y = call(d, idx[:, cp_positions(self.seq // ranks.cp, ranks.cp, d % ranks.cp)])
            ys.append(y.expand(self.rows, *y.shape[1:]).reshape(-1, *y.shape[2:]))
        y = torch.cat(ys)[self.inv]
        return y.reshape(*self.owner.shape, *y.shape[1:])


class Lockstep:
    """The reference model's per-rank casts and the tokens of the current micro-batch."""

    def __init__(self, ranks: Ranks, dtype: torch.dtype):
        self.ranks = ranks
        self.caches = [CastCache(dtype) for _ in range(ranks.size)]
        self.head_caches = [CastCache(dtype) for _ in range(ranks.size)] if ranks.head_copy else self.caches
        self.tokens: Tokens | None = None

    def all_caches(self) -> list[CastCache]:
        return self.caches + (self.head_caches if self.head_caches is not self.caches else [])

    def current(self) -> Tokens:
        assert self.tokens is not None, "reference: no micro-batch set"
        return self.tokens


@contextmanager
def casts(module: nn.Module, cache: CastCache) -> Iterator[None]:
    """``module``'s parameters (its whole subtree) swapped for ``cache``'s 16-bit copies, but for
    a module that casts its own (runtime.reference_tp's SP norms: one cast per sequence shard)."""
    subs = [sub for sub in module.modules() if not getattr(sub, "casts_own_parameters", False)]
    saved = [(sub, name, p) for sub in subs for name, p in sub._parameters.items() if p is not None]
    saved = [(sub, name, p) for sub, name, p in saved if p.dtype != cache.dtype]  # fp32: no copies
    for sub, name, p in saved:
        slots: dict[str, Any] = sub._parameters  # a 16-bit copy, not a Parameter, for the call
        slots[name] = cache.get(p)
    try:
        yield
    finally:
        for sub, name, p in saved:
            sub._parameters[name] = p


def _per_rank_forward(sub: nn.Module, state: Lockstep, head: bool, shared_rows: bool) -> None:
    forward = sub.forward

    @functools.wraps(forward)
    def wrapped(x: torch.Tensor, *args, **kwargs):
        caches = state.head_caches if head else state.caches

        def one(d: int, part: torch.Tensor) -> torch.Tensor:
            with casts(sub, caches[d]):
                return forward(part, *args, **kwargs)

        tokens = state.current()
        return tokens.per_rank_rows(x, one) if shared_rows else tokens.per_rank(x, one)

    sub.forward = wrapped


class Context:
    """Attention of each cp rank's queries over every cp rank's keys (module docstring)."""

    def __init__(self, state: Lockstep):
        self.state = state

    def positions(self, seq: int, device=None) -> torch.Tensor:
        return torch.arange(seq, device=device)  # the merged micro-batch is in position order

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window, gqa: bool):
        cp, rows = self.state.ranks.cp, self.state.current().rows
        seq = q.shape[2]
        held = [cp_positions(seq // cp, cp, r) for r in range(cp)]
        order = torch.cat(held)  # keys as the all-gather lays them out: rank by rank
        out = []
        for g in range(self.state.ranks.dp):
            rows_g = slice(g * rows, (g + 1) * rows)
            k32, v32 = k[rows_g].float(), v[rows_g].float()  # the keys' cp partial gradients meet in fp32
            parts = []
            for pos in held:
                k_all, v_all = k32[:, :, order].to(k.dtype), v32[:, :, order].to(v.dtype)
                mask = _mask(pos, order, causal, window)
                parts.append(
                    F.scaled_dot_product_attention(q[rows_g][:, :, pos], k_all, v_all, attn_mask=mask, enable_gqa=gqa)
                )
            out.append(torch.cat(parts, dim=2)[:, :, torch.argsort(order)])
        return torch.cat(out)


def _mask(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor | None:
    """Rows ``q_pos``, columns ``k_pos`` of the whole sequence's mask as the single-process model
    applies it (causal: lower triangle; a window of w: the band of w diagonals, both sides when
    bidirectional); None where that model passes no mask."""
    if window is None and not causal:
        return None
    seq = int(max(q_pos.max(), k_pos.max())) + 1
    full = torch.ones(seq, seq, dtype=torch.bool)
    if causal:
        full = full.tril()
    if window is not None:
        full = full.triu(-(window - 1)) & full.tril(window - 1)
    return full[q_pos][:, k_pos]


class Experts:
    """Routed experts run per holder rank on the copies its ep group sends (module docstring)."""

    def __init__(self, state: Lockstep, num_experts: int):
        self.state, self.num_experts = state, num_experts

    def dispatch_combine(self, t, top_idx, weights, experts: nn.ModuleDict, keep) -> torch.Tensor:
        """Routed output for the merged tokens ``t [n, h]``. Each rank gathers its routed copies
        once, sorted by expert, from its own slice of ``t`` (the slice its router and shared
        experts read too, so their input gradients meet on it in the run's order); expert e of
        ep group j runs on the group's copies by source rank; each rank combines its outputs."""
        tokens, k = self.state.current(), top_idx.shape[1]
        flat = torch.where(keep, top_idx, self.num_experts)  # dropped copies: past the last expert
        sent = []  # per rank: the gathered copies split by expert, their order, their weights
        for part, tok in zip(tokens.rank_slices(t), tokens.perm.split(tokens.sizes)):
            copies = flat[tok].reshape(-1)
            order = torch.argsort(copies, stable=True)
            counts = torch.bincount(copies, minlength=self.num_experts + 1)[: self.num_experts]
            order = order[: int(counts.sum())]
            rows = part[order // k].split(counts.tolist())  # the run's t[order // k]
            sent.append((rows, order, weights[tok].reshape(-1)[order]))
        outputs = self._run_experts([rows for rows, _, _ in sent], experts)
        combined = [
            torch.zeros_like(part).index_add(0, order // k, torch.cat(ys) * w[:, None])
            for part, (_, order, w), ys in zip(tokens.rank_slices(t), sent, outputs)
        ]
        return torch.cat(combined)[tokens.inv]

    def _run_experts(self, rows: list[tuple[torch.Tensor, ...]], experts: nn.ModuleDict) -> list[list[torch.Tensor]]:
        """``rows[d][e]``: rank d's copies for expert e. Expert e of ep group j runs once on the
        group's copies in source-rank order, on its holder's casts; outputs go back per rank."""
        ep, local = self.state.ranks.ep, self.num_experts // self.state.ranks.ep
        outputs: list[list[torch.Tensor]] = [[] for _ in rows]
        for e in range(self.num_experts):
            for j in range(len(rows) // ep):
                sources = range(j * ep, (j + 1) * ep)
                with casts(experts[str(e)], self.state.caches[j * ep + e // local]):
                    y = experts[str(e)](torch.cat([rows[d][e] for d in sources]))
                for d, y_d in zip(sources, y.split([len(rows[d][e]) for d in sources])):
                    outputs[d].append(y_d)
        return outputs


def install(model: nn.Module, ranks: Ranks, dtype: torch.dtype) -> Lockstep:
    """Make ``model`` (fp32, unsharded) compute as the plan's ranks do (module docstring)."""
    state = Lockstep(ranks, dtype)
    cast_buffers(model, dtype)
    head, positions = getattr(model, "output", None), getattr(model, "pos_embeddings", None)
    for name, sub in model.named_modules():
        if isinstance(sub, MoE):
            sub.ep = Experts(state, sub.num_experts)  # type: ignore[assignment]  # the slot's interface
        if (hasattr(sub, "wq") or sub is model) and ranks.cp > 1:
            sub.cp = Context(state)  # Attention's and the positions' slot, same interface
        direct = any(p is not None for p in sub._parameters.values())
        if direct and EXPERT_MARK not in f".{name}.":
            _per_rank_forward(sub, state, head=sub is head, shared_rows=sub is positions)
    return state


def lockstep_gradients(model: nn.Module, state: Lockstep, batch: torch.Tensor, loss_scale: float = 1.0) -> float:
    """Fill ``.grad`` with the gradient of the batch mean loss as the plan's ranks compute it;
    returns the mean over ranks of each rank's mean loss over its micro-batches."""
    ranks = state.ranks
    groups = [rows.chunk(ranks.micro) for rows in batch.chunk(ranks.dp)]
    total = 0.0
    for i in range(ranks.micro):
        merged = torch.cat([g[i] for g in groups])
        tokens = state.tokens = Tokens(ranks, groups[0][i].shape[0], merged.shape[1] - 1)
        logits, targets = model(merged[:, :-1]), merged[:, 1:]
        per_rank = zip(tokens.rank_slices(logits), tokens.rank_slices(targets))
        losses = [next_token_loss(lg, tg) for lg, tg in per_rank]
        scale = loss_scale if ranks.grads_divided else loss_scale / ranks.micro
        torch.stack(losses).mul(scale).sum().backward()
        total += float(torch.stack([loss.detach() for loss in losses]).sum())
    divide = ranks.size * (ranks.micro if ranks.grads_divided else 1)
    for p in model.parameters():
        if p.grad is not None:
            p.grad /= divide
    return total / (ranks.micro * ranks.size)
