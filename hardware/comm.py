"""Collective-communication cost: an alpha-beta model in NCCL's bus-bandwidth convention.

Every function returns seconds. Conventions:

* ``nbytes`` is the FULL buffer: the buffer each rank holds for all-reduce, the input each rank
  holds for reduce-scatter (it keeps nbytes/n), the output each rank ends with for all-gather
  (it contributes nbytes/n). This is the ``S`` of nccl-tests doc/PERFORMANCE.md.
* Bus bandwidth (nccl-tests doc/PERFORMANCE.md): ``t = factor(n) * S / busbw`` with
  ``factor = 2(n-1)/n`` for all-reduce and ``(n-1)/n`` for reduce-scatter and all-gather. It is
  what a ring reaches per rank (Thakur, Rabenseifner & Gropp 2005, "Optimization of collective
  communication operations in MPICH", IJHPCA 19(1); Chan et al. 2007, "Collective communication:
  theory, practice, and experience", CCPE 19(13)): a ring all-reduce is a reduce-scatter of
  n-1 steps then an all-gather of n-1 steps, each step moving S/n bytes per rank.
* Link rates are ``GB/s * 1e9 * efficiency`` with the efficiencies of the GPU preset
  (``intra_node_link``, ``inter_node_link``): the NCCL bus bandwidth a link tier reaches.
* Latency (alpha) follows NCCL's own tuning model (NVIDIA/nccl src/graph/tuning.cc): a ring of
  ``steps`` steps over N nodes pays the network latency on the ``steps(N)`` steps that cross nodes
  and the intra-node latency on the others.

Layout assumption: ranks are numbered node-major, each GPU has its own NIC (rail-optimised
nodes: DGX/HGX, Grand Teton), and a group spans ``nodes`` nodes with ``ranks_per_node`` ranks on
each. NCCL's multi-channel rings enter and leave every node once per channel and spread the
channels over the NICs of the group's ranks on that node ("Ring Allreduce requires data to go
through each GPU and enter/exit the node once", NVIDIA/nccl#687; more GPUs per node use more NICs
and run faster, NVIDIA/nccl#569), so a ring spanning nodes reaches
``busbw = min(intra_bw, ranks_per_node * inter_bw)`` - not the bandwidth of one NIC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hardware.cluster import ClusterSpec

Algo = Literal["ring", "hierarchical", "auto", "nic"]
_Op = Literal["all_reduce", "reduce_scatter", "all_gather"]


@dataclass(frozen=True)
class Group:
    """A process group of ``size`` ranks, ``ranks_per_node`` of them on each node it spans."""

    size: int
    ranks_per_node: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.ranks_per_node < 1:
            raise ValueError(f"group size ({self.size}) and ranks_per_node ({self.ranks_per_node}) must be >= 1")
        if self.size % self.ranks_per_node:
            raise ValueError(
                f"group of {self.size} ranks cannot have {self.ranks_per_node} per node "
                f"({self.size} % {self.ranks_per_node} = {self.size % self.ranks_per_node})"
            )

    @property
    def nodes(self) -> int:
        return self.size // self.ranks_per_node

    @property
    def spans_nodes(self) -> bool:
        return self.nodes > 1


def group_span(cluster: ClusterSpec, size: int, stride: int = 1) -> Group:
    """The Group of a mesh dimension of ``size`` members that are ``stride`` ranks apart.

    With node-major rank numbering and G = gpus_per_node:
    ``size*stride <= G`` -> inside one node (ranks_per_node = size); ``stride >= G`` -> one member
    per node; otherwise ``G // stride`` members per node, capped at ``size``. When that count does
    not divide ``size`` (degrees that do not divide G) members spread unevenly; we take the largest
    divisor of ``size`` below it, i.e. the emptiest node, which is where a ring is slowest.
    """
    if size < 1 or stride < 1:
        raise ValueError(f"group size ({size}) and stride ({stride}) must be >= 1")
    if size * stride > cluster.num_gpus:
        raise ValueError(
            f"a group of {size} ranks {stride} apart spans {size * stride} ranks, "
            f"more than the cluster's {cluster.num_gpus} GPUs"
        )
    per_node = cluster.gpus_per_node
    if size * stride <= per_node:
        return Group(size, size)
    if stride >= per_node:
        return Group(size, 1)
    ranks_per_node = min(per_node // stride, size)
    while size % ranks_per_node:
        ranks_per_node -= 1
    return Group(size, ranks_per_node)


@dataclass(frozen=True)
class _Tier:
    bw_Bps: float  # achieved bus bandwidth of one GPU on this tier, bytes/s
    alpha_s: float  # per-step latency, seconds


def _tiers(cluster: ClusterSpec) -> tuple[_Tier, _Tier]:
    eff = cluster.gpu.efficiency
    intra = _Tier(cluster.intra_node_bw_GBps * 1e9 * eff.intra_node_link, cluster.intra_node_latency_us * 1e-6)
    inter = _Tier(cluster.inter_node_bw_GBps * 1e9 * eff.inter_node_link, cluster.inter_node_latency_us * 1e-6)
    return intra, inter


def _check(cluster: ClusterSpec, group: Group, nbytes: float) -> None:
    if nbytes < 0:
        raise ValueError(f"byte count must be >= 0 (got {nbytes})")
    if group.ranks_per_node > cluster.gpus_per_node or group.nodes > cluster.num_nodes:
        raise ValueError(
            f"group of {group.nodes} nodes x {group.ranks_per_node} ranks does not fit the cluster's "
            f"{cluster.num_nodes} nodes x {cluster.gpus_per_node} GPUs"
        )


def bus_bandwidth_Bps(cluster: ClusterSpec, group: Group) -> float:
    """Ring bus bandwidth per rank, bytes/s.

    Inside a node: ``intra_bw * intra_eff``. One rank per node: ``inter_bw * inter_eff`` (its NIC).
    Otherwise ``min(intra_bw * intra_eff, ranks_per_node * inter_bw * inter_eff)``: the channels'
    node crossings share the NICs of the group's ranks on a node (module docstring).
    """
    intra, inter = _tiers(cluster)
    if not group.spans_nodes:
        return intra.bw_Bps
    if group.ranks_per_node == 1:
        return inter.bw_Bps
    return min(intra.bw_Bps, group.ranks_per_node * inter.bw_Bps)


def _factor_steps(op: _Op, n: int) -> tuple[float, int]:
    """(bandwidth factor, ring steps) of a collective over n ranks (nccl-tests PERFORMANCE.md)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n, 2 * (n - 1)
    return (n - 1) / n, n - 1


