"""Checkpoint and hyperparameter selection (paper 3.2), and the stopping rule built on it.

A trial's validation d' trace [evals] is smoothed with a centred moving average over `window`
evaluations. Only evaluations with a *full* window inside the trace have a smoothed value: a
window shrunk at the ends is a noisier estimate and would win a max too often. A NaN
evaluation blanks only the windows that contain it. The pick of a trial is the evaluation
centred on the highest smoothed value (the first on ties).

A pick is *settled* (`StoppingRule`) once `patience` later evaluations have full windows, none
of them higher, and the trial has seen at least `ratio` times the examples of its pick. The
ratio makes the patience scale with each trial's own time to its pick: a patience fixed in
evaluations is long for a fast (balanced) trial and short for a slow (unbalanced) one, whose
noisy trace would stop on a plateau it was about to leave (the paper's Discussion: a budget
tuned to the balanced model favours balancing).

A trial that has not learned cannot settle: its pick must have clearly left the trace's
starting level (`learned`: above both the chance floor `rule.chance` and the trial's own d'
before its first training step, by `rule.learn_z` standard errors of the trace's own
evaluation-to-evaluation noise). A trace flat at chance, or one still on the level it started from, trains on; at the cap
it did not learn, which is reported as such, never as a measured effect of balancing.

The same functions decide when a trial stops (sweep/train.py), what MLflow logs as
`val_dprime_smoothed`, which checkpoints are kept, and what is selected, so the four agree.
An *arm* is one way of balancing: a scheme (data/balance.py) at an exponent beta; beta = 0, no
balancing, is one arm whatever the scheme. Per arm the learning rate whose picks have the
highest mean over replicate seeds wins; overall, the best arm.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from sweep.trial import Arm, Trial

__all__ = ["StoppingRule", "TrialTrace", "Selection", "ArmSelection", "smoothed", "pick", "noise", "learned",
           "settled", "latest_settled_pick", "cap_to_settle", "checkpoints_to_keep", "select_trial",
           "arm_values", "select_per_arm", "best_arm", "select_overall"]


@dataclass(frozen=True)
class StoppingRule:
    """When a pick is settled: `window` (odd) evaluations smoothed, `patience` full-window
    evaluations after the pick without a better one, at least `ratio` times the pick's examples
    seen, and the trace learned: its pick's smoothed d' `learn_z` standard errors above both the
    chance floor `chance` (0.1: macro AUC 0.528) and the trial's d' before training."""
    window: int = 7
    patience: int = 5
    ratio: float = 2.0
    chance: float = 0.1
    learn_z: float = 3.0


@dataclass
class TrialTrace:
    """One trial's validation trace: examples seen [evals], d' and mAP [evals], per evaluation
    the path of its checkpoint (None where its weights were not kept), and its d' before
    training (`start`; None if unknown)."""
    trial: Trial
    examples: np.ndarray
    dprime: np.ndarray
    mAP: np.ndarray
    checkpoints: list[str | None]
    start: float | None = None

    def __post_init__(self) -> None:
        self.examples = np.asarray(self.examples)
        self.dprime = np.asarray(self.dprime, dtype=np.float64)
        self.mAP = np.asarray(self.mAP, dtype=np.float64)
        lengths = {len(self.examples), len(self.dprime), len(self.mAP), len(self.checkpoints)}
        if len(lengths) != 1 or self.dprime.ndim != 1:
            raise ValueError(f"trial {self.trial.key}: examples, dprime, mAP and checkpoints must be "
                             f"1-D of one length, got {len(self.examples)}, {self.dprime.shape}, "
                             f"{len(self.mAP)}, {len(self.checkpoints)}")


@dataclass
class Selection:
    """The pick of one trial: evaluation index, examples seen there, smoothed and raw d', its
    checkpoint, whether the trace learned (`learned`) and whether the pick is settled
    (`converged`; never without learning) or the trial ran out of examples first, and the
    examples at the smoothed validation mAP's own pick (the paper's convergence figures are for
    mAP; selection stays on d'; None without a full mAP window)."""
    trial: Trial
    index: int
    examples_to_peak: int
    val_dprime: float
    val_dprime_raw: float
    checkpoint: str | None
    learned: bool
    converged: bool
    evaluations: int
    examples_to_map_peak: int | None


