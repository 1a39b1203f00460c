"""Collective cost formulas (hardware/comm.py) against hand-computed closed forms. No GPU needed.

The pinned cluster fixes every figure the formulas read (links, latencies, efficiencies), so these
closed forms stay true when the presets' efficiencies are re-tuned.
"""

from __future__ import annotations

import pytest

from hardware.cluster import load_cluster
from hardware.comm import (
    Group,
    all_gather_s,
    all_reduce_s,
    all_to_all_s,
    bus_bandwidth_Bps,
    exposed_s,
    group_span,
    p2p_s,
    reduce_scatter_s,
)

GB = 1e9
A_INTRA, A_INTER = 3.4e-6, 9.6e-6  # s
NVLINK, NIC = 450e9 * 0.8, 50e9 * 0.8  # achieved bus bandwidth per GPU, B/s: 360 GB/s and 40 GB/s


def pinned(num_gpus: int, nic_GBps: float = 50.0):
    return load_cluster(
        f"h100-sxm-80gb:{num_gpus}",
        {
            "intra_node_bw_GBps": 450.0,
            "inter_node_bw_GBps": nic_GBps,
            "intra_node_latency_us": 3.4,
            "inter_node_latency_us": 9.6,
            "gpu.efficiency.intra_node_link": 0.8,
            "gpu.efficiency.inter_node_link": 0.8,
        },
    )


# --- ring closed forms ---------------------------------------------------------------------------


def test_ring_all_reduce_inside_one_node():
    # 8 GPUs, 1 GB: 2(n-1) = 14 steps of 3.4 us + 2*7/8 * 1e9 B / 360e9 B/s = 4.8611 ms -> 4.9087 ms.
    t = all_reduce_s(pinned(8), 1 * GB, Group(8, 8), algo="ring")
    assert t == pytest.approx(14 * A_INTRA + 2 * 7 / 8 * GB / NVLINK)
    assert t == pytest.approx(4.9087e-3, rel=1e-4)


def test_ring_reduce_scatter_and_all_gather_are_half_an_all_reduce():
    cluster, group = pinned(8), Group(8, 8)
    expected = 7 * A_INTRA + 7 / 8 * GB / NVLINK
    assert reduce_scatter_s(cluster, GB, group, algo="ring") == pytest.approx(expected)
    assert all_gather_s(cluster, GB, group, algo="ring") == pytest.approx(expected)


def test_ring_across_nodes_uses_the_nics_of_all_local_ranks():
    # 2 nodes x 8: busbw = min(360, 8 * 40) = 320 GB/s; 30 steps, 2(N-1) = 2 of them on the network.
    cluster = pinned(16)
    assert bus_bandwidth_Bps(cluster, Group(16, 8)) == pytest.approx(min(NVLINK, 8 * NIC))
    t = all_reduce_s(cluster, GB, Group(16, 8), algo="ring")
    assert t == pytest.approx(28 * A_INTRA + 2 * A_INTER + 2 * 15 / 16 * GB / (8 * NIC))


def test_ring_with_one_rank_per_node_runs_at_one_nic():
    cluster = pinned(64)
    assert bus_bandwidth_Bps(cluster, Group(8, 1)) == pytest.approx(NIC)
    t = all_reduce_s(cluster, GB, Group(8, 1), algo="ring")
    assert t == pytest.approx(14 * A_INTER + 2 * 7 / 8 * GB / NIC)


def test_ring_with_few_ranks_per_node_is_capped_by_their_nics():
    # 4 ranks per node on 2 nodes: min(360, 4 * 40) = 160 GB/s.
    assert bus_bandwidth_Bps(pinned(16), Group(8, 4)) == pytest.approx(4 * NIC)


# --- hierarchical and auto -----------------------------------------------------------------------


def test_hierarchical_all_reduce_closed_form():
    # RS_intra(S, 8) + AR_inter(S/8, 2) + AG_intra(S, 8).
    s = 1 * GB
    rs_intra = 7 * A_INTRA + 7 / 8 * s / NVLINK
    ar_inter = 2 * A_INTER + 2 * 1 / 2 * (s / 8) / NIC
    t = all_reduce_s(pinned(16), s, Group(16, 8), algo="hierarchical")
    assert t == pytest.approx(2 * rs_intra + ar_inter)


