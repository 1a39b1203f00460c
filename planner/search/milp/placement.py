"""Placement MILP: layer→chunk partition and per-block recompute for one outer candidate.

Families (one function each; every variable and constraint named by its indices):

1. ``add_assignment_constraints`` — every block placed exactly once, each chunk non-empty
   (interleaved: the floor or ceiling of an even split or the default split's size,
   ``chunk_size_ranges``),
   runs of identical blocks consumed in model order (contiguity):
   ``Σ_{j,o} n[j,t,o] = |R_t|``; ``Σ_{t,o} n[j,t,o] ≥ 1``;
   ``Σ_o n[j,t+1,o] ≤ |R_{t+1}|·u[j,t+1]``, ``Σ_{j'≤j,o} n[j',t,o] ≥ |R_t|·u[j,t+1]``.
2. ``add_chunk_time_constraints`` — per micro-batch forward/backward seconds of chunk j,
   ``F[j] = Σ n[j,t,o]·f_t + f⁰_j (+ ZeRO-3 exposure)``, ``B[j] = Σ n[j,t,o]·(b_t + r_{t,o}) + b⁰_j
   (+ ZeRO-2/3 exposure)``, exposures ``e ≥ comm − compute, e ≥ tax·comm`` (hardware.comm.exposed_s).
3. ``add_schedule_constraints`` — start time S[r,q] of the q-th operation of pipeline rank r:
   after the previous operation of the rank, after its input (previous chunk's F + p2p, next
   chunk's B + p2p, own F for the last chunk's B). Minimising the makespan over these
   precedence constraints gives exactly the DAG's longest path (critical-path LP duality).
4. ``add_tail_constraints`` — ``T ≥ end[r] + sync[r] + opt[r]`` with the exposed data-parallel
   sync linearised as ``s ≥ comm − overlap window, s ≥ tax·comm``; HSDP adds the all-reduce of
   the gradient shards across replicas under rank r's backward, ``s' ≥ REP[r] − B⁰[r]``,
   ``s' ≥ tax·REP[r]``, plus the largest block's (cost.data_parallel.dp_tail).
3'. ``add_rank_bound_constraints`` — the fast relaxation of family 3 used to bound and rank
   candidates: rank r cannot finish before its first input arrives and it has run all its
   work, ``end[r] ≥ Σ_{j<r}(F[j] + c_j) + m·Σ_{chunks of r}(F + B)``, and rank 0 not before the
   last backward of any rank r has travelled back, ``end[0] ≥ Σ_{j<r}(F[j] + B[j] + 2c_j) +
   m·Σ_{chunks of r}(F + B)``. Exact for equal stages; a valid lower bound otherwise.
3''. ``add_path_cuts`` — for schedule paths found by simulating earlier solutions (the critical
   path to each rank's last operation), ``end[r] ≥ Σ_j f_j·F[j] + b_j·B[j] + c_j·p2p_j``. Every
   path's length is a lower bound on the makespan, and the makespan is the maximum over all
   paths, so adding the critical path of each new solution converges to the exact optimum
   (constraint generation; planner.search.solve stops when the bound meets the simulated time).
5. ``add_memory_constraints`` — per rank r, at every point of its order where a forward has
   just run: ``states[r] + Σ_c live_c·act[c] + transient[r] + buffers + workspace + frag ≤ cap``;
   transients use binaries ``y[r,t]`` (rank holds a recomputed block of run t) and ``w[r,t]``
   (rank holds a block of run t, for ZeRO-3 gathers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.cost import memory as mem
from planner.cost.chunks import split_counting_ends, split_layers
from planner.cost.schedule import live_vectors
from planner.schedules import SCHEDULES
from planner.search.milp.data import PlacementData
from planner.search.milp.model import Expr, Model, Var, total

GiB = float(2**30)


@dataclass
class PlacementVars:
    n: dict[tuple[int, int, str], Var] = field(default_factory=dict)
    u: dict[tuple[int, int], Var] = field(default_factory=dict)
    F: dict[int, Expr] = field(default_factory=dict)
    B: dict[int, Expr] = field(default_factory=dict)
    F0: dict[int, Expr] = field(default_factory=dict)
    B0: dict[int, Expr] = field(default_factory=dict)
    S: dict[tuple[int, int], Var] = field(default_factory=dict)
    end: dict[int, Expr] = field(default_factory=dict)
    T: Var | None = None


def _blocks_of_chunk(d: PlacementData, v: PlacementVars, j: int, coef) -> Expr:
    """Σ_{t,o} n[j,t,o]·coef(run, option)."""
    return total(v.n[j, t, o] * coef(run, o) for t, run in enumerate(d.runs) for o in d.options)


def _ends(d: PlacementData, j: int, attr) -> float:
    """Contribution of the embedding (first chunk) and head (last chunk) to a per-chunk sum."""
    return (attr(d.emb) if j == 0 else 0.0) + (attr(d.head) if j == d.n_chunks - 1 else 0.0)


def add_assignment_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """Every block placed once, no empty chunk, runs consumed in model order."""
    for j in range(d.n_chunks):
        for t, run in enumerate(d.runs):
            for o in d.options:
                v.n[j, t, o] = model.var(f"n[chunk={j},run={t},opt={o}]", 0, run.length, integer=True)
    for t, run in enumerate(d.runs):
        model.add(
            total(v.n[j, t, o] for j in range(d.n_chunks) for o in d.options), "==", run.length, f"placed[run={t}]"
        )
    ranges = chunk_size_ranges(sum(r.length for r in d.runs), d.n_chunks, d.par.schedule)
    for j, (lo, hi) in enumerate(ranges):
        size = total(v.n[j, t, o] for t in range(len(d.runs)) for o in d.options)
        if lo:
            model.add(size, ">=", lo, f"nonempty[chunk={j}]")
        if hi is not None:
            model.add(size, "<=", hi, f"balanced[chunk={j}]")
    for t in range(1, len(d.runs)):
        prev = d.runs[t - 1]
        for j in range(d.n_chunks):
            v.u[j, t] = model.var(f"u[chunk={j},run={t}]", 0, 1, integer=True)
            model.add(
                total(v.n[j, t, o] for o in d.options), "<=", v.u[j, t] * d.runs[t].length, f"touch[chunk={j},run={t}]"
            )
            done = total(v.n[k, t - 1, o] for k in range(j + 1) for o in d.options)
            model.add(done, ">=", v.u[j, t] * prev.length, f"order[chunk={j},run={t}]")


def chunk_size_ranges(blocks: int, chunks: int, schedule: str) -> list[tuple[int, int | None]]:
    """Blocks each chunk may hold, ``(lo, hi)`` per chunk (``hi`` None: no upper limit).

    Any schedule: at least one block (a chunk of only the embedding or the head is a pipeline
    stage the runtime and Megatron-LM refuse, planner.planfile.accept). Interleaved:
    Megatron-LM's schedule wants equal virtual stages, so a chunk holds the floor or the ceiling
    of an even split, widened to whatever the split counting the embedding and head as a layer
    each gives it (``cost.chunks.split_counting_ends``: 96 blocks on 16 chunks -> 5, 7, 7, 6, ...,
    6, 5), so that the ends can be balanced. The default split (``cost.chunks.split_layers``), which
    the planner seeds and reports as "even split", lies inside these ranges, and so inside the
    space its bound speaks of. A uniform ±1 around floor/ceil for every chunk was measured to
    loosen the LP relaxation by 6% on llama3-405b (pp 16, v 2: fractional chunk sizes 2.2-4.4
    against an integer optimum near the even split), so that deep interleaved candidates could
    not be certified; the ranges here widen only where the ends need it. The brute-force tests
    enumerate the same space."""
    ends, even = split_counting_ends(blocks, chunks), split_layers(blocks, chunks)
    if not SCHEDULES[schedule].virtual_stages:
        return [(1, None) for _ in ends]
    floor, ceil = max(1, blocks // chunks), -(-blocks // chunks)
    return [(max(1, min(floor, k, e)), max(ceil, k, e)) for k, e in zip(ends, even)]


def _exposed(model: Model, d: PlacementData, comm: Expr, window: Expr, name: str) -> Var:
    """``e[name] = hardware.comm.exposed_s(comm, window) = max(comm − window, tax·comm)``,
    linearised: minimising T pushes e down onto the larger of its two lower bounds
    (``e ≥ comm − window`` named ``name``, ``e ≥ tax·comm`` named ``name`` + ``_tax``)."""
    e = model.var(f"exposed_{name}")
    model.add(e, ">=", comm - window, name)
    if d.overlap_tax > 0:
        model.add(e, ">=", comm * d.overlap_tax, f"{name}_tax")
    return e


def add_chunk_time_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """Per micro-batch chunk times, with ZeRO-2/3 per-micro-batch exposure (planner.cost.data_parallel;
    ``comm_stage``: a stack that syncs once per step pays it in the tail instead)."""
    zero = d.comm_stage
    for j in range(d.n_chunks):
        f0 = _blocks_of_chunk(d, v, j, lambda r, o: r.cost.fwd_s) + _ends(d, j, lambda c: c.fwd_s)
        b0 = _blocks_of_chunk(d, v, j, lambda r, o: r.cost.bwd_s + r.cost.recompute_s[o]) + _ends(
            d, j, lambda c: c.bwd_s
        )
        v.F0[j], v.B0[j] = f0, b0
        ag = _blocks_of_chunk(d, v, j, lambda r, o: r.cost.dp_ag_s) + _ends(d, j, lambda c: c.dp_ag_s)
        rs = _blocks_of_chunk(d, v, j, lambda r, o: r.cost.dp_rs_s) + _ends(d, j, lambda c: c.dp_rs_s)
        if zero == 3:
            w = d.zero3_overlap
            ef = _exposed(model, d, ag, f0 * w, f"fsdp_fwd[chunk={j}]")
            eb = _exposed(model, d, ag + rs, b0 * w, f"fsdp_bwd[chunk={j}]")
            v.F[j] = f0 + ef + d.ag1
            v.B[j] = b0 + eb + d.ag1 + d.rs1
        elif zero == 2:
            eb = _exposed(model, d, rs, b0, f"zero2_rs[chunk={j}]")
            v.F[j], v.B[j] = f0, b0 + eb + d.rs1
        else:
            v.F[j], v.B[j] = f0, b0


def add_schedule_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """Start times over the schedule's DAG: rank order and data dependencies."""
    pp, n = d.par.pp, d.n_chunks
    where: dict[tuple[str, int, int], tuple[int, int]] = {}
    for r, order in enumerate(d.orders):
        for q, (op, c, i) in enumerate(order):
            v.S[r, q] = model.var(f"S[rank={r},op={op},chunk={c * pp + r},mb={i}]")
            where[op, c * pp + r, i] = (r, q)

    def dur(op: str, j: int) -> Expr:
        return v.F[j] if op == "F" else v.B[j]

    for r, order in enumerate(d.orders):
        for q, (op, c, i) in enumerate(order):
            j = c * pp + r
            s = v.S[r, q]
            if q:
                pop, pc, _ = order[q - 1]
                model.add(s, ">=", v.S[r, q - 1] + dur(pop, pc * pp + r), f"rank_order[rank={r},q={q}]")
            if op == "F" and j > 0:
                dep = v.S[where["F", j - 1, i]]
                model.add(s, ">=", dep + v.F[j - 1] + d.p2p_s[j - 1], f"fwd_dep[chunk={j},mb={i}]")
            elif op == "B" and j == n - 1:
                model.add(s, ">=", v.S[where["F", j, i]] + v.F[j], f"loss_dep[mb={i}]")
            elif op == "B":
                model.add(s, ">=", v.S[where["B", j + 1, i]] + v.B[j + 1] + d.p2p_s[j], f"bwd_dep[chunk={j},mb={i}]")
        lop, lc, _ = order[-1]
        v.end[r] = v.S[r, len(order) - 1] + dur(lop, lc * pp + r)


