"""Intra-op sharding ILP (OneFlow's SBP strategies, Alpa's intra-op pass) over one layer's op graph
on a 1-D tensor-parallel mesh (sbp.py) or a 2-D one (sbp_2d.py) (DESIGN §5.3).

Data: ops ``i`` with strategies ``k ∈ K_i`` (planner/search/milp/sbp.py), each with a node cost
``c[i,k]`` = forward + backward compute + in-op collectives (seconds → integer ns) and a per-rank
memory ``m[i,k]`` (bytes); edges ``e = (u → v, slot j)`` with a resharding cost ``r[e,a,b]`` for
producer strategy ``a`` and consumer strategy ``b``: the forward conversion of the tensor from
``out(u,a)`` to ``in_j(v,b)`` plus the backward conversion of its gradient from ``in_grad_j(v,b)``
to ``out_grad(u,a)`` (Alpa, Zheng et al. 2022, §4.2 eq. 1 prices both directions of a training
graph the same way).

Variables: ``x[op=i,s=k] ∈ {0,1}`` — op i runs strategy k; ``y[e=u>v.j,a=a,b=b] ∈ {0,1}`` — the
edge's endpoints run (a, b).

Constraint families (one function each):

* one strategy per op — ``add_one_strategy_constraints``: ``Σ_k x[i,k] = 1``.
* edge product — ``add_edge_product_constraints``: ``y[e,a,b] ≤ x[u,a]``, ``y[e,a,b] ≤ x[v,b]``,
  ``Σ_{a,b} y[e,a,b] = 1``: exactly one pair is on and both its endpoints are chosen, so
  ``y[e,a,b] = x[u,a]·x[v,b]`` exactly (no sign condition on r needed); pairs with an impossible
  conversion (into P) are fixed to 0.
* boundary — ``add_boundary_constraints`` (blocks that feed a copy of themselves):
  ``x[input,k] = x[output,k]`` for every layout k.
* memory budget (optional) — ``add_memory_budget_constraint``: ``Σ_{i,k} m[i,k]·x[i,k] ≤ M``.

Objective: ``min Σ_{i,k} c[i,k]·x[i,k] + Σ_{e,a,b} r[e,a,b]·y[e,a,b]`` in integer nanoseconds,
solved by CP-SAT through ``intmodel.IntModel`` (PuLP/CBC solves the same model in tests).
Repeated identical layers are solved once: plans are cached by the graph's signature and the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.config import PlanError
from planner.search.milp.intmodel import IntModel
from planner.search.milp.model import SolveStatus
from planner.search.milp.sbp import INF, ShardingMesh, Strategy
from planner.search.milp.sbp_2d import ShardingMesh2D
from planner.search.milp.sharding_graph import OpGraph
from planner.search.milp.sharding_plan import OpSharding, Reshard, ShardingPlan

NS = 1e-9
Mesh = ShardingMesh | ShardingMesh2D


@dataclass(frozen=True)
class Edge:
    """Tensor of op ``src`` read by op ``dst`` as its input ``slot``; ``cost_ns[a][b]`` (None: impossible)."""

    src: int
    dst: int
    slot: int
    cost_ns: tuple[tuple[int | None, ...], ...]

    def key(self, graph: OpGraph) -> str:
        return f"{graph.ops[self.src].name}>{graph.ops[self.dst].name}.{self.slot}"


@dataclass(frozen=True)
class ShardingProblem:
    """Strategies per op and priced edges: the ILP's data."""

    graph: OpGraph
    mesh: Mesh
    strategies: tuple[tuple[Strategy, ...], ...]
    edges: tuple[Edge, ...]

    def node_ns(self, i: int, k: int) -> int:
        s = self.strategies[i][k]
        return round((s.compute_s + s.comm_s) / NS)

    def cost_ns(self, choice: tuple[int, ...]) -> int | None:
        """Objective of a full assignment (op index → strategy index); None if it is impossible."""
        total = sum(self.node_ns(i, k) for i, k in enumerate(choice))
        for e in self.edges:
            c = e.cost_ns[choice[e.src]][choice[e.dst]]
            if c is None:
                return None
            total += c
        return total

    def memory_bytes(self, choice: tuple[int, ...]) -> float:
        return sum(self.strategies[i][k].memory_bytes for i, k in enumerate(choice))


def _edge_cost(problem_ops: list[list[Strategy]], graph: OpGraph, mesh: Mesh, src: int, dst: int, slot: int) -> Edge:
    """Forward conversion of the tensor plus backward conversion of its gradient, per (a, b)."""
    u = graph.ops[src]
    nbytes = u.rows * u.width * mesh.act_bytes
    grads = graph.ops[dst].kind != "embedding"  # token ids carry no gradient
    rows = []
    for a in problem_ops[src]:
        row: list[int | None] = []
        for b in problem_ops[dst]:
            s = mesh.conversion_s(a.output, b.inputs[slot], nbytes)
            s += mesh.conversion_s(b.in_grads[slot], a.out_grad, nbytes) if grads else 0.0
            row.append(None if s == INF else round(s / NS))
        rows.append(tuple(row))
    return Edge(src, dst, slot, tuple(rows))


