"""`autopar explain --infeasible`: the minimal set of constraints that conflict, and advice.

1. Verdict. Heuristic plans for the candidates most likely to fit, then branch and bound over
   every outer candidate (planner.search.bnb) within half the time limit: a plan found
   means the problem is feasible; every candidate pruned by its model states or proven
   infeasible by its placement MILP means it is not.
2. Conflicts, each a set of constraints that cannot hold together (drop one and it can):
   * global batch: no split dp · tp · pp · cp = GPUs passes the checks — tp is capped by the
     heads and the node, pp by the layers, and the dp left over must divide the global batch;
   * model states: capacity < the smallest per-GPU model states over all candidates (16 B per
     parameter for mixed-precision Adam, ZeRO §3). With ZeRO-3 over dp · cp and tp · pp
     splitting the weights, every split shards them over all N GPUs, so only N and the
     capacity are in the conflict;
   * activations: the states fit, but states + one micro-batch of activations at full recompute
     (the closest plan, ``planner.commands.plan.closest_plan``) exceed capacity.
3. Advice, every figure from ``estimate`` of a real plan: the fewest GPUs at which a plan fits
   (doubling, then bisection), the HBM per GPU the closest plan needs (and presets with that
   much), the longest sequence that fits it, the smallest global batch that admits a split.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from hardware.cluster import ClusterSpec
from hardware.gpu import list_gpus, load_gpu
from models.errors import SpecError
from planner.commands.explain_rows import ExplainReport, GiB, over_text
from planner.commands.plan import closest_plan
from planner.config import PlanError
from planner.cost import memory as mem
from planner.cost.estimate import Estimate, estimate
from planner.inputs import override, parse_sets
from planner.knobs import Knobs
from planner.planfile.build import parallel_dict
from planner.planfile.schema import SCHEMA_VERSION
from planner.search.bnb import Pool, best_known, branch_and_bound
from planner.search.candidates import enumerate_candidates
from planner.search.context import SearchContext, SearchStatus
from planner.search.heuristics import least_memory_proxy_bytes
from planner.search.kept_options import kept_sets_allowed

WARM = 6  # heuristic plans tried per cluster size when searching for the fewest GPUs
MAX_GPUS_FACTOR = 64  # give up on "more GPUs" beyond this many times the GPUs
CLOSEST = 32  # candidates (least memory first) scored for the plan closest to fitting


def _pool(spec, cluster, train, knobs: Knobs, backend: str = "ortools", gap: float = 0.01) -> Pool:
    return Pool(
        SearchContext.build(spec, cluster, train, knobs.options(), backend, gap, kept_sets_allowed(knobs)), knobs
    )


def quick_fit(spec, cluster, train, knobs: Knobs) -> Estimate | None:
    """A plan that fits, from heuristic plans of the few candidates most likely to (or None)."""
    try:
        pool = _pool(spec, cluster, train, knobs)
        cands = pool.candidates()
    except SpecError:
        return None
    for k in range(WARM):
        pool.warm(cands, k)
    return min((c.best for c in cands if c.best), key=lambda e: e.step_time_s, default=None)


def grow(cluster: ClusterSpec, gpus: int) -> ClusterSpec:
    """The cluster with ``gpus`` GPUs: a single partial node fills up to the preset's node size
    first, then whole nodes are added (the ``GPU:N`` shorthand's rule)."""
    per = cluster.gpus_per_node
    if cluster.num_nodes == 1 and per < cluster.gpu.gpus_per_node:
        per = cluster.gpu.gpus_per_node
    nodes, gpn = (1, gpus) if gpus <= per else (gpus // per, per)
    sets = parse_sets(
        [f"cluster.num_nodes={nodes}", f"cluster.gpus_per_node={gpn}", f"cluster.name={cluster.gpu.name}:{nodes * gpn}"]
    )
    return override(cluster, sets["cluster"], ClusterSpec, "cluster")


def fewest_gpus(spec, cluster, train, knobs: Knobs, deadline: float) -> tuple[int, Estimate] | None:
    """The fewest GPUs at which a heuristic plan fits: doubling, then bisection over the counts
    ``grow`` can build (powers of two within a node, whole nodes beyond)."""
    n = cluster.num_gpus
    per = max(cluster.gpus_per_node, cluster.gpu.gpus_per_node if cluster.num_nodes == 1 else 1)
    lo, hi, found = n, None, None
    while lo * 2 <= n * MAX_GPUS_FACTOR and time.perf_counter() < deadline:
        e = quick_fit(spec, grow(cluster, lo * 2), train, knobs)
        if e is not None:
            hi, found = lo * 2, e
            break
        lo *= 2
    if hi is None:
        return None
    sizes = [g for g in range(lo + 1, hi) if (g <= per and g & (g - 1) == 0) or g % per == 0]
    while sizes and time.perf_counter() < deadline:
        mid = sizes[len(sizes) // 2]
        e = quick_fit(spec, grow(cluster, mid), train, knobs)
        if e is not None:
            hi, found, sizes = mid, e, [g for g in sizes if g < mid]
        else:
            sizes = [g for g in sizes if g > mid]
    assert found is not None  # set together with hi
    return hi, found


def longest_sequence(spec, cluster, train, par) -> tuple[int, Estimate] | None:
    """The longest sequence, a multiple of 256 tokens below the current one, at which ``par``
    fits (bisection: activation memory grows with the sequence)."""

    def fits(k: int) -> Estimate | None:
        try:
            e = estimate(spec, cluster, replace(train, seq_len=k * 256), par)
        except PlanError:
            return None
        return e if e.fits else None

    lo, hi, best = 0, (train.seq_len - 1) // 256 + 1, None  # k <= lo fits (0: none yet), k >= hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        e = fits(mid)
        lo, hi, best = (mid, hi, e) if e else (lo, mid, best)
    return (lo * 256, best) if best is not None else None


def _states_conflict(pool: Pool, train, all_cands) -> dict | None:
    c = min(all_cands, key=lambda c: (c.mem_lb_bytes, least_memory_proxy_bytes(c, train.global_batch)))
    if c.mem_lb_bytes <= pool.ctx.cap_bytes:
        return None
    return {
        "name": "model_states",
        "constraints": [
            "memory capacity per GPU",
            "model states (weights, gradients, Adam states)",
            "largest sharding the GPU count allows",
        ],
        "needed_bytes": c.mem_lb_bytes,
        "capacity_bytes": pool.ctx.cap_bytes,
        "plan": c.par.describe("full"),
        "text": f"model states alone need {c.mem_lb_bytes / GiB:.2f} GiB per GPU even at the most sharded "
        f"candidate ({c.par.describe('full')}), over the {pool.ctx.cap_bytes / GiB:.2f} GiB usable",
    }


def _activation_conflict(closest: Estimate) -> dict:
    r = max(closest.over, key=lambda x: x[1])[0]
    m = closest.predicted.stages[r].memory
    states = m.weights_bytes + m.gradients_bytes + m.optimizer_bytes
    act, transient = m.activations_bytes, m.transient_bytes
    return {
        "name": "activations",
        "constraints": ["memory capacity per GPU", "model states", "activations of one micro-batch at full recompute"],
        "states_bytes": states,
        "activations_bytes": act,
        "transient_bytes": transient,
        "text": f"the states fit, but with full recompute and micro-batch {closest.par.micro_batch} the closest "
        f"plan ({closest.par.describe('full')}) holds {states / GiB:.2f} GiB of states + {act / GiB:.2f} GiB of "
        f"activations + {transient / GiB:.2f} GiB transient: {over_text(closest)}",
    }


def _memory_advice(closest: Estimate) -> dict:
    need = closest.predicted.peak_memory_bytes + mem.CONTEXT_BYTES
    presets = [g for g in list_gpus() if load_gpu(g).hbm_bytes >= need and g != "cpu"]
    return {
        "change": "more memory per GPU",
        "hbm_bytes": need,
        "text": f"GPUs with at least {need / GiB:.2f} GiB of HBM would hold the closest plan "
        f"({closest.par.describe('full')})" + (f", e.g. {', '.join(presets)}" if presets else ""),
    }


def _sequence_advice(spec, cluster, train, closest: Estimate) -> list[dict]:
    seq = longest_sequence(spec, cluster, train, closest.par)
    if not seq:
        return []
    return [
        {
            "change": f"seq-len {seq[0]}",
            "seq_len": seq[0],
            "parallelism": parallel_dict(closest.par, seq[1].predicted.num_micro_batches),
            "text": f"sequences of at most {seq[0]} tokens fit with {closest.par.describe('full')} "
            f"({seq[1].predicted.peak_memory_bytes / GiB:.2f} GiB)",
        }
    ]


def _no_valid_split(spec, cluster, train, knobs: Knobs) -> tuple[list[dict], list[dict]]:
    """No (dp, tp, pp, cp) split passes the checks: is it the global batch's divisibility?"""
    n = cluster.num_gpus
    b2 = next(
        (
            b
            for b in range(train.global_batch + 1, math.ceil(train.global_batch / n) * n + 1)
            if enumerate_candidates(spec, cluster, replace(train, global_batch=b), knobs)[0]
        ),
        None,
    )
    if b2 is not None:
        e = quick_fit(spec, cluster, replace(train, global_batch=b2), knobs)
        conflict = {
            "name": "global_batch_divisibility",
            "constraints": [
                "dp divides the global batch",
                "tp, pp, cp limits (heads, layers, node size)",
                "dp * tp * pp * cp = GPUs",
            ],
            "text": f"no split of the {n} GPUs into dp x tp x pp x cp passes the checks with a global batch "
            f"of {train.global_batch}: tp and pp cannot cover the GPUs, and the dp left over does "
            f"not divide the batch",
        }
        advice = {
            "change": f"global batch {b2}",
            "fits": e is not None,
            "text": f"a global batch of {b2} (the smallest above {train.global_batch}) admits valid splits"
            + (f"; e.g. {e.par.describe('full')} fits, {e.predicted.step_time_s:.3f} s per step" if e else ""),
        }
        return [conflict], [advice]
    raise SpecError(
        "no valid parallel configuration for these inputs (every combination fails the divisibility "
        "checks); check --global-batch and the model's head counts against the GPUs"
    )


def _conflicts(spec, cluster, train, knobs: Knobs, pool: Pool, cands) -> tuple[list[dict], list[dict], Estimate | None]:
    """Conflicts and the advice specific to them; also the plan closest to fitting."""
    conflicts, advice = [], []
    states = _states_conflict(pool, train, cands)
    ranked = sorted(cands, key=lambda c: least_memory_proxy_bytes(c, train.global_batch))
    found = closest_plan(spec, cluster, train, [c.par for c in ranked[:CLOSEST]], knobs.options())
    closest = found[0] if found and found[0].over else None
    if states:
        conflicts.append(states)
    elif closest is not None:
        conflicts.append(_activation_conflict(closest))
        advice += _sequence_advice(spec, cluster, train, closest)
    return conflicts, advice, closest


def explain_infeasible(spec, cluster, train, knobs: Knobs, time_limit_s: float) -> ExplainReport:
    """The --infeasible report; see the module docstring. ``fits``: a plan fits (exit 0)."""
    doc = _infeasible_doc(spec, cluster, train, knobs, time_limit_s)
    return ExplainReport(doc, doc["verdict"] == "feasible", doc["wall_s"])


def _infeasible_doc(spec, cluster, train, knobs: Knobs, time_limit_s: float) -> dict:
    t0 = time.perf_counter()
    pool = _pool(spec, cluster, train, knobs)
    cands = pool.candidates()
    head = _head(spec, cluster, train, pool.ctx.cap_bytes, len(cands))
    if not cands:
        conflicts, advice = _no_valid_split(spec, cluster, train, knobs)
        text = "no valid split of the GPUs"
        return head | {
            "verdict": "infeasible",
            "conflicts": conflicts,
            "advice": advice,
            "text": text,
            "wall_s": time.perf_counter() - t0,
        }
    for k in range(WARM):
        pool.warm(cands, k)
    ans = branch_and_bound(pool, cands, best_known(cands), pool.ctx.gap, t0 + time_limit_s / 2)
    head["memory_pruned"] = ans.memory_pruned
    if ans.best is not None:
        p = ans.best.predicted
        plan = {
            "plan": ans.best.par.describe("full"),
            "step_time_s": p.step_time_s,
            "peak_memory_bytes": p.peak_memory_bytes,
        }
        text = f"a plan fits: {plan['plan']}, {p.step_time_s:.3f} s per step (run `autopar plan` for the best one)"
        return head | {
            "verdict": "feasible",
            "conflicts": [],
            "advice": [],
            "plan": plan,
            "text": text,
            "wall_s": time.perf_counter() - t0,
        }
    conflicts, advice, closest = _conflicts(spec, cluster, train, knobs, pool, cands)
    advice = _gpu_advice(spec, cluster, train, knobs, t0 + time_limit_s) + advice
    if closest is not None:
        advice.append(_memory_advice(closest))
    proven = ans.status == SearchStatus.INFEASIBLE
    text = (
        "no plan fits"
        if proven
        else f"no plan found within the time limit (not proven infeasible: lower bound {ans.bound_s:.3f} s)"
    )
    return head | {
        "verdict": "infeasible" if proven else "unknown",
        "conflicts": conflicts,
        "advice": advice,
        "text": text,
        "wall_s": time.perf_counter() - t0,
    }


def _head(spec, cluster, train, cap_bytes: float, candidates: int) -> dict:
    """The report's fields that do not depend on the verdict (each return sets ``wall_s``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "explain_infeasible",
        "model": spec.name,
        "cluster": cluster.name,
        "global_batch": train.global_batch,
        "seq_len": train.seq_len,
        "capacity_bytes": cap_bytes,
        "candidates": candidates,
        "plan": None,
        "memory_pruned": 0,
        "wall_s": 0.0,
    }


def _gpu_advice(spec, cluster, train, knobs: Knobs, deadline: float) -> list[dict]:
    """The fewest GPUs at which a plan fits, with that plan (none when no count up to the cap does)."""
    more = fewest_gpus(spec, cluster, train, knobs, deadline)
    if not more:
        return []
    e = more[1]
    return [
        {
            "change": f"{more[0]} GPUs",
            "gpus": more[0],
            "cluster": e.cluster.name,
            "parallelism": parallel_dict(e.par, e.predicted.num_micro_batches),
            "text": f"{more[0]} GPUs ({e.cluster.num_nodes} x {e.cluster.gpus_per_node}): e.g. "
            f"{e.par.describe('full')} fits at {e.predicted.peak_memory_bytes / GiB:.2f} GiB, "
            f"{e.predicted.step_time_s:.3f} s per step",
        }
    ]
