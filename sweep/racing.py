"""Fair racing: stop an arm, or a learning rate within an arm, once it is confidently not the best
even where it can still go, without the fast-learner bias of equal-budget racing (ASHA, the
median rule), which the paper warns about (balanced models peak at 33M examples, unbalanced at
104M).

Every evaluation's validation d' is also computed on the same bootstrap resamples of the
validation clips for every trial (sweep/train.py; [resamples] per evaluation), so the smoothed
d' at a trial's pick is known on each resample: the mean over the pick's window. A setting is an
arm at a learning rate (its replicate seeds averaged). On the traces as they stand:

    current[s]      the setting's smoothed d' at its picks, on each resample
    optimistic[s]   the same plus headroom: where each trace can still go, the rise of its
                    smoothed d' over its last doubling of examples for every doubling left to the
                    cap, plus twice the noise of a window's mean (`headroom`); none for a trial
                    that has finished (settled or at the cap)
    p[s]            the share of resamples on which optimistic[s] reaches the best current of its
                    rivals: the settings that reached their picks in at most 1 / ratio of the
                    examples s has seen (ratio: the stopping rule's)

A setting with p below `p_eliminate` stops. A slow learner is judged only against settings that
needed half as long or less to reach their picks (and a trial still at chance only against
settings that had learned by half its examples), never against a faster one that has not yet had
the chance to fall back. An arm is out once every learning rate of it is. Pure numpy: the Tune
scheduler (sweep/scheduler.py) and the whole-sweep simulator (bench/sweep_sim.py) call `race`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sweep.select import StoppingRule, noise, pick, smoothed
from sweep.trial import Arm, Trial

__all__ = ["EXPECTED_COMPUTE", "RaceTrace", "Elimination", "headroom", "race"]

# The compute of a sweep with racing and refinement against the stopping rule alone, in 500
# simulated paper-scale sweeps (python bench/sweep_sim.py; docs/benchmarks.md)
EXPECTED_COMPUTE = 0.42


@dataclass(frozen=True)
class RaceTrace:
    """A trial's trace as racing sees it: examples seen [evals], validation d' [evals], the same
    on each resample of the validation clips [evals, resamples] (NaN where not known), and
    whether the trial has finished (settled, or at the cap)."""
    trial: Trial
    examples: np.ndarray
    dprime: np.ndarray
    resampled: np.ndarray
    finished: bool = False


@dataclass(frozen=True)
class Elimination:
    """A trial stopped by racing: at `examples` seen, its arm's (`level` "arm") or its learning
    rate's (`level` "lr") chance `p` of being best, and what it lost to (`against`: an arm's
    label, or a learning rate). Level "neighbours": a new arm's learning rate not started, as it
    was eliminated in both neighbouring arms (sweep/refine.py `ruled_out`; `against` names them)."""
    trial: Trial
    examples: int
    p: float
    level: str
    against: str


def headroom(examples: np.ndarray, dprime: np.ndarray, rule: StoppingRule, cap: int) -> float:
    """How far above its pick the smoothed d' of a trace [evals] may still go by the cap, as an
    optimist would have it: the latest full-window value plus, for every doubling of examples
    left (log2(cap / examples there)), the rise over the last doubling, plus twice the standard
    error of a window's mean; at least 0. Inf while no window is full."""
    s = smoothed(dprime, rule.window)
    defined = np.flatnonzero(~np.isnan(s))
    if not defined.size:
        return math.inf
    j, i = int(defined[-1]), int(np.nanargmax(s))
    e = float(examples[j])
    half = int(defined[np.argmin(np.abs(examples[defined] - e / 2))])
    rise = max(0.0, float(s[j] - s[half]))
    doublings = max(0.0, math.log2(cap / e)) if e > 0 else math.inf
    sigma = noise(dprime)
    jitter = 2 * (sigma if math.isfinite(sigma) else 0.0) * math.sqrt(2 / rule.window)
    return max(0.0, float(s[j]) + rise * doublings + jitter - float(s[i]))


def _picks(traces: list[RaceTrace], rule: StoppingRule, cap: int) -> dict[Trial, tuple[float, np.ndarray, float, int]]:
    """Per trial with a pick whose window is known on every resample: (smoothed d' at the pick,
    the same per resample [resamples], headroom, examples at the pick)."""
    h, out = rule.window // 2, {}
    for t in traces:
        i = pick(t.dprime, rule.window)
        if i is None:
            continue
        window = np.asarray(t.resampled[i - h:i + h + 1], dtype=np.float64)
        if np.isnan(window).any():
            continue
        room = 0.0 if t.finished else headroom(t.examples, t.dprime, rule, cap)
        out[t.trial] = (float(smoothed(t.dprime, rule.window)[i]), window.mean(axis=0), room, int(t.examples[i]))
    return out


def _groups(picks: dict) -> dict[tuple[Arm, float], list[Trial]]:
    """The trials with a pick by (arm, learning rate): the replicate seeds of one setting."""
    groups: dict[tuple[Arm, float], list[Trial]] = {}
    for t in sorted(picks, key=lambda t: t.seed):
        groups.setdefault((t.arm, t.lr), []).append(t)
    return groups


def race(traces: list[RaceTrace], rule: StoppingRule, cap: int, p_eliminate: float, labels: dict[Arm, str]
         ) -> list[Elimination]:
    """The trials to stop now (see the module docstring). Each setting (an arm at a learning rate,
    its seeds averaged) is judged against the settings that reached their picks in at most 1 /
    `rule.ratio` of the examples it has seen: stopped when its optimistic value (pick + headroom)
    reaches the best of their current values on fewer than `p_eliminate` of the resamples. The
    best setting is never judged. `level` is "arm" when the setting was its arm's best learning
    rate, else "lr". Finished trials are judged but not listed (they stopped already)."""
    picks = _picks(traces, rule, cap)
    seen = {t.trial: int(t.examples[-1]) if len(t.examples) else 0 for t in traces}
    running = {t.trial for t in traces if not t.finished}
    groups = _groups(picks)
    if len(groups) < 2:
        return []
    current = {g: np.mean([picks[t][1] for t in ts], axis=0) for g, ts in groups.items()}
    optimistic = {g: np.mean([picks[t][1] + picks[t][2] for t in ts], axis=0) for g, ts in groups.items()}
    full = {g: float(np.mean([picks[t][0] for t in ts])) for g, ts in groups.items()}
    reached = {g: max(picks[t][3] for t in ts) for g, ts in groups.items()}
    arm_best = {a: max(sorted(lr for b, lr in groups if b == a), key=lambda lr: full[a, lr]) for a, _ in groups}
    leader = max(sorted(groups, key=lambda g: (g[0].beta, g[1])), key=lambda g: full[g])
    out = []
    for g, ts in groups.items():
        mine = [t for t in ts if t in running]
        if g == leader or not mine:
            continue
        rivals = [h for h in groups if h != g and min(seen[t] for t in ts) >= rule.ratio * reached[h]]
        if not rivals:
            continue
        p = float(np.mean(optimistic[g] >= np.max([current[h] for h in rivals], axis=0)))
        if p < p_eliminate:
            top = max(rivals, key=lambda h: full[h])
            against = labels[top[0]] if top[0] != g[0] else f"lr={top[1]:g}"
            level = "arm" if arm_best[g[0]] == g[1] else "lr"
            out += [Elimination(t, seen[t], p, level, against) for t in mine]
    return out
