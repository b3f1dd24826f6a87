"""A beta grid that refines itself: start from the coarse grid (`sweep.betas`) and, each time
every trial of the grid has finished (settled, at the cap, or stopped by racing), add betas only
where the best beta may lie: on both sides of every arm still within noise of the best (the best
itself and each arm with p_best >= P_PLAUSIBLE; an arm racing eliminated has none), at the
midpoint to its neighbouring beta, rounded to the finest step (`sweep.beta_step`). Refining stops
once the verdict is resolved, no midpoint is new and at least a step from both ends, or the grid
has `sweep.max_arms` arms.

A new arm does not train a learning rate that racing eliminated as not its arm's best in both
arms next to it on the grid (`ruled_out`): the grid refines only between arms, and a rate too
small or too large on both sides of a beta is taken to be so at it too (the arm's value is the
best of its other rates, which trained on both sides). Pure: the Tune searcher
(sweep/scheduler.py) and the whole-sweep simulator (bench/sweep_sim.py) both call it.
"""
from __future__ import annotations

from sweep.confidence import P_PLAUSIBLE
from sweep.trial import Arm

__all__ = ["neighbours", "refine", "ruled_out"]


def refine(arms: list[Arm], best: Arm, p_best: dict[Arm, float], resolved: bool, step: float, max_arms: int
           ) -> list[Arm]:
    """The arms to add to the grid `arms` (see the module docstring), the most likely first.
    `best`: the selected arm; `p_best`: each contender's chance of being best."""
    if resolved or len(arms) >= max_arms:
        return []
    line = {a.beta: a for a in arms if a.scheme == best.scheme or a.beta == 0}  # beta 0 is every scheme's
    betas = sorted(line)
    near = sorted((b for b in betas if b == best.beta or p_best.get(line[b], 0.0) >= P_PLAUSIBLE),
                  key=lambda b: (b != best.beta, -p_best.get(line[b], 0.0)))
    new: list[Arm] = []
    for b in near:
        i = betas.index(b)
        for j in (i - 1, i + 1):
            if not 0 <= j < len(betas):
                continue
            mid = round(round((b + betas[j]) / 2 / step) * step, 10)
            if min(abs(mid - b), abs(mid - betas[j])) >= step - 1e-9 and mid not in {*line, *(a.beta for a in new)}:
                new.append(Arm(best.scheme, mid))
    return new[:max(0, max_arms - len(arms))]


def neighbours(arm: Arm, arms: list[Arm]) -> tuple[Arm, Arm] | None:
    """The arms next to `arm` on its line of the grid `arms` (the nearest beta below and above,
    of its recipe or beta 0); None at an end of the line."""
    line = {a.beta: a for a in arms if (a.scheme == arm.scheme or a.beta == 0) and a.beta != arm.beta}
    below, above = [b for b in line if b < arm.beta], [b for b in line if b > arm.beta]
    return (line[max(below)], line[min(above)]) if below and above else None


def ruled_out(arm: Arm, arms: list[Arm], out: dict[Arm, dict[float, float]]) -> dict[float, float]:
    """The learning rates the new `arm` does not train: lr -> the larger of the two chances of
    being best at elimination, for each rate eliminated as not its arm's best (`out`: arm -> {lr:
    p}) in both neighbours."""
    sides = neighbours(arm, arms)
    if sides is None:
        return {}
    lo, hi = (out.get(a, {}) for a in sides)
    return {lr: max(lo[lr], hi[lr]) for lr in sorted(lo.keys() & hi.keys())}
