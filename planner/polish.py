"""Among equally fast placements, prefer the one that recomputes less.

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

from planner.estimate import Estimate, estimate

WEAKER = {"full": ("none", "selective"), "selective": ("none",)}
TIE_REL = 1e-12  # float noise of summing the same times in another order


def least_recompute(est: Estimate, max_tries: int | None = None) -> Estimate:
    """``est`` with recompute removed wherever that costs no step time and still fits."""
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
                for weaker in WEAKER[opt]:
                    tries -= 1
                    trial = rc.copy()
                    trial[mine[-1]] = weaker
                    e = estimate(est.model, est.cluster, est.train, par.with_(recompute=tuple(trial)))
                    if e.fits and e.predicted["step_time_s"] <= best.predicted["step_time_s"] * (1 + TIE_REL):
                        best, rc, changed = e, trial, True
                        break
                    if tries <= 0:
                        break
    if best is not est and all(x == "none" for x in rc):
        best = estimate(est.model, est.cluster, est.train, par.with_(recompute="none"))
    return best