@dataclass
class ArmSelection:
    """One arm's answer: the learning rate chosen on the mean over seeds of the smoothed d' at
    the picks, and its pick in every seed (by seed)."""
    arm: Arm
    lr: float
    picks: list[Selection]

    @property
    def val_dprime(self) -> float:
        """The mean over seeds of the smoothed validation d' at the picks."""
        return float(np.mean([p.val_dprime for p in self.picks]))

    @property
    def learned(self) -> bool:
        """Every seed's trace learned (left its starting level)."""
        return all(p.learned for p in self.picks)

    @property
    def converged(self) -> bool:
        """Every seed's pick is settled."""
        return all(p.converged for p in self.picks)


def _half(window: int) -> int:
    if not isinstance(window, (int, np.integer)) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    return window // 2


def smoothed(values: np.ndarray, window: int = 7) -> np.ndarray:
    """Centred moving average [evals]: out[i] = mean(values[i - h : i + h + 1]), h = window // 2,
    where that whole window lies inside the trace and holds no NaN; NaN everywhere else (the
    first and last h evaluations, and every window containing a NaN evaluation)."""
    h = _half(window)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    out = np.full(v.size, np.nan)
    if v.size >= window:
        out[h:v.size - h] = np.lib.stride_tricks.sliding_window_view(v, window).mean(axis=1)
    return out


def pick(values: np.ndarray, window: int = 7) -> int | None:
    """Index of the evaluation centred on the highest smoothed value (the first on ties), or
    None while no evaluation has a full window free of NaN."""
    s = smoothed(values, window)
    return None if np.isnan(s).all() else int(np.nanargmax(s))


def noise(values: np.ndarray) -> float:
    """The standard deviation of one evaluation's value about the trace's local trend, robustly:
    the median absolute second difference (for iid noise sigma, d[i-1] - 2 d[i] + d[i+1] has sd
    sqrt(6) sigma; a linear trend cancels), scaled to a normal's sd. NaN with fewer than three
    consecutive finite evaluations."""
    v = np.asarray(values, dtype=np.float64)
    second = v[:-2] - 2 * v[1:-1] + v[2:] if v.size >= 3 else np.zeros(0)
    second = second[np.isfinite(second)]
    return float(1.4826 * np.median(np.abs(second)) / math.sqrt(6)) if second.size else float("nan")


def learned(values: np.ndarray, rule: StoppingRule = StoppingRule(), start: float | None = None) -> bool:
    """Whether the trace [evals] has clearly left its starting level: its best full-window
    smoothed value exceeds the chance floor `rule.chance` by `rule.learn_z` standard errors of a
    window's mean (noise x sqrt(2 / window), the 2 for the max over windows), and the trial's
    `start` (d' before its first training step; None: unknown, the floor alone) by as many
    standard errors of one evaluation against a window's mean (noise x sqrt(1 + 1 / window)), the
    noise being the trace's own (`noise`). False until a window is full."""
    s = smoothed(values, rule.window)
    if np.isnan(s).all():
        return False
    sigma = noise(values)
    sigma = sigma if math.isfinite(sigma) else 0.0
    level = rule.chance + rule.learn_z * sigma * math.sqrt(2 / rule.window)
    if start is not None and math.isfinite(start):
        level = max(level, start + rule.learn_z * sigma * math.sqrt(1 + 1 / rule.window))
    return bool(np.nanmax(s) >= level)


def settled(values: np.ndarray, examples: np.ndarray, rule: StoppingRule = StoppingRule(),
            start: float | None = None) -> bool:
    """True once the trace `values` [evals] (d', at `examples` [evals] seen) has learned
    (`learned`, from `start`), and its pick has `rule.patience` later evaluations with full
    windows, none higher (or one of them would be the pick), and the trial has seen `rule.ratio`
    times the pick's examples: training longer can no longer move it without a new peak. Windows
    blanked by a NaN evaluation do not count."""
    s = smoothed(values, rule.window)
    if np.isnan(s).all():
        return False
    i = int(np.nanargmax(s))
    after = int(np.count_nonzero(~np.isnan(s[i + 1:])))
    return bool(after >= rule.patience and examples[-1] >= rule.ratio * examples[i] and learned(values, rule, start))


