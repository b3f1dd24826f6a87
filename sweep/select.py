"""Checkpoint and hyperparameter selection (paper 3.2): smooth each validation d' trace with a
centred moving average, pick the evaluation centred on the best smoothed value, then per beta
the learning rate (trial) whose pick is highest, and overall the best beta."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class TrialTrace:
    """One trial's validation trace: examples seen [evals], d' [evals], checkpoint path per
    evaluation (None where none was kept)."""
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
    """The pick of one trial: evaluation index, examples seen there, smoothed and raw d'."""
    trial_id: str
    beta: float
    lr: float
    index: int
    examples_to_peak: int
    val_dprime: float
    val_dprime_raw: float
    checkpoint: str | None


def moving_average(values: np.ndarray, window: int = 7) -> np.ndarray:
    """Centred moving average of values [evals] over an odd window. Near the ends the window
    shrinks symmetrically, so every average stays centred on its evaluation:
    out[i] = mean(values[i - k : i + k + 1]), k = min(window // 2, i, evals - 1 - i)
    (out[0] and out[-1] are the raw end values). A one-sided window would let the first
    evaluation borrow the later, better ones and be picked on a rising trace. NaN propagates."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    h, n = window // 2, v.size
    csum = np.concatenate(([0.0], np.cumsum(v)))
    i = np.arange(n)
    k = np.minimum(h, np.minimum(i, n - 1 - i))
    lo, hi = i - k, i + k + 1
    return (csum[hi] - csum[lo]) / (hi - lo)


def best_checkpoint(values: np.ndarray, window: int = 7) -> int:
    """Index of the evaluation centred on the highest smoothed value (the first on ties; NaN
    smoothed values are skipped)."""
    smooth = moving_average(values, window)
    if np.isnan(smooth).all():
        raise ValueError("no evaluation with a defined smoothed value")
    return int(np.nanargmax(smooth))


def select_trial(trace: TrialTrace, window: int = 7) -> Selection:
    """The selected evaluation of one trial."""
    i = best_checkpoint(trace.dprime, window)
    return Selection(trace.trial_id, trace.beta, trace.lr, i, int(trace.examples[i]),
                     float(moving_average(trace.dprime, window)[i]), float(trace.dprime[i]),
                     trace.checkpoints[i])


def select_per_beta(traces: list[TrialTrace], window: int = 7) -> dict[float, Selection]:
    """Per beta, the trial (learning rate) with the highest smoothed validation d' at its pick;
    on ties the earlier trace in `traces`. A trace with no defined smoothed value is
    skipped with a warning."""
    best: dict[float, Selection] = {}
    for trace in traces:
        if np.isnan(moving_average(trace.dprime, window)).all():
            warnings.warn(f"trial {trace.trial_id} (beta={trace.beta:g}, lr={trace.lr:g}) has no "
                          "usable validation d'; it cannot be selected")
            continue
        sel = select_trial(trace, window)
        if trace.beta not in best or sel.val_dprime > best[trace.beta].val_dprime:
            best[trace.beta] = sel
    return best


def select_overall(per_beta: dict[float, Selection]) -> Selection:
    """The selection with the highest smoothed validation d'; on ties the smallest beta."""
    if not per_beta:
        raise ValueError("no selections to choose from")
    return max(sorted(per_beta.values(), key=lambda s: s.beta), key=lambda s: s.val_dprime)