def _ring_s(cluster: ClusterSpec, nbytes: float, group: Group, op: _Op) -> float:
    """``t = (steps(n) - steps(N)) * a_intra + steps(N) * a_inter + factor(n) * S / busbw``."""
    if group.size == 1 or nbytes == 0:
        return 0.0
    intra, inter = _tiers(cluster)
    factor, steps = _factor_steps(op, group.size)
    _, inter_steps = _factor_steps(op, group.nodes)
    latency = (steps - inter_steps) * intra.alpha_s + inter_steps * inter.alpha_s
    return latency + factor * nbytes / bus_bandwidth_Bps(cluster, group)


def _hierarchical_s(cluster: ClusterSpec, nbytes: float, group: Group, op: _Op) -> float:
    """Two-level: an intra-node ring among the r local ranks, an inter-node ring among the N peers.

    all-reduce = RS_intra(S, r) + AR_inter(S/r, N) + AG_intra(S, r); reduce-scatter =
    RS_intra(S, r) + RS_inter(S/r, N); all-gather = AG_inter(S/r, N) + AG_intra(S, r).
    The r inter-node rings run at once, each on its own rank's NIC (Group(N, 1)).
    """
    if not group.spans_nodes or group.ranks_per_node == 1:
        return _ring_s(cluster, nbytes, group, op)  # one tier only: nothing to split
    local = Group(group.ranks_per_node, group.ranks_per_node)
    peers = Group(group.nodes, 1)
    shard = nbytes / group.ranks_per_node
    if op == "all_reduce":
        intra = _ring_s(cluster, nbytes, local, "reduce_scatter") + _ring_s(cluster, nbytes, local, "all_gather")
        return intra + _ring_s(cluster, shard, peers, "all_reduce")
    return _ring_s(cluster, nbytes, local, op) + _ring_s(cluster, shard, peers, op)


def _nic_ring_s(cluster: ClusterSpec, nbytes: float, group: Group, op: _Op) -> float:
    """A ring whose every rank crosses nodes on its own NIC: ``busbw = inter_bw * inter_eff`` when
    the group spans nodes, with the ring latency of ``_ring_s``. What a collective reaches when the
    framework does not spread it over the node's NICs (``StackProfile.zero3.span = gpu``)."""
    if group.size == 1 or nbytes == 0:
        return 0.0
    if not group.spans_nodes:
        return _ring_s(cluster, nbytes, group, op)
    intra, inter = _tiers(cluster)
    factor, steps = _factor_steps(op, group.size)
    _, inter_steps = _factor_steps(op, group.nodes)
    latency = (steps - inter_steps) * intra.alpha_s + inter_steps * inter.alpha_s
    return latency + factor * nbytes / inter.bw_Bps


