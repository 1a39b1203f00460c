"""Two last steps on the certified plan; neither can make it slower, so the certificate stays true.

``deeper_interleaving``: the exact search tries the interleaved schedule with 2 virtual stages
per rank (``--vpp auto``). More virtual stages shrink the bubble and the in-flight activations
of rank 0 at the price of more point-to-point sends, and tuned recipes use them (NVIDIA NeMo's
GPT-3 175B on 128 DGX A100 nodes: pp 8, 12 virtual stages). Certifying those candidates is
another matter: on memory-bound meshes (llama3-70b, tp 4 · pp 4, 12 virtual stages) neither
HiGHS nor SCIP closes the 48-chunk placement MILP in a minute. So the plan's own mesh is
re-scored with 3-32 virtual stages (even split, the plan's recompute per block, or the least
uniform recompute that fits), and the fastest that fits replaces it. The certificate's bound
still speaks of the searched space (docs/search.md); the plan is at least as fast.

``least_recompute``: among equally fast placements, prefer the one that recomputes less.

The placement MILP minimises step time only, so when recompute on a block costs nothing on the
critical path it may keep it: on gpt3-175b (tp 4 · pp 8 interleaved) one fully recomputed block on
pipeline rank 0 lengthens its last backward by exactly what it hides of the data-parallel reduce,
a tie to the last bit, and the plan showed a lone ``full`` among 95 ``none``. Recompute that buys
nothing still burns FLOPs, power and HFU-versus-MFU headroom, and it confuses whoever reads the plan.

``least_recompute`` weakens recompute one block at a time (full → none or selective, selective →
none) and keeps a change only when the plan still fits and its step time is no longer. The step
time never rises, so the certificate (incumbent, bound, gap) stays true. Blocks of one chunk with
one option are interchangeable in the cost model, so each attempt tries the chunk's last such
block; the number of attempts is a count, not a time budget, so the result is deterministic.
"""

from __future__ import annotations

from planner.config import PlanError, Recompute
from planner.cost.estimate import Estimate
from planner.knobs import RECOMPUTE_OPTIONS
from planner.schedules import INTERLEAVED
from planner.search.certificate import DeeperRecord, OutsideRecord
from planner.search.pace import Timed

WEAKER: dict[str, tuple[Recompute, ...]] = {"full": ("none", "selective"), "selective": ("none",)}
TIE_REL = 1e-12  # float noise of summing the same times in another order


# Virtual stages per rank that `deeper_interleaving` tries: highly composite counts, so that
# common layer counts divide (96 layers on pp 8: 12).
DEEPER_VPP = (3, 4, 6, 8, 12, 16, 24, 32)


def deeper_interleaving(
    est: Estimate,
    vpps: tuple[int, ...] = DEEPER_VPP,
    options: tuple[str, ...] = RECOMPUTE_OPTIONS,
    timed: Timed | None = None,
) -> Estimate:
    """``est``, or the same mesh interleaved with more virtual stages when that is faster and fits;
    recompute stays within ``options`` (the user's ``--recompute``). ``timed``: a trial predicted
    to end past its deadline is not made."""
    timed = timed or Timed()
    par = est.par
    if par.pp == 1 or not est.fits:
        return est
    blocks = est.model.num_layers
    per_block = tuple(par.recompute_of(i) for i in range(blocks))
    rc = per_block[0] if len(set(per_block)) == 1 else per_block
    best = est
    for v in vpps:
        if v <= (par.vpp if par.schedule_spec.virtual_stages else 1) or par.pp * v > blocks:
            continue
        trial = par.with_(schedule=INTERLEAVED.name, vpp=v, stage_layers=None)
        uniform = [o for o in ("none", "selective", "full") if o in options]
        for recompute in dict.fromkeys((rc, *uniform)):
            try:
                e = timed.estimate(est.model, est.cluster, est.train, trial.with_(recompute=recompute))
            except PlanError:
                break  # this virtual-stage count is invalid here (micro-batches, layers)
            if e is None:
                break  # past the deadline
            if e.fits:
                if e.step_time_s < best.step_time_s * (1 - TIE_REL):
                    best = e
                if recompute != rc:
                    break  # the least uniform recompute that fits; stronger ones are slower
    return best


