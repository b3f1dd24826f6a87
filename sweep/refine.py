"""A beta grid that refines itself: start from the coarse grid (`sweep.betas`) and, each time
every trial of the grid has finished (settled, at the cap, or stopped by racing), add betas only
where the best beta may lie: between the best arm and each neighbouring beta of its scheme that
is still within noise of it (p_best >= P_PLAUSIBLE, not eliminated), at the midpoint rounded to
the finest step (`sweep.beta_step`). Refining stops once the verdict is resolved, no midpoint is
new and at least a step from both ends, or the grid has `sweep.max_arms` arms. Pure: the Tune
searcher (sweep/scheduler.py) and the whole-sweep simulator (bench/sweep_sim.py) both call it.
"""
from __future__ import annotations

from sweep.confidence import P_PLAUSIBLE
from sweep.trial import Arm

__all__ = ["refine"]


def refine(arms: list[Arm], best: Arm, p_best: dict[Arm, float], resolved: bool, step: float, max_arms: int
           ) -> list[Arm]:
    """The arms to add to the grid `arms` (see the module docstring). `best`: the selected arm;
    `p_best`: each contender's chance of being best (an arm racing eliminated has none)."""
    if resolved or len(arms) >= max_arms:
        return []
    line = {a.beta: a for a in arms if a.scheme == best.scheme or a.beta == 0}  # beta 0 is every scheme's
    betas = sorted(line)
    i = betas.index(best.beta)
    new = []
    for j in (i - 1, i + 1):
        if not 0 <= j < len(betas) or p_best.get(line[betas[j]], 0.0) < P_PLAUSIBLE:
            continue
        mid = round(round((best.beta + betas[j]) / 2 / step) * step, 10)
        if min(abs(mid - best.beta), abs(mid - betas[j])) >= step - 1e-9 and mid not in line:
            new.append(Arm(best.scheme, mid))
    return new[:max(0, max_arms - len(arms))]