def latest_settled_pick(cap: int, every: int, rule: StoppingRule = StoppingRule()) -> int:
    """The examples at the latest evaluation whose pick can still settle within a cap of `cap`
    examples with an evaluation every `every` (0: none can): it needs `rule.patience`
    full-window evaluations after it and `rule.ratio` times its examples by the cap."""
    n = -(-cap // every)                                  # evaluations, the last at the cap
    by_patience = n - _half(rule.window) - rule.patience  # the evaluation's number, 1-based
    by_ratio = int(cap / rule.ratio // every)
    last = min(by_patience, by_ratio)
    return last * every if last > _half(rule.window) else 0


def cap_to_settle(pick_examples: int, every: int, rule: StoppingRule = StoppingRule()) -> int:
    """The smallest cap (examples) at which a pick at `pick_examples` can settle, if it stays
    the pick: `rule.ratio` times its examples, and half a window plus `rule.patience`
    evaluations every `every` examples after it."""
    return max(math.ceil(rule.ratio * pick_examples), pick_examples + (_half(rule.window) + rule.patience) * every)


def checkpoints_to_keep(values: np.ndarray, window: int = 7, keep: int = 1) -> set[int]:
    """Evaluations whose model weights selection may still need: the `keep` best by smoothed
    value (the pick first), and the last h = window // 2 together with the latest (their windows
    are not full yet, so any of them can still become the pick)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    n, h = len(values), _half(window)
    s = smoothed(values, window)
    defined = np.flatnonzero(~np.isnan(s))
    best = defined[np.argsort(-s[defined], kind="stable")[:keep]]
    return {int(i) for i in best} | set(range(max(0, n - h), n)) | ({n - 1} if n else set())


def select_trial(trace: TrialTrace, rule: StoppingRule = StoppingRule()) -> Selection | None:
    """The pick of one trial, or None when no evaluation has a full window (too few
    evaluations, or NaN in every window)."""
    i = pick(trace.dprime, rule.window)
    if i is None:
        return None
    i_map = pick(trace.mAP, rule.window)
    return Selection(trace.trial, i, int(trace.examples[i]), float(smoothed(trace.dprime, rule.window)[i]),
                     float(trace.dprime[i]), trace.checkpoints[i], learned(trace.dprime, rule, trace.start),
                     settled(trace.dprime, trace.examples, rule, trace.start), len(trace.dprime),
                     int(trace.examples[i_map]) if i_map is not None else None)


def arm_values(values: dict[Trial, np.ndarray]) -> dict[Arm, tuple[float, np.ndarray]]:
    """The per-arm rule, on the full data or on every resample at once: per arm, each learning
    rate's mean over seeds of `values` (a trial's smoothed d' at its pick: [1], or [resamples]),
    and the learning rate whose mean is highest on the first entry (on ties the one whose trials
    come first) with its means."""
    by_lr: dict[tuple[Arm, float], list[np.ndarray]] = {}
    for trial in sorted(values, key=lambda t: t.seed):
        by_lr.setdefault((trial.arm, trial.lr), []).append(np.atleast_1d(values[trial]))
    best: dict[Arm, tuple[float, np.ndarray]] = {}
    for (arm, lr), seeds in by_lr.items():
        mean = np.mean(seeds, axis=0)
        if arm not in best or mean[0] > best[arm][1][0]:
            best[arm] = (lr, mean)
    return best


def select_per_arm(traces: list[TrialTrace], rule: StoppingRule = StoppingRule()) -> dict[Arm, ArmSelection]:
    """Per arm, the learning rate whose picks have the highest mean smoothed validation d' over
    seeds (arm_values), with its picks. A trace without a full window cannot be selected: it is
    skipped with a warning that says so."""
    picks: dict[Trial, Selection] = {}
    for trace in traces:
        sel = select_trial(trace, rule)
        if sel is None:
            warnings.warn(f"trial {trace.trial.key} has no {rule.window}-evaluation window free of NaN "
                          f"({len(trace.dprime)} evaluations): it cannot be selected")
            continue
        picks[trace.trial] = sel
    chosen = arm_values({t: np.array([p.val_dprime]) for t, p in picks.items()})
    return {arm: ArmSelection(arm, lr, sorted((p for t, p in picks.items() if t.arm == arm and t.lr == lr),
                                             key=lambda p: p.trial.seed))
            for arm, (lr, _) in chosen.items()}


def best_arm(values: dict[Arm, float]) -> Arm:
    """The arm with the highest value; on ties the smallest beta, then the arm that comes first:
    the one overall rule (select_overall; sweep/confidence.py's selected arm and runner-up)."""
    if not values:
        raise ValueError("no arms to choose from")
    return max(sorted(values, key=lambda a: a.beta), key=lambda a: values[a])


def select_overall(per_arm: dict[Arm, ArmSelection]) -> ArmSelection:
    """The arm with the highest mean smoothed validation d' at its picks (best_arm)."""
    return per_arm[best_arm({a: s.val_dprime for a, s in per_arm.items()})]