def test_hierarchical_reduce_scatter_and_all_gather_closed_form():
    s = 1 * GB
    expected = 7 * A_INTRA + 7 / 8 * s / NVLINK + 1 * A_INTER + 1 / 2 * (s / 8) / NIC
    assert reduce_scatter_s(pinned(16), s, Group(16, 8), algo="hierarchical") == pytest.approx(expected)
    assert all_gather_s(pinned(16), s, Group(16, 8), algo="hierarchical") == pytest.approx(expected)


def test_hierarchical_equals_ring_when_one_tier_only():
    for cluster, group in [(pinned(8), Group(8, 8)), (pinned(64), Group(8, 1))]:
        ring = all_reduce_s(cluster, GB, group, algo="ring")
        assert all_reduce_s(cluster, GB, group, algo="hierarchical") == pytest.approx(ring)


def test_auto_picks_hierarchical_for_small_and_ring_for_large_messages():
    # Fewer latency-bound intra steps win small messages; the flat ring's 320 GB/s wins large ones.
    cluster, group = pinned(16), Group(16, 8)
    for nbytes, winner in [(1e6, "hierarchical"), (1e9, "ring")]:
        ring = all_reduce_s(cluster, nbytes, group, algo="ring")
        hier = all_reduce_s(cluster, nbytes, group, algo="hierarchical")
        assert (hier < ring) == (winner == "hierarchical")
        assert all_reduce_s(cluster, nbytes, group) == pytest.approx(min(ring, hier))


def test_hierarchical_wins_large_messages_when_nics_are_slow():
    # 12.5 GB/s NICs: ring 8 * 10 = 80 GB/s busbw; two-level moves only S/8 over the network.
    cluster, group = pinned(16, nic_GBps=12.5), Group(16, 8)
    ring = all_reduce_s(cluster, GB, group, algo="ring")
    assert all_reduce_s(cluster, GB, group, algo="hierarchical") < ring


# --- all-to-all and p2p --------------------------------------------------------------------------


def test_all_to_all_closed_forms():
    b = 1e8
    inside = all_to_all_s(pinned(8), b, Group(8, 8))
    assert inside == pytest.approx(A_INTRA + b / NVLINK)
    # 2 nodes x 8: 7/15 of the bytes stay on NVLink, 8/15 leave through the rank's NIC; max of the two.
    across = all_to_all_s(pinned(16), b, Group(16, 8))
    assert across == pytest.approx(A_INTER + max(b * 7 / 15 / NVLINK, b * 8 / 15 / NIC))
    assert across > inside


def test_p2p_closed_forms():
    assert p2p_s(pinned(8), 1e8, inter_node=False) == pytest.approx(A_INTRA + 1e8 / NVLINK)
    assert p2p_s(pinned(16), 1e8, inter_node=True) == pytest.approx(A_INTER + 1e8 / NIC)
    assert p2p_s(pinned(16), 0, inter_node=True) == 0.0


# --- general properties --------------------------------------------------------------------------

COLLECTIVES = [all_reduce_s, reduce_scatter_s, all_gather_s]


@pytest.mark.parametrize("fn", COLLECTIVES)
@pytest.mark.parametrize("algo", ["ring", "hierarchical", "auto"])
def test_more_bytes_take_longer(fn, algo):
    cluster, group = pinned(64), Group(64, 8)
    times = [fn(cluster, nbytes, group, algo=algo) for nbytes in (1e3, 1e6, 1e8, 1e10)]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_all_to_all_and_p2p_grow_with_bytes():
    cluster = pinned(64)
    a2a = [all_to_all_s(cluster, b, Group(64, 8)) for b in (1e3, 1e6, 1e9)]
    p2p = [p2p_s(cluster, b, inter_node=True) for b in (1e3, 1e6, 1e9)]
    assert a2a == sorted(a2a) and p2p == sorted(p2p)


@pytest.mark.parametrize("fn", COLLECTIVES)
def test_crossing_nodes_is_slower(fn):
    cluster = pinned(64)
    assert fn(cluster, GB, Group(8, 8)) < fn(cluster, GB, Group(8, 1))
    assert p2p_s(cluster, GB, inter_node=False) < p2p_s(cluster, GB, inter_node=True)


@pytest.mark.parametrize("fn", COLLECTIVES)
def test_trivial_cases_cost_nothing(fn):
    cluster = pinned(16)
    assert fn(cluster, GB, Group(1, 1)) == 0.0
    assert fn(cluster, 0, Group(16, 8)) == 0.0
    assert all_to_all_s(cluster, GB, Group(1, 1)) == 0.0