def add_rank_bound_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """Lower bounds on each rank's finish time (see module docstring, family 3')."""
    pp, m = d.par.pp, d.m
    for r in range(pp):
        v.end[r] = Expr.of(model.var(f"end_lb[rank={r}]"))
    for r in range(pp):
        work = total(v.F[j] + v.B[j] for j in d.chunks_of(r)) * m
        fwd_chain = total(v.F[j] + d.p2p_s[j] for j in range(r))
        back_chain = total(v.B[j] + d.p2p_s[j] for j in range(r))
        model.add(v.end[r], ">=", fwd_chain + work, f"rank_busy[rank={r}]")
        model.add(v.end[0], ">=", fwd_chain + work + back_chain, f"drain[rank=0,via={r}]")


def add_path_cuts(model: Model, d: PlacementData, v: PlacementVars, cuts: list) -> None:
    """end[r] ≥ length of each known path ending at rank r's last operation."""
    for k, (r, path) in enumerate(cuts):
        length = total(
            [
                v.F[j] * path.f[j] + v.B[j] * path.b[j] + d.p2p_s[j] * path.c[j]
                for j in range(d.n_chunks)
                if path.f[j] or path.b[j] or path.c[j]
            ]
        )
        model.add(v.end[r], ">=", length, f"path_cut[rank={r},k={k}]")