def _collective_s(cluster: ClusterSpec, nbytes: float, group: Group, algo: Algo, op: _Op) -> float:
    _check(cluster, group, nbytes)
    if algo == "ring":
        return _ring_s(cluster, nbytes, group, op)
    if algo == "nic":
        return _nic_ring_s(cluster, nbytes, group, op)
    if algo == "hierarchical":
        return _hierarchical_s(cluster, nbytes, group, op)
    if algo == "auto":
        # NCCL picks its algorithm per size from its own cost model; we take the cheaper of ours.
        return min(_ring_s(cluster, nbytes, group, op), _hierarchical_s(cluster, nbytes, group, op))
    raise ValueError(f"unknown algo {algo!r}; expected ring, hierarchical, auto or nic")


def all_reduce_s(cluster: ClusterSpec, nbytes: float, group: Group, algo: Algo = "auto") -> float:
    """All-reduce of an S = ``nbytes`` buffer.

    ring: ``(2(n-1) - 2(N-1)) a_intra + 2(N-1) a_inter + 2(n-1)/n * S / busbw``;
    hierarchical: ``RS_intra(S) + AR_inter(S/r) + AG_intra(S)``; auto: the minimum.
    Size-1 group or S = 0 costs 0. Sources: module docstring.
    """
    return _collective_s(cluster, nbytes, group, algo, "all_reduce")


def reduce_scatter_s(cluster: ClusterSpec, nbytes: float, group: Group, algo: Algo = "auto") -> float:
    """Reduce-scatter of an S = ``nbytes`` input (each rank keeps S/n).

    ring: ``((n-1) - (N-1)) a_intra + (N-1) a_inter + (n-1)/n * S / busbw``;
    hierarchical: ``RS_intra(S) + RS_inter(S/r)``; auto: the minimum.
    """
    return _collective_s(cluster, nbytes, group, algo, "reduce_scatter")


def all_gather_s(cluster: ClusterSpec, nbytes: float, group: Group, algo: Algo = "auto") -> float:
    """All-gather into an S = ``nbytes`` output (each rank contributes S/n).

    ring: ``((n-1) - (N-1)) a_intra + (N-1) a_inter + (n-1)/n * S / busbw``;
    hierarchical: ``AG_inter(S/r) + AG_intra(S)``; auto: the minimum.
    """
    return _collective_s(cluster, nbytes, group, algo, "all_gather")


def all_to_all_s(cluster: ClusterSpec, nbytes_per_rank: float, group: Group) -> float:
    """All-to-all where each rank sends ``nbytes_per_rank`` in total, split equally over the n-1 others.

    ``t = a + max(B * (r-1)/(n-1) / intra_bw, B * (n-r)/(n-1) / inter_bw)``: the share for the r-1
    local peers goes over NVLink, the share for the n-r remote peers over the rank's own NIC, both
    at once. One alpha (the slowest tier spanned): NCCL issues the n-1 send/recv pairs as one group
    so their latencies overlap, unlike the (n-1) alpha of a pairwise exchange (Thakur et al. 2005).
    For MoE dispatch where a rank also routes tokens to itself, pass only the bytes that leave it.
    """
    _check(cluster, group, nbytes_per_rank)
    n, r = group.size, group.ranks_per_node
    if n == 1 or nbytes_per_rank == 0:
        return 0.0
    intra, inter = _tiers(cluster)
    intra_s = nbytes_per_rank * (r - 1) / (n - 1) / intra.bw_Bps
    inter_s = nbytes_per_rank * (n - r) / (n - 1) / inter.bw_Bps
    alpha = inter.alpha_s if group.spans_nodes else intra.alpha_s
    return alpha + max(intra_s, inter_s)


def p2p_s(cluster: ClusterSpec, nbytes: float, inter_node: bool) -> float:
    """Send/recv of ``nbytes`` between adjacent pipeline stages: ``t = a + S / bw`` of the tier used.

    Inter-node uses one NIC (``inter_bw * inter_eff``), intra-node the GPU's link
    (``intra_bw * intra_eff``; on xGMI parts one peer link is slower than the aggregate).
    """
    if nbytes < 0:
        raise ValueError(f"byte count must be >= 0 (got {nbytes})")
    if nbytes == 0:
        return 0.0
    intra, inter = _tiers(cluster)
    tier = inter if inter_node else intra
    return tier.alpha_s + nbytes / tier.bw_Bps


def exposed_s(comm_s: float, window_s: float, tax: float) -> float:
    """Step seconds a collective of ``comm_s`` adds when it runs beside ``window_s`` of compute.

    Compute beside a running collective is slowed by σ (NCCL holds SMs and HBM bandwidth:
    ``efficiency.overlap_slowdown``), so while the collective runs compute advances at 1/(1+σ).
    Together they take ``max(m, c + m·σ/(1+σ))``: the excess over the window when the collective
    is longer, else ``tax·m`` with ``tax = σ/(1+σ)`` (``EfficiencySpec.overlap_tax``). Exposed =
    that minus c = ``max(m − c, tax·m)``; with σ = 0, the classic ``max(0, m − c)``.
    """
    return max(comm_s - window_s, tax * comm_s)
