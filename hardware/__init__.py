"""Cluster specs: GPU presets (data files in presets/), cluster loading, collective cost formulas."""

from hardware.cluster import ClusterSpec, load_cluster
from hardware.comm import (
    Group,
    all_gather_s,
    all_reduce_s,
    all_to_all_s,
    bus_bandwidth_Bps,
    group_span,
    p2p_s,
    reduce_scatter_s,
)
from hardware.gpu import DTYPES, EfficiencySpec, GPUSpec, list_gpus, load_gpu

__all__ = [
    "DTYPES",
    "ClusterSpec",
    "EfficiencySpec",
    "GPUSpec",
    "Group",
    "all_gather_s",
    "all_reduce_s",
    "all_to_all_s",
    "bus_bandwidth_Bps",
    "group_span",
    "list_gpus",
    "load_cluster",
    "load_gpu",
    "p2p_s",
    "reduce_scatter_s",
]