def build_problem(graph: OpGraph, mesh: Mesh) -> ShardingProblem:
    """Enumerate every op's strategies and price every edge (module docstring)."""
    strategies = [mesh.strategies(op, graph) for op in graph.ops]
    index = {op.name: i for i, op in enumerate(graph.ops)}
    edges = [
        _edge_cost(strategies, graph, mesh, index[src], dst, slot)
        for dst, op in enumerate(graph.ops)
        for slot, src in enumerate(op.inputs)
    ]
    return ShardingProblem(graph, mesh, tuple(tuple(s) for s in strategies), tuple(edges))


@dataclass
class _Vars:
    """``x[i][k]`` and ``y[e][(a, b)]``: the IntModel variable names, indexed like the data."""

    x: list[list[str]]
    y: list[dict[tuple[int, int], str]]


def _add_variables(m: IntModel, p: ShardingProblem, fixed: dict[str, str]) -> _Vars:
    """One x per (op, strategy), fixed where ``fixed`` names the op's strategy; one y per edge pair."""
    x = []
    for op, strategies in zip(p.graph.ops, p.strategies):
        want = fixed.get(op.name)
        x.append(
            [
                m.bool_var(f"x[op={op.name},s={s.name}]", None if want is None else int(s.name == want))
                for s in strategies
            ]
        )
    y = []
    for e in p.edges:
        key = e.key(p.graph)
        names = {}
        for a, row in enumerate(e.cost_ns):
            for b, c in enumerate(row):
                sa, sb = p.strategies[e.src][a].name, p.strategies[e.dst][b].name
                names[(a, b)] = m.bool_var(f"y[e={key},a={sa},b={sb}]", 0 if c is None else None)
        y.append(names)
    return _Vars(x, y)


def add_one_strategy_constraints(m: IntModel, p: ShardingProblem, v: _Vars) -> None:
    """Each op runs exactly one strategy: ``Σ_k x[i,k] = 1``."""
    for i, op in enumerate(p.graph.ops):
        m.add({name: 1 for name in v.x[i]}, "==", 1, f"one_strategy[op={op.name}]")


def add_edge_product_constraints(m: IntModel, p: ShardingProblem, v: _Vars) -> None:
    """Each edge's pair variable is the product of its endpoints' choices:
    ``y[e,a,b] ≤ x[u,a]``, ``y[e,a,b] ≤ x[v,b]``, ``Σ_{a,b} y[e,a,b] = 1``."""
    for e, names in zip(p.edges, v.y):
        key = e.key(p.graph)
        for (a, b), name in names.items():
            sa, sb = p.strategies[e.src][a].name, p.strategies[e.dst][b].name
            m.add({name: 1, v.x[e.src][a]: -1}, "<=", 0, f"edge_src[e={key},a={sa},b={sb}]")
            m.add({name: 1, v.x[e.dst][b]: -1}, "<=", 0, f"edge_dst[e={key},a={sa},b={sb}]")
        m.add({name: 1 for name in names.values()}, "==", 1, f"edge_one[e={key}]")


def add_boundary_constraints(m: IntModel, p: ShardingProblem, v: _Vars) -> None:
    """A block leaves in the layout it came in: ``x[input,k] = x[output,k]`` for each layout k."""
    first, last = p.strategies[0], p.strategies[-1]
    for k, s in enumerate(first):
        match = [j for j, t in enumerate(last) if t.output == s.output]
        terms = {v.x[0][k]: 1} | {v.x[-1][j]: -1 for j in match}
        m.add(terms, "==", 0, f"boundary[layout={s.output}]")


def add_memory_budget_constraint(m: IntModel, p: ShardingProblem, v: _Vars, budget_bytes: int) -> None:
    """Per-rank weight state + activations fit the budget: ``Σ_{i,k} m[i,k]·x[i,k] ≤ M``."""
    terms = {v.x[i][k]: round(s.memory_bytes) for i, ss in enumerate(p.strategies) for k, s in enumerate(ss)}
    m.add(terms, "<=", budget_bytes, "memory_budget")


def build_model(
    p: ShardingProblem, budget_bytes: int | None = None, fixed: dict[str, str] | None = None
) -> tuple[IntModel, _Vars]:
    """Variables, the constraint families of the module docstring, the objective."""
    m = IntModel(f"sharding[{p.graph.name},tp={p.mesh.tp}]")
    v = _add_variables(m, p, fixed or {})
    add_one_strategy_constraints(m, p, v)
    add_edge_product_constraints(m, p, v)
    if p.graph.tie_boundary:
        add_boundary_constraints(m, p, v)
    if budget_bytes is not None:
        add_memory_budget_constraint(m, p, v, budget_bytes)
    objective = {v.x[i][k]: p.node_ns(i, k) for i in range(len(p.strategies)) for k in range(len(p.strategies[i]))}
    for e, names in zip(p.edges, v.y):
        objective |= {name: e.cost_ns[a][b] or 0 for (a, b), name in names.items()}
    m.minimize(objective)
    return m, v


