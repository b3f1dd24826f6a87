"""Fair racing: stop an arm, or a learning rate within an arm, once it is confidently not the best
even where it can still go, without the fast-learner bias of equal-budget racing (ASHA, the
median rule), which the paper warns about (balanced models peak at 33M examples, unbalanced at
104M).

Every evaluation's validation d' is also computed on the same bootstrap resamples of the
validation clips for every trial (sweep/train.py; [resamples] per evaluation), so the smoothed
d' at a trial's pick is known on each resample: the mean over the pick's window. On the traces
as they stand:

    current[arm]    the selection's own rule (sweep/select.py arm_values) on each resample
    optimistic[arm] per learning rate the mean over seeds of pick + headroom, the best learning
                    rate on each resample: headroom is where the trace can still go, the rise of
                    its smoothed d' over its last doubling of examples for every doubling left to
                    the cap, plus twice the noise of a window's mean (`headroom`); none for a
                    trial that has finished (settled or at the cap)
    p[arm]          the share of resamples on which optimistic[arm] reaches the best current of
                    the other arms

An arm with p below `p_eliminate` stops, but only once each of its trials has seen `ratio` (the
stopping rule's) times the examples of the leading arm's picks: a slow learner is never judged
before it has trained twice as long as the leader needed, and a trial still at chance is never
judged while the leader was at chance at the same examples. The same test runs between the
learning rates of one arm. Pure numpy: the Tune scheduler (sweep/scheduler.py) and the
whole-sweep simulator (bench/sweep_sim.py) both call `race`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sweep.select import StoppingRule, arm_values, best_arm, noise, pick, smoothed
from sweep.trial import Arm, Trial

__all__ = ["RaceTrace", "Elimination", "headroom", "race"]


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
    label, or a learning rate)."""
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


def _lr_means(picks: dict, trials: list[Trial], optimistic: bool) -> dict[float, np.ndarray]:
    """Per learning rate of `trials`, the mean over seeds of their picks per resample
    [resamples] (with each trial's headroom added if `optimistic`)."""
    groups: dict[float, list[np.ndarray]] = {}
    for t in trials:
        _, samples, room, _ = picks[t]
        groups.setdefault(t.lr, []).append(samples + (room if optimistic else 0.0))
    return {lr: np.mean(v, axis=0) for lr, v in groups.items()}


def _chance(optimistic: np.ndarray, rivals: list[np.ndarray]) -> float:
    """The share of resamples on which `optimistic` reaches the best of `rivals`."""
    return float(np.mean(optimistic >= np.max(rivals, axis=0)))


def race(traces: list[RaceTrace], rule: StoppingRule, cap: int, p_eliminate: float, labels: dict[Arm, str]
         ) -> list[Elimination]:
    """The trials to stop now (see the module docstring): those of arms, then of learning rates
    within an arm, whose chance of being best, optimistically, is below `p_eliminate`, once they
    have trained `rule.ratio` times the examples of the leader's picks. Finished trials are
    judged but not listed (they stopped already)."""
    picks = _picks(traces, rule, cap)
    seen = {t.trial: int(t.examples[-1]) if len(t.examples) else 0 for t in traces}
    running = {t.trial for t in traces if not t.finished}
    chosen = arm_values({t: np.concatenate([[full], samples]) for t, (full, samples, _, _) in picks.items()})
    trials = {a: [t for t in picks if t.arm == a] for a in chosen}

    def judged(mine: list[Trial], lead: list[Trial]) -> bool:  # trained ratio x the leader's picks
        return all(seen[t] >= rule.ratio * max(picks[x][3] for x in lead) for t in mine)

    out: list[Elimination] = []
    if len(chosen) > 1:
        leader = best_arm({a: float(v[0]) for a, (_, v) in chosen.items()})
        lead = [t for t in trials[leader] if t.lr == chosen[leader][0]]
        for a in chosen:
            if a == leader or not judged(trials[a], lead):
                continue
            optimistic = np.max(list(_lr_means(picks, trials[a], optimistic=True).values()), axis=0)
            p = _chance(optimistic, [v[1:] for b, (_, v) in chosen.items() if b != a])
            if p < p_eliminate:
                out += [Elimination(t, seen[t], p, "arm", labels[leader]) for t in trials[a] if t in running]
    gone = {e.trial for e in out}
    for a, (top, _) in chosen.items():
        current, optimistic = (_lr_means(picks, trials[a], optimistic=o) for o in (False, True))
        if len(current) < 2 or any(t in gone for t in trials[a]):
            continue
        lead = [t for t in trials[a] if t.lr == top]
        for lr in current:
            mine = [t for t in trials[a] if t.lr == lr]
            if lr == top or not judged(mine, lead):
                continue
            p = _chance(optimistic[lr], [current[other] for other in current if other != lr])
            if p < p_eliminate:
                out += [Elimination(t, seen[t], p, "lr", f"lr={top:g}") for t in mine if t in running]
    return out