def _rank_sum(d: PlacementData, v: PlacementVars, r: int, coef, end_attr) -> Expr:
    return total(_blocks_of_chunk(d, v, j, coef) + _ends(d, j, end_attr) for j in d.chunks_of(r))


def _has_head(d: PlacementData, r: int) -> bool:
    return d.n_chunks - 1 in d.chunks_of(r)


def _params(d: PlacementData, v: PlacementVars, r: int) -> tuple[Expr, Expr]:
    """(dense, expert) parameters on rank r, with the tied-embedding copy on the head rank."""
    dense = _rank_sum(d, v, r, lambda run, o: run.cost.params_dp_replicas, lambda c: c.params_dp_replicas)
    dense = dense + (d.tied_params if _has_head(d, r) else 0.0)
    expert = _rank_sum(
        d,
        v,
        r,
        lambda run, o: run.cost.params_local - run.cost.params_dp_replicas,
        lambda c: c.params_local - c.params_dp_replicas,
    )
    return dense, expert


def add_tail_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """T ≥ end[r] + exposed DP sync[r] + optimizer[r] for every pipeline rank r (the sync terms
    of cost.data_parallel.dp_tail: DDP / ZeRO-1 gradient reduction, ZeRO-1/2 weight gather, HSDP
    replica all-reduce)."""
    v.T = model.var("T[step_time_s]")
    z, par = d.comm_stage, d.par
    for r in range(par.pp):
        tied = d.tied_comm if _has_head(d, r) else (0.0, 0.0, 0.0, 0.0)
        ag = _rank_sum(d, v, r, lambda run, o: run.cost.dp_ag_s, lambda c: c.dp_ag_s) + tied[0]
        rs = _rank_sum(d, v, r, lambda run, o: run.cost.dp_rs_s, lambda c: c.dp_rs_s) + tied[1]
        ar = _rank_sum(d, v, r, lambda run, o: run.cost.dp_ar_s, lambda c: c.dp_ar_s) + tied[2]
        b_rank = total(v.B0[j] for j in d.chunks_of(r))
        sync = Expr()
        if par.dense_dp > 1 and z in (0, 1):
            window = b_rank if d.dp_grad_overlap else Expr()
            s1 = _exposed(model, d, ar if z == 0 else rs, window, f"grad_sync[rank={r}]")
            sync = sync + s1 + ((d.ar1 if z == 0 else d.rs1) if d.dp_grad_overlap else 0.0)
        if par.dense_dp > 1 and z in (1, 2):
            sync = sync + _exposed(model, d, ag, v.F0[d.chunks_of(r)[0]], f"param_gather[rank={r}]")
        if par.dp_replicate > 1:
            rep = _rank_sum(d, v, r, lambda run, o: run.cost.dp_rep_ar_s, lambda c: c.dp_rep_ar_s) + tied[3]
            sync = sync + _exposed(model, d, rep, b_rank, f"replica_sync[rank={r}]") + d.rep1
        dense, expert = _params(d, v, r)
        opt = dense * d.opt_s_per_dense + expert * d.opt_s_per_expert
        model.add(v.T, ">=", v.end[r] + sync + opt, f"step[rank={r}]")


