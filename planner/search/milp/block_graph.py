"""A transformer block of ``models/graph.py`` as a recomputation graph (planner/search/milp/
recompute.py), and the named selective-recompute policies as kept sets.

The graph itself is built by the cost model (``planner/cost/kept_set.block_graph``: dataflow,
prices, supported blocks), which also prices a kept set without a solver; this module is what
the recomputation program reads it through.
"""

from __future__ import annotations

from hardware.cluster import ClusterSpec
from models.graph import Layer, LayerGraph
from planner.config import Parallel, Training
from planner.cost.kept_set import block_graph
from planner.cost.layer import saved_tensor_bytes

__all__ = ["block_graph", "policy_kept"]


def policy_kept(layer: Layer, graph: LayerGraph, cluster: ClusterSpec, train: Training, par: Parallel) -> frozenset:
    """The tensors the stack's 'selective' option keeps (``cost.layer.kept_tensors``)."""
    return frozenset(name for name, _ in saved_tensor_bytes(layer, graph, cluster, train, par)["selective"])
