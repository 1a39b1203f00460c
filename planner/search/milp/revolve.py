"""Multi-level recomputation on a chain: Checkmate's staged formulation (Jain et al. 2020, MLSys:
``R[t,i]`` recompute, ``S[t,i]`` checkpoint, one stage per backward step) against Griewank's
binomial checkpointing optimum (Griewank 1992, "Achieving logarithmic growth of temporal and
spatial complexity in reverse automatic differentiation"; Griewank & Walther 2000, ACM TOMS
26(1), "Algorithm 799: revolve").

The problem (Griewank's): reverse a chain of ``l`` unit-cost steps ``x_{i−1} → x_i`` with ``c``
checkpoint slots, the input ``x_0`` in one of them; the adjoint of step ``i`` needs ``x_{i−1}``
in hand (step ``l``'s forward runs with its adjoint). Minimise the forward steps evaluated.
Closed form: with ``β(c, r) = C(c + r, c)`` and ``r`` the least integer with ``β(c, r) ≥ l``,
``t(l, c) = r·l − β(c + 1, r − 1)``. The two-phase form of ``recompute.py`` cannot express this
(a tensor recomputed in stage t and kept as a checkpoint for a later stage), hence the stages.

Stage ``t = 1..l`` reverses step ``l + 1 − t``; its target is ``x_{l−t}``. Variables:
``R[t,i]`` (``x_i`` computed in stage t, i = 1..l−1), ``S[t,i]`` (``x_i`` held in a slot through
stage t, i = 0..l−1), ``H[t,i]`` (a slot holds ``x_i`` at some time in stage t).
Constraint families, one function each:

- **input** (``add_input_constraint``): ``S[t,0] = 1`` (the input is kept) and ``S[1,i] = 0`` for
  ``i ≥ 1`` (nothing is stored before the forward sweep).
- **target** (``add_target_constraint``): stage t has its step's input, ``R[t,l−t] + S[t,l−t] ≥ 1``.
- **compute** (``add_compute_constraint``): a state is computed from its predecessor in hand,
  ``R[t,i] ≤ R[t,i−1] + S[t,i−1]`` (Checkmate's dependency constraint, on a chain).
- **carry** (``add_carry_constraint``): a checkpoint exists only if it was held or computed in
  the stage before, ``S[t+1,i] ≤ S[t,i] + R[t,i]`` (Checkmate's checkpoint-carry constraint).
- **slots** (``add_slots_constraint``): what stage t holds or writes for later fits the slots,
  ``H[t,i] ≥ S[t,i]``, ``H[t,i] ≥ S[t+1,i]``, ``Σ_i H[t,i] ≤ c`` (Checkmate's memory family with
  unit tensors, counted in Griewank's slots; the working state is not a slot).

Objective: minimise ``Σ_{t,i} R[t,i]``.
"""

from __future__ import annotations

from functools import cache
from math import comb

from planner.search.milp.intmodel import IntModel, IntSolution


def beta(c: int, r: int) -> int:
    """β(c, r) = (c + r)! / (c!·r!): the longest chain c slots reverse with r repetitions."""
    return comb(c + r, c)


def revolve_steps(length: int, slots: int) -> int:
    """Griewank's closed form t(l, c) (module docstring); 0 for a chain of one step."""
    if length < 1 or slots < 1:
        raise ValueError(f"a chain of {length} steps with {slots} slots: both must be >= 1")
    r = 0
    while beta(slots, r) < length:
        r += 1
    return r * length - beta(slots + 1, r - 1) if r else 0


@cache
def revolve_dp(length: int, slots: int) -> int:
    """The same optimum by Griewank's recursion: advance m steps, checkpoint, reverse the right
    part with one slot fewer, then the left part with all slots (Griewank 1992)."""
    if length == 1:
        return 0
    if slots == 1:
        return length * (length - 1) // 2
    return min(m + revolve_dp(length - m, slots - 1) + revolve_dp(m, slots) for m in range(1, length))


def _r(t: int, i: int) -> str:
    return f"R[stage={t},state={i}]"


def _s(t: int, i: int) -> str:
    return f"S[stage={t},state={i}]"


def add_input_constraint(m: IntModel, length: int) -> None:
    """The input is held throughout; nothing else is stored before stage 1."""
    for t in range(1, length + 1):
        m.add({_s(t, 0): 1}, "==", 1, f"input[stage={t}]")
    for i in range(1, length):
        m.add({_s(1, i): 1}, "==", 0, f"empty[state={i}]")


def add_target_constraint(m: IntModel, length: int) -> None:
    """Stage t has x_{l−t}, the input of the step it reverses: R[t,l−t] + S[t,l−t] ≥ 1."""
    for t in range(1, length):
        m.add({_r(t, length - t): 1, _s(t, length - t): 1}, ">=", 1, f"target[stage={t}]")


def add_compute_constraint(m: IntModel, length: int) -> None:
    """x_i is computed from x_{i−1} in hand: R[t,i] ≤ R[t,i−1] + S[t,i−1]."""
    for t in range(1, length + 1):
        for i in range(1, length):
            terms = {_r(t, i): 1, _s(t, i - 1): -1}
            if i > 1:
                terms[_r(t, i - 1)] = -1
            m.add(terms, "<=", 0, f"compute[stage={t},state={i}]")


def add_carry_constraint(m: IntModel, length: int) -> None:
    """A checkpoint was held or computed in the stage before: S[t+1,i] ≤ S[t,i] + R[t,i]."""
    for t in range(1, length):
        for i in range(1, length):
            m.add({_s(t + 1, i): 1, _s(t, i): -1, _r(t, i): -1}, "<=", 0, f"carry[stage={t},state={i}]")


def add_slots_constraint(m: IntModel, length: int, slots: int) -> None:
    """Held or written checkpoints of stage t fit the slots: Σ_i max(S[t,i], S[t+1,i]) ≤ c."""
    for t in range(1, length + 1):
        for i in range(length):
            h = m.bool_var(f"H[stage={t},state={i}]")
            m.add({h: 1, _s(t, i): -1}, ">=", 0, f"held[stage={t},state={i}]")
            if t < length:
                m.add({h: 1, _s(t + 1, i): -1}, ">=", 0, f"written[stage={t},state={i}]")
        m.add({f"H[stage={t},state={i}]": 1 for i in range(length)}, "<=", slots, f"slots[stage={t}]")


def build_chain_model(length: int, slots: int) -> IntModel:
    """The staged program of the module docstring for a chain of ``length`` steps."""
    if length < 1 or slots < 1:
        raise ValueError(f"a chain of {length} steps with {slots} slots: both must be >= 1")
    m = IntModel(f"revolve[l={length},c={slots}]")
    for t in range(1, length + 1):
        for i in range(length):
            m.bool_var(_s(t, i))
            if i:
                m.bool_var(_r(t, i))
    add_input_constraint(m, length)
    add_target_constraint(m, length)
    add_compute_constraint(m, length)
    add_carry_constraint(m, length)
    add_slots_constraint(m, length, slots)
    m.minimize({_r(t, i): 1 for t in range(1, length + 1) for i in range(1, length)})
    return m


def solve_chain(length: int, slots: int, backend: str = "cp-sat", time_limit_s: float = 60.0) -> IntSolution:
    """The least forward steps that reverse the chain (compare ``revolve_steps``)."""
    return build_chain_model(length, slots).solve(backend, time_limit_s)
