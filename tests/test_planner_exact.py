"""The planner's optimum equals brute-force enumeration over the same space and cost model."""

from __future__ import annotations

import itertools
import random

import pytest

from hardware.cluster import load_cluster
from models.spec import ModelSpec
from planner.config import PlanError, Training
from planner.cost.estimate import estimate
from planner.search.milp.placement import chunk_size_ranges
from planner.search import Knobs, enumerate_candidates, search


def _compositions(total: int, parts: int):
    """Ordered ways to write ``total`` as ``parts`` non-negative integers (the planner's space
    filters them by ``chunk_size_ranges``: every chunk holds at least one block)."""
    for cuts in itertools.combinations_with_replacement(range(total + 1), parts - 1):
        edges = (0,) + cuts + (total,)
        yield tuple(edges[i + 1] - edges[i] for i in range(parts))


def _recompute_choices(sizes, options):
    """Per chunk, how many blocks take each option (identical blocks: order inside a chunk is moot)."""
    per_chunk = []
    for k in sizes:
        per_chunk.append([c for c in itertools.product(range(k + 1), repeat=len(options)) if sum(c) == k])
    for combo in itertools.product(*per_chunk):
        yield tuple(o for counts in combo for o, c in zip(options, counts) for _ in range(c))


def brute_force(spec, cluster, train, knobs: Knobs) -> float:
    best = float("inf")
    options = knobs.get("recompute", ("none", "selective", "full"))
    pars, _ = enumerate_candidates(spec, cluster, train, knobs)
    for par in pars:
        ranges = chunk_size_ranges(spec.num_layers, par.chunks, par.schedule)
        for sizes in _compositions(spec.num_layers, par.chunks):
            if any(k < lo or (hi is not None and k > hi) for k, (lo, hi) in zip(sizes, ranges)):
                continue
            for rc in _recompute_choices(sizes, options):
                try:
                    e = estimate(spec, cluster, train, par.with_(stage_layers=sizes, recompute=rc))
                except PlanError:
                    continue
                if e.fits:
                    best = min(best, e.predicted["step_time_s"])
    return best


def _instance(seed: int):
    rng = random.Random(seed)
    layers = rng.choice([2, 3, 4, 5, 6, 8, 12, 16])
    heads = rng.choice([4, 8])
    hidden = heads * rng.choice([16, 32, 64])
    spec = ModelSpec(name=f"rand{seed}", num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=rng.choice([heads, heads // 2]), ffn_hidden_size=hidden * 4 if rng.random() < .5 else hidden * 3,
                     vocab_size=rng.choice([256, 1024, 32000]), max_seq_len=512, tie_embeddings=rng.random() < .3)
    gpus = rng.choice([1, 2, 4, 8, 16, 32, 64])
    gpu = rng.choice(["a100-sxm-80gb", "h100-sxm-80gb", "cpu"])
    cluster = load_cluster(f"{gpu}:{gpus}")
    seq = rng.choice([128, 256, 512])
    train = Training(gpus * rng.choice([1, 2, 4]) * 4, seq, "fp32" if gpu == "cpu" else "bf16")
    # Keep brute force tractable: at most 2 pipeline chunks when layers are many.
    pps = [p for p in (1, 2, 4) if gpus % p == 0 and p <= layers and (layers <= 6 or p <= 2)]
    knobs = Knobs({"pp": tuple(pps), "tp": tuple(t for t in (1, 2) if gpus % t == 0), "cp": (1,),
                   "micro_batch": (1, 2), "zero": tuple(rng.sample([0, 1, 2, 3], 2)),
                   "schedule": ("1f1b", "gpipe", "interleaved") if layers <= 6 else ("1f1b",), "vpp": (2,),
                   "recompute": ("none", "full") if layers > 6 else ("none", "selective", "full")})
    # Squeeze memory on some instances so recompute and ZeRO matter.
    if rng.random() < 0.4:
        cluster = load_cluster(f"{gpu}:{gpus}", {"gpu": {"hbm_bytes": int(1.2 * 2**30) + rng.randint(0, 2**28)}})
    return spec, cluster, train, knobs


@pytest.mark.parametrize("seed", range(50))
def test_planner_matches_brute_force(seed):
    spec, cluster, train, knobs = _instance(seed)
    expected = brute_force(spec, cluster, train, knobs)
    res = search(spec, cluster, train, knobs, gap=0.0, time_limit_s=60)
    if expected == float("inf"):
        assert res.best is None
        return
    got = res.best.predicted["step_time_s"]
    assert got == pytest.approx(expected, rel=1e-9, abs=0)
    assert res.certificate["gap"] <= 1e-9