def add_memory_constraints(model: Model, d: PlacementData, v: PlacementVars) -> None:
    """Peak bytes of every rank at every in-flight state of its schedule fit in capacity."""
    for r in range(d.par.pp):
        mine = d.chunks_of(r)
        dense, expert = _params(d, v, r)
        states = dense * d.state_bytes_per_dense + expert * d.state_bytes_per_expert
        transient = _transient(model, d, v, r) + (d.head_transient_bytes if _has_head(d, r) else 0.0)
        acts = [
            _blocks_of_chunk(d, v, j, lambda run, o: run.cost.act_bytes[o]) + _ends(d, j, lambda c: c.act_bytes["none"])
            for j in mine
        ]
        for k, live in enumerate(live_vectors(d.par.schedule, r, d.par.pp, d.m, d.par.vpp)):
            act = total(a * cnt for a, cnt in zip(acts, live))
            live_bytes = states + act + transient + d.buffer_bytes
            # Rows in GiB, not bytes: coefficients near 1e10 next to times near 1e-3 break the
            # solvers' tolerances (DESIGN §8: scale to a common unit and name it).
            model.add(
                (live_bytes * (1 + d.fragmentation) + mem.WORKSPACE_BYTES) * (1 / GiB),
                "<=",
                d.capacity_bytes / GiB,
                f"mem_cap_GiB[rank={r},state={k}]",
            )


