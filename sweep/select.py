"""Checkpoint and hyperparameter selection (paper 3.2), and the stopping rule built on it.

A trial's validation d' trace [evals] is smoothed with a centred moving average over `window`
evaluations. Only evaluations with a *full* window inside the trace have a smoothed value: a
window shrunk at the ends is a noisier estimate and would win a max too often. A NaN
evaluation blanks only the windows that contain it. The pick of a trial is the evaluation
centred on the highest smoothed value (the first on ties); it is *settled* once `patience`
later evaluations have full windows and none of them is higher.

The same functions decide when a trial stops (sweep/train.py), what MLflow logs as
`val_dprime_smoothed`, which checkpoints are kept, and what is selected, so the four agree.
Per beta the learning rate with the highest pick wins; overall, the best beta.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["TrialTrace", "Selection", "smoothed", "pick", "settled", "checkpoints_to_keep",
           "select_trial", "select_per_beta", "select_overall"]


@dataclass
class TrialTrace:
    """One trial's validation trace: examples seen [evals], d' [evals], and per evaluation the
    path of its checkpoint (None where its weights were not kept)."""
    trial_id: str
    beta: float
    lr: float
    examples: np.ndarray
    dprime: np.ndarray
    checkpoints: list[str | None]

    def __post_init__(self) -> None:
        self.examples = np.asarray(self.examples)
        self.dprime = np.asarray(self.dprime, dtype=np.float64)
        lengths = {len(self.examples), len(self.dprime), len(self.checkpoints)}
        if len(lengths) != 1 or self.dprime.ndim != 1:
            raise ValueError(f"trial {self.trial_id}: examples, dprime and checkpoints must be "
                             f"1-D of one length, got {len(self.examples)}, {self.dprime.shape}, "
                             f"{len(self.checkpoints)}")


@dataclass
class Selection:
    """The pick of one trial: evaluation index, examples seen there, smoothed and raw d',
    its checkpoint, and whether the pick is settled (`converged`) or the trial ran out of
    examples first."""
    trial_id: str
    beta: float
    lr: float
    index: int
    examples_to_peak: int
    val_dprime: float
    val_dprime_raw: float
    checkpoint: str | None
    converged: bool
    evaluations: int


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


def settled(values: np.ndarray, window: int = 7, patience: int = 5) -> bool:
    """True once the pick has `patience` later evaluations with full windows (none higher, or
    one of them would be the pick): training longer can no longer move it without a new peak."""
    i = pick(values, window)
    return i is not None and (len(values) - 1 - _half(window)) - i >= patience


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


def select_trial(trace: TrialTrace, window: int = 7, patience: int = 5) -> Selection | None:
    """The pick of one trial, or None when no evaluation has a full window (too few
    evaluations, or NaN in every window)."""
    i = pick(trace.dprime, window)
    if i is None:
        return None
    return Selection(trace.trial_id, trace.beta, trace.lr, i, int(trace.examples[i]),
                     float(smoothed(trace.dprime, window)[i]), float(trace.dprime[i]),
                     trace.checkpoints[i], settled(trace.dprime, window, patience), len(trace.dprime))


def select_per_beta(traces: list[TrialTrace], window: int = 7, patience: int = 5) -> dict[float, Selection]:
    """Per beta, the trial (learning rate) with the highest smoothed validation d' at its pick;
    on ties the earlier trace in `traces`. A trace without a full window cannot be selected:
    it is skipped with a warning that says so."""
    best: dict[float, Selection] = {}
    for trace in traces:
        sel = select_trial(trace, window, patience)
        if sel is None:
            warnings.warn(f"trial {trace.trial_id} (beta={trace.beta:g}, lr={trace.lr:g}) has no "
                          f"{window}-evaluation window free of NaN ({len(trace.dprime)} evaluations): "
                          "it cannot be selected")
            continue
        if trace.beta not in best or sel.val_dprime > best[trace.beta].val_dprime:
            best[trace.beta] = sel
    return best


def select_overall(per_beta: dict[float, Selection]) -> Selection:
    """The selection with the highest smoothed validation d'; on ties the smallest beta."""
    if not per_beta:
        raise ValueError("no selections to choose from")
    return max(sorted(per_beta.values(), key=lambda s: s.beta), key=lambda s: s.val_dprime)
