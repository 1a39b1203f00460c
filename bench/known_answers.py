"""Does the planner rediscover the known answers? Issue 3's list, each planned from scratch.

    python bench/known_answers.py [--time-limit 60]

Each row plans one setting with every knob auto except those the setting fixes (the software the
published answer was found with), prints the plan's mesh and knobs, its step time, the
certificate and the wall time, and checks it against the known answer. tests/test_planner.py
asserts the same answers; this script shows them side by side with their figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware.cluster import load_cluster
from models.load import load_model
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.inputs import build_training
from planner.search import Knobs, search


def _train(global_batch: int, seq_len: int, attention: str | None = None) -> Training:
    """What `autopar plan` builds from the command line: the default stack's kernels, gradient
    dtype and TP overlap (``planner.inputs.build_training``), bf16."""
    return build_training(global_batch, seq_len, "bf16", attention)


# Narayanan et al. 2021 Fig. 13: a 161B GPT (32 layers, hidden 20,480) on 64 A100s, dp 1 (also
# tests/test_planner.py).
FIG13 = ModelSpec(
    name="gpt-161b-fig13",
    num_layers=32,
    hidden_size=20480,
    num_heads=128,
    ffn_hidden_size=81920,
    vocab_size=51200,
    max_seq_len=2048,
    norm="layernorm",
    activation="gelu",
    position="learned",
    bias=True,
    tie_embeddings=True,
    dropout=0.1,
)


@dataclass
class Setting:
    name: str
    answer: str  # the known answer, in words
    model: str | ModelSpec
    cluster: str
    train: Training
    check: Callable[[Parallel], bool]
    knobs: dict = field(default_factory=dict)


def _in_node_tp_pipeline_across(p: Parallel) -> bool:
    return p.pp > 1 and p.tp * p.cp <= 8 and p.tp * p.cp * p.dp >= 8


SETTINGS = [
    Setting(
        "gpt3-1.3b, 8 H100, batch 64",
        "pure data parallelism",
        "gpt3-1.3b",
        "h100-sxm-80gb:8",
        _train(64, 2048),
        lambda p: (p.dp, p.tp, p.pp) == (8, 1, 1),
    ),
    Setting(
        "llama3-8b, 8 H100, batch 64, seq 8192",
        "ZeRO or recompute, no pipeline",
        "llama3-8b",
        "h100-sxm-80gb:8",
        _train(64, 8192),
        lambda p: p.pp == 1 and p.tp == 1 and (p.zero or p.recompute != "none"),
    ),
    Setting(
        "gpt3-1.3b, 8 A100-40GB, batch 256",
        "ZeRO, no pipeline",
        "gpt3-1.3b",
        "a100-sxm-40gb:8",
        _train(256, 2048),
        lambda p: p.pp == 1 and p.zero >= 1,
    ),
    Setting(
        "gpt3-175b, 1,024 A100, batch 1,536, 2021 Megatron (--zero 0 --attention eager)",
        "tp 8 · pp 16 (Narayanan et al. 2021 Table 1)",
        "gpt3-175b",
        "a100-sxm-80gb:1024",
        _train(1536, 2048, "eager"),
        lambda p: (p.tp, p.pp) == (8, 16),
        {"zero": (0,)},
    ),
    Setting(
        "gpt3-175b, 1,024 A100, batch 1,536, every knob auto",
        "tp in a node, pipeline across nodes",
        "gpt3-175b",
        "a100-sxm-80gb:1024",
        _train(1536, 2048),
        _in_node_tp_pipeline_across,
    ),
    Setting(
        "gpt3-175b, 1,024 A100, batch 2,048, every knob auto",
        "NeMo gpt3/175b.yaml: tp 4 · pp 8 · v 12, SP, ZeRO-1, mb 1",
        "gpt3-175b",
        "a100-sxm-80gb:1024",
        _train(2048, 2048),
        lambda p: (p.tp, p.pp, p.vpp, p.sequence_parallel, p.zero, p.micro_batch) == (4, 8, 12, True, 1, 1),
    ),
    *[
        Setting(
            f"161B Fig. 13, 64 A100, batch {b}, dp 1, 2021 Megatron",
            "tp 8 · pp 8 (Narayanan et al. 2021 Fig. 13)",
            FIG13,
            "a100-sxm-80gb:64",
            replace(_train(b, 2048, "eager"), tp_overlap="none"),
            lambda p: (p.tp, p.pp) == (8, 8),
            {"dp": (1,), "tp": (2, 4, 8, 16, 32), "zero": (0,), "schedule": ("1f1b",), "sequence_parallel": (False,)},
        )
        for b in (32, 128)
    ],
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0)
    args = ap.parse_args()
    misses = 0
    for s in SETTINGS:
        spec = s.model if isinstance(s.model, ModelSpec) else load_model(s.model)
        t0 = time.perf_counter()
        res = search(spec, load_cluster(s.cluster), s.train, Knobs(s.knobs), time_limit_s=args.time_limit)
        wall = time.perf_counter() - t0
        cert = res.certificate
        ok = res.best is not None and s.check(res.best.par)
        misses += not ok
        plan = res.best.par.describe("full") if res.best else "nothing fits"
        step = f"{res.best.predicted['step_time_s']:.3f} s" if res.best else "-"
        gap = "-" if cert.get("gap") is None else f"{cert['gap']:.2%}"
        print(
            f"{s.name}\n  known answer: {s.answer}\n  planner:      {plan}\n"
            f"  {step}, {cert['status']} (gap {gap}), {wall:.1f} s  -> {'match' if ok else 'MISS'}"
        )
    print(f"\n{len(SETTINGS) - misses} of {len(SETTINGS)} known answers rediscovered")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