def _transient(model: Model, d: PlacementData, v: PlacementVars, r: int) -> Expr:
    """max(remat bytes of a recomputed block on r) + ZeRO-3 gather of the largest layer on r."""
    mine = d.chunks_of(r)
    remat = model.var(f"remat_GiB[rank={r}]")
    for t, run in enumerate(d.runs):
        recomputed = total(v.n[j, t, o] for j in mine for o in d.options if o != "none")
        if run.cost.remat_bytes > 0 and any(o != "none" for o in d.options):
            y = model.var(f"y[rank={r},run={t}]", 0, 1, integer=True)
            model.add(recomputed, "<=", y * run.length, f"recomputes[rank={r},run={t}]")
            model.add(remat, ">=", y * (run.cost.remat_bytes / GiB), f"remat[rank={r},run={t}]")
    if d.par.zero != 3:
        return remat * GiB
    gather = model.var(f"gather_GiB[rank={r}]")
    for j in mine:
        for kind, end in ([("embedding", d.emb)] if j == 0 else []) + (
            [("head", d.head)] if j == d.n_chunks - 1 else []
        ):
            model.add(
                gather,
                ">=",
                end.params_local * d.gather_bytes_per_param / GiB,
                f"gather_end[rank={r},chunk={j},layer={kind}]",
            )
    for t, run in enumerate(d.runs):
        w = model.var(f"w[rank={r},run={t}]", 0, 1, integer=True)
        model.add(
            total(v.n[j, t, o] for j in mine for o in d.options), "<=", w * run.length, f"holds[rank={r},run={t}]"
        )
        model.add(
            gather, ">=", w * (run.cost.params_local * d.gather_bytes_per_param / GiB), f"gather[rank={r},run={t}]"
        )
    return (remat + gather) * GiB


def build_placement_model(
    d: PlacementData, exact: bool = True, cuts: list | None = None
) -> tuple[Model, PlacementVars]:
    """Data → model → variables → constraints → objective (OR-Tools samples' order).
    ``exact``: the schedule DAG (family 3); otherwise its rank bounds (family 3')."""
    model, v = Model("placement" if exact else "placement_bound"), PlacementVars()
    add_assignment_constraints(model, d, v)
    add_chunk_time_constraints(model, d, v)
    if exact:
        add_schedule_constraints(model, d, v)
    else:
        add_rank_bound_constraints(model, d, v)
        add_path_cuts(model, d, v, cuts or [])
    add_tail_constraints(model, d, v)
    add_memory_constraints(model, d, v)
    model.minimize(v.T)
    return model, v


def read_assignment(
    d: PlacementData, v: PlacementVars, values: dict[str, float]
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Blocks per chunk and the recompute option of every block, from a solution."""
    sizes, recompute = [], []
    for j in range(d.n_chunks):
        count = 0
        for t in range(len(d.runs)):
            for o in d.options:
                k = int(round(values[v.n[j, t, o].name]))
                recompute += [o] * k
                count += k
        sizes.append(count)
    return tuple(sizes), tuple(recompute)
