"""Writing plan files: the ``inputs`` block with its hashes, ``parallelism`` from the knob
registry, ``stages[]`` from the estimate's chunks, and the whole document."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hardware.cluster import ClusterSpec
from models.spec import ModelSpec
from planner.config import Parallel, Training
from planner.cost.estimate import Estimate
from planner.knobs import SHOWN
from planner.planfile.schema import SCHEMA_VERSION
from planner.stacks import stack_overrides


def input_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def training_block(train: Training) -> dict[str, Any]:
    return {
        "global_batch_size": train.global_batch,
        "seq_len": train.seq_len,
        "dtype": train.dtype,
        "attention_impl": train.attention_impl,
        "grad_reduce_dtype": train.grad_reduce_dtype,
        "norm_impl": train.norm_impl,
        "tp_overlap": train.tp_overlap,
        "stack": train.stack.name,
        "stack_overrides": stack_overrides(train.stack),
        "memory_headroom": train.memory_headroom,
    }


def input_block(model: ModelSpec, cluster: ClusterSpec, train: Training, knobs: dict | None = None) -> dict:
    m, c = model.model_dump(), cluster.model_dump()
    t = training_block(train) | {"seed": 0}
    return {
        "model": m,
        "cluster": c,
        "training": t,
        "knobs": knobs or {},
        "sha256": {"model": input_sha256(m), "cluster": input_sha256(c), "training": input_sha256(t)},
    }


def parallel_dict(par: Parallel, num_micro_batches: int) -> dict[str, Any]:
    """``parallelism``: every knob under its JSON key, and the micro-batches per step."""
    out: dict[str, Any] = {}
    for k in SHOWN:
        value = getattr(par, k.name)
        out[k.json_key] = list(value) if isinstance(value, tuple) else value
        if k.name == "micro_batch":  # the derived count sits by the micro-batch size
            out["num_micro_batches"] = num_micro_batches
    return out


def stage_blocks(est: Estimate) -> list[dict]:
    par = est.par
    per_pp = par.dp * par.cp * par.tp
    out = []
    for c in est.chunks:
        blocks = range(c.first_block, c.first_block + c.num_blocks)
        out.append(
            {
                "index": c.index,
                "pp_rank": c.pp_rank,
                "virtual_index": c.index // par.pp,
                "layers": [c.first_block, c.first_block + c.num_blocks],
                "has_embedding": c.has_embedding,
                "has_head": c.has_head,
                "recompute": [par.recompute_of(i) for i in blocks],
                "ranks": list(range(c.pp_rank * per_pp, (c.pp_rank + 1) * per_pp)),
            }
        )
    return out


def build_plan(
    est: Estimate, solver: dict, reproduce: str, knobs: dict | None = None, extra: dict | None = None
) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "plan",
        "inputs": input_block(est.model, est.cluster, est.train, knobs),
        "parallelism": parallel_dict(est.par, est.predicted.num_micro_batches),
        "stages": stage_blocks(est),
        "predicted": est.predicted.to_json(),
        "solver": solver,
        "reproduce": reproduce,
    }
    doc.update(extra or {})
    return doc