def _infeasible(p: ShardingProblem, budget_bytes: int | None, fixed: dict[str, str]) -> PlanError:
    """Say which family binds: the memory budget (with the least memory any plan needs) or a fixed pattern."""
    least = sum(min(s.memory_bytes for s in ss) for ss in p.strategies)
    if budget_bytes is not None and budget_bytes < least:
        return PlanError(
            f"sharding {p.graph.name} at tp={p.mesh.tp}: memory budget {budget_bytes / 2**30:.3f} GiB is below the "
            f"{least / 2**30:.3f} GiB every op's smallest strategy needs together; raise the budget or tp"
        )
    if budget_bytes is None:
        return PlanError(
            f"sharding {p.graph.name} at tp={p.mesh.tp}: the fixed strategies {fixed} leave no plan whose output "
            "layout matches its input layout (boundary); fix fewer ops"
        )
    return PlanError(
        f"sharding {p.graph.name} at tp={p.mesh.tp}: no plan fits the memory budget of {budget_bytes / 2**30:.3f} GiB "
        f"with the fixed strategies {fixed}; raise the budget or fix fewer ops"
    )


def plan_from_choice(p: ShardingProblem, choice: tuple[int, ...], backend: str, solve_s: float = 0.0) -> ShardingPlan:
    """The typed record of an assignment: per-op strategies and layouts, per-edge collectives."""
    g, ops = p.graph, []
    for i, k in enumerate(choice):
        s = p.strategies[i][k]
        ops.append(
            OpSharding(g.ops[i].name, s.name, s.inputs, s.output, s.weight, s.compute_s, s.comm_s, s.memory_bytes)
        )
    edges = []
    for e in p.edges:
        a, b = p.strategies[e.src][choice[e.src]], p.strategies[e.dst][choice[e.dst]]
        fwd = p.mesh.collective(a.output, b.inputs[e.slot])
        bwd = p.mesh.collective(b.in_grads[e.slot], a.out_grad) if g.ops[e.dst].kind != "embedding" else ""
        cost = (e.cost_ns[choice[e.src]][choice[e.dst]] or 0) * NS
        edges.append(Reshard(g.ops[e.src].name, g.ops[e.dst].name, e.slot, fwd, bwd, cost))
    total = (p.cost_ns(choice) or 0) * NS
    return ShardingPlan(g.name, p.mesh.tp, "optimal", backend, total, tuple(ops), tuple(edges), solve_s, p.mesh.shape)


_CACHE: dict[tuple, ShardingPlan] = {}
SOLVES = {"count": 0}  # ILP solves actually run (a cache hit does not count): repeated layers solve once


def solve(
    graph: OpGraph,
    mesh: Mesh,
    budget_bytes: int | None = None,
    fixed: dict[str, str] | None = None,
    backend: str = "cp-sat",
) -> ShardingPlan:
    """The optimal sharding of ``graph`` on ``mesh``; identical graphs (by signature) are solved once."""
    fixed = fixed or {}
    key = (graph.signature(), mesh.key(), budget_bytes, tuple(sorted(fixed.items())), backend)
    if key in _CACHE:
        return replace(_CACHE[key], graph=graph.name)
    p = build_problem(graph, mesh)
    unknown = {op: s for op, s in fixed.items() if s not in {t.name for t in p.strategies[_index(graph, op)]}}
    if unknown:
        raise PlanError(f"sharding {graph.name}: fixed strategies {unknown} are not among the ops' legal strategies")
    m, v = build_model(p, budget_bytes, fixed)
    sol = m.solve(backend)
    SOLVES["count"] += 1
    if sol.status == SolveStatus.INFEASIBLE:
        raise _infeasible(p, budget_bytes, fixed)
    if sol.status not in (SolveStatus.OPTIMAL, SolveStatus.FEASIBLE):
        raise PlanError(f"sharding {graph.name} at tp={mesh.tp}: {backend} found no solution ({sol.status})")
    choice = tuple(next(k for k, name in enumerate(xs) if sol.values[name]) for xs in v.x)
    plan = replace(plan_from_choice(p, choice, sol.backend, sol.wall_time_s), status=str(sol.status))
    _CACHE[key] = plan
    return plan


def _index(graph: OpGraph, name: str) -> int:
    for i, op in enumerate(graph.ops):
        if op.name == name:
            return i
    raise PlanError(f"sharding {graph.name}: no op named {name!r}")