def deepen_all(
    plan: Estimate,
    runner_ups: list[tuple[str, float, Estimate]],
    options: tuple[str, ...] = RECOMPUTE_OPTIONS,
    timed: Timed | None = None,
) -> list[tuple[str, float, Estimate]]:
    """``deeper_interleaving`` on the plan and on each runner-up ``(status, bound_s, estimate)``, so
    that the list compares like with like (a runner-up at 2 virtual stages would otherwise "lose"
    on a bubble the plan shed after the search); sorted fastest first, the plan first on ties.
    A deepened entry carries the even split: its status becomes ``heuristic``. Entries that end on
    the same candidate (mesh, micro-batch, ZeRO, schedule, virtual stages; the key the alternatives
    list uses) are one plan and the slower copies are dropped: a 1f1b runner-up deepens to the same
    interleaved schedule as the plan of its mesh, so the plan would be listed as its own runner-up.
    ``timed``: trials predicted to end past its deadline are not made."""
    out = []
    for status, bound, e in [("optimal", 0.0, plan)] + list(runner_ups):
        d = deeper_interleaving(e, options=options, timed=timed)
        out.append((status, bound, e) if d is e else ("heuristic", bound, least_recompute(d, None, options, timed)))
    seen, unique = set(), []
    for entry in sorted(out, key=lambda x: x[2].step_time_s):
        key = entry[2].par.with_(recompute="none", stage_layers=None)
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def deeper_record(searched: Estimate, plan: Estimate, searched_vpp: tuple[int, ...]) -> dict[str, DeeperRecord]:
    """The certificate fields this step adds: ``deeper_interleaving`` (virtual stages and step
    times, before and after, and the virtual-stage counts the searched space covers), or none."""
    if plan is searched:
        return {}
    return {
        "deeper_interleaving": DeeperRecord(
            (searched.par.vpp, plan.par.vpp), tuple(searched_vpp), (searched.step_time_s, plan.step_time_s)
        )
    }


# Context-parallel degrees probed on the plan's mesh when --cp is auto and its range stops at 1.
PROBE_CP = (2, 4, 8)


def probe_outside(
    est: Estimate, options: tuple[str, ...] = RECOMPUTE_OPTIONS, timed: Timed | None = None
) -> tuple[OutsideRecord, ...]:
    """Plans just outside the searched space that beat ``est``, so the certificate does not hide
    them (the search covers cp 1 below 16k tokens): the plan's tensor and pipeline degrees with
    context parallelism carved out of its data parallelism, the least allowed uniform recompute
    that fits, even split. Returned, not adopted: the user widens ``--cp`` to search them.
    ``timed``: a probe predicted to end past its deadline is not made."""
    par, timed = est.par, timed or Timed()
    out: list[OutsideRecord] = []
    if not est.fits:
        return ()
    for cp in PROBE_CP:
        if par.dp % cp or par.cp != 1:
            continue
        trial = par.with_(cp=cp, dp=par.dp // cp, stage_layers=None)
        for rc in [o for o in RECOMPUTE_OPTIONS if o in options]:
            try:
                e = timed.estimate(est.model, est.cluster, est.train, trial.with_(recompute=rc))
            except PlanError:
                break
            if e is None:
                return tuple(sorted(out, key=lambda r: r.step_time_s))  # past the deadline
            if e.fits:
                if e.step_time_s < est.step_time_s * (1 - TIE_REL):
                    out.append(OutsideRecord("cp", cp, e.step_time_s, f"--cp 1,{cp}"))
                break
    return tuple(sorted(out, key=lambda r: r.step_time_s))


def least_recompute(
    est: Estimate,
    max_tries: int | None = None,
    options: tuple[str, ...] = RECOMPUTE_OPTIONS,
    timed: Timed | None = None,
) -> Estimate:
    """``est`` with recompute removed wherever that costs no step time and still fits, never to an
    option outside ``options`` (the user's ``--recompute``). ``timed``: the tries stop at the
    first one predicted to end past its deadline."""
    timed = timed or Timed()
    par = est.par
    if par.recompute == "none" or not est.fits:
        return est
    rc = [par.recompute_of(i) for i in range(est.model.num_layers)]
    chunks = est.chunks
    tries = 4 * len(chunks) if max_tries is None else max_tries
    best, changed = est, True
    while changed and tries > 0:
        changed = False
        for c in chunks:
            for opt in ("full", "selective"):
                mine = [i for i in range(c.first_block, c.first_block + c.num_blocks) if rc[i] == opt]
                if not mine or tries <= 0:
                    continue
                for weaker in (w for w in WEAKER[opt] if w in options):
                    tries -= 1
                    trial = rc.copy()
                    trial[mine[-1]] = weaker
                    e = timed.estimate(est.model, est.cluster, est.train, par.with_(recompute=tuple(trial)))
                    if e is None:
                        return best  # past the deadline: the best so far, a valid plan no slower
                    if e.fits and e.step_time_s <= best.step_time_s * (1 + TIE_REL):
                        best, rc, changed = e, trial, True
                        break
                    if tries <= 0:
                        break
    if best is not est and all(x == "none" for x in rc) and "none" in options:
        best = timed.estimate(est.model, est.cluster, est.train, par.with_(recompute="none")) or best
    return best