def test_presets_efficiencies_are_applied():
    # The real preset path: busbw comes from the preset's link efficiency, whatever it is tuned to.
    cluster = load_cluster("a100-sxm-80gb:8")
    eff = cluster.gpu.efficiency.intra_node_link
    assert bus_bandwidth_Bps(cluster, Group(8, 8)) == pytest.approx(300e9 * eff)


def test_bad_arguments():
    cluster = pinned(16)
    with pytest.raises(ValueError, match="unknown algo"):
        all_reduce_s(cluster, GB, Group(16, 8), algo="tree")
    with pytest.raises(ValueError, match=">= 0"):
        all_gather_s(cluster, -1, Group(16, 8))
    with pytest.raises(ValueError, match="does not fit"):
        all_reduce_s(cluster, GB, Group(32, 8))
    with pytest.raises(ValueError, match="does not fit"):
        all_reduce_s(cluster, GB, Group(16, 16))
    with pytest.raises(ValueError, match=r"6 % 4 = 2"):
        Group(6, 4)


# --- group_span ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [
        (8, 1, Group(8, 8)),  # tp=8 inside a node
        (4, 2, Group(4, 4)),  # 4 members 2 apart: ranks 0,2,4,6 of one node
        (16, 1, Group(16, 8)),  # contiguous 16 = 2 full nodes
        (8, 8, Group(8, 1)),  # dp over tp=8: one member per node
        (4, 16, Group(4, 1)),
        (8, 2, Group(8, 4)),  # dp=8 over tp=2: 4 per node on 2 nodes
        (8, 4, Group(8, 2)),
        (2, 4, Group(2, 2)),  # 2 * 4 = 8 still fits in one node
        (3, 3, Group(3, 1)),  # 0,3,6 | 9: uneven, counted at the emptiest node
        (64, 1, Group(64, 8)),
    ],
)
def test_group_span(size, stride, expected):
    assert group_span(pinned(64), size, stride) == expected


def test_group_span_rejects_groups_larger_than_the_cluster():
    with pytest.raises(ValueError, match="more than the cluster's 16 GPUs"):
        group_span(pinned(16), 4, 8)
    with pytest.raises(ValueError):
        group_span(pinned(16), 0, 1)


def test_gb200_nvl72_domain_keeps_large_groups_on_nvlink():
    cluster = load_cluster("gb200:144")
    assert group_span(cluster, 64, 1) == Group(64, 64)
    assert group_span(cluster, 2, 72) == Group(2, 1)


def _overlapped_by_steps(comm_s: float, compute_s: float, slowdown: float, steps: int = 20000) -> float:
    """Brute force: step time in small ticks; compute advances at 1/(1+σ) while the collective
    runs beside it, at full speed once it is done; returns the seconds added over compute alone."""
    dt = (comm_s + compute_s) * (1 + slowdown) / steps
    t, comm_left, work_left = 0.0, comm_s, compute_s
    while comm_left > 1e-15 or work_left > 1e-15:
        busy_comm = comm_left > 1e-15
        comm_left = max(0.0, comm_left - dt)
        work_left = max(0.0, work_left - dt / (1 + slowdown if busy_comm else 1.0))
        t += dt
    return t - compute_s


@pytest.mark.parametrize("comm_s,compute_s", [(0.3, 1.0), (1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (0.5, 0.0)])
@pytest.mark.parametrize("slowdown", [0.0, 0.19, 0.5])
def test_exposed_is_what_a_slowed_overlap_takes(comm_s, compute_s, slowdown):
    """``exposed_s = max(m − c, tax·m)`` equals stepping the overlap in small ticks."""
    tax = slowdown / (1 + slowdown)
    want = _overlapped_by_steps(comm_s, compute_s, slowdown)
    assert exposed_s(comm_s, compute_s, tax) == pytest.approx(want, abs=2e-3 * (comm_s + compute_s))


def test_overlap_slowdown_default_and_override():
    """The presets take the measured mean slowdown (19%); ``--set`` can turn contention off."""
    gpu = load_cluster("a100-sxm-80gb:8").gpu
    assert gpu.efficiency.overlap_slowdown == 0.19
    assert gpu.efficiency.overlap_tax == pytest.approx(0.19 / 1.19)
    off = load_cluster("a100-sxm-80gb:8", {"gpu.efficiency.overlap_slowdown": 0}).gpu.efficiency
    assert off.overlap_tax == 0.0
    assert exposed_s(0.4, 1.0, off.overlap_tax) == 0.0 and exposed_s(1.5, 1.0, off.overlap_tax) == 0.5
