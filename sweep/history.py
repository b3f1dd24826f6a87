"""A trial's training state and validation history, and the decisions made on them: when to
evaluate, when to stop, what to report to Tune. Pure functions of a `TrialState` (what a
checkpoint's state.json holds), so every Train rank computes the same decision from the same
gathered scores, and a restart from a checkpoint continues exactly.

A trial stopped at the cap is not finished for a higher cap: `reopened` continues it from its
latest checkpoint as if it had been started with that cap (an evaluation that only the old cap
called for, off the evaluation cadence, is taken back, with the training losses it averaged).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sweep.select import StoppingRule, learned, pick, settled, smoothed
from sweep.trial import Trial

__all__ = ["HISTORY_KEYS", "TrialState", "next_evaluation", "evaluated", "reopened", "summary_metrics", "step_seed"]

HISTORY_KEYS = ("examples", "train_loss", "val_mAP", "val_AUC", "val_dprime")


def _empty_history() -> dict[str, list]:
    return {k: [] for k in HISTORY_KEYS}


@dataclass(frozen=True)
class TrialState:
    """A trial's state: examples seen and optimizer steps taken; `stopped` (None while it trains,
    "settled" once its pick is settled, "cap" at the cap `cap` or the end of the stream);
    `start`, the validation metrics before its first step ({mAP, mAUC, dprime}); `history`, one
    entry per evaluation of each HISTORY_KEYS list; `carry`, the training losses an evaluation
    off the cadence (called for by the cap alone) averaged, so that a higher cap can take it back."""
    trial: Trial
    examples: int = 0
    step: int = 0
    stopped: str | None = None
    cap: int | None = None
    start: dict | None = None
    history: dict[str, list] = field(default_factory=_empty_history)
    carry: list[float] | None = None

    @property
    def start_dprime(self) -> float | None:
        return None if self.start is None else float(self.start["dprime"])

    def finished(self, cap: int) -> bool:
        """Whether there is nothing left to train under a cap of `cap` examples."""
        return self.stopped == "settled" or (self.stopped == "cap" and (self.cap or 0) >= cap)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> TrialState:
        """The state a checkpoint's state.json holds (extra keys, such as the model's config, ignored)."""
        known = {k: values[k] for k in ("examples", "step", "stopped", "cap", "start", "history", "carry") if k in values}
        return cls(trial=Trial(**values["trial"]), **known)


def next_evaluation(examples: int, every: int) -> int:
    """Examples at which the next evaluation is due: the next multiple of `every` after `examples`."""
    return (examples // every + 1) * every


def evaluated(state: TrialState, metrics: dict, losses: list[float], rule: StoppingRule, cap: int, every: int,
              train_to_cap: bool, end: bool = False) -> TrialState:
    """The state after an evaluation: `metrics` (mAP, mAUC, dprime on the validation split) and
    the mean of the training `losses` since the last one appended to the history, and `stopped`
    set when the trial is done: "settled" once its pick is settled (unless `train_to_cap`), "cap"
    at `cap` examples or at the end of the stream (`end`). An evaluation every `every` examples
    is due; one at the cap before it is due keeps its losses in `carry`."""
    h = {k: list(v) for k, v in state.history.items()}
    h["examples"].append(state.examples)
    h["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
    h["val_mAP"].append(float(metrics["mAP"]))
    h["val_AUC"].append(float(metrics["mAUC"]))
    h["val_dprime"].append(float(metrics["dprime"]))
    new = replace(state, history=h, stopped=None, cap=None, carry=None)
    if not train_to_cap and settled(h["val_dprime"], h["examples"], rule, state.start_dprime):
        return replace(new, stopped="settled")
    if end or state.examples >= cap:
        previous = h["examples"][-2] if len(h["examples"]) > 1 else 0
        due = state.examples // every > previous // every
        return replace(new, stopped="cap", cap=cap, carry=None if due else list(losses))
    return new


def reopened(state: TrialState, cap: int) -> tuple[TrialState, list[float]]:
    """A trial stopped at a lower cap, ready to train on to `cap`: not stopped, its off-cadence
    evaluation at the old cap taken back; and the training losses to carry into its next
    evaluation. Any other state as it is, with no losses."""
    if state.stopped != "cap" or state.finished(cap):
        return state, []
    if state.carry is None:
        return replace(state, stopped=None, cap=None), []
    history = {k: v[:-1] for k, v in state.history.items()}
    return replace(state, stopped=None, cap=None, carry=None, history=history), list(state.carry)


def summary_metrics(state: TrialState, rule: StoppingRule) -> dict:
    """What a trial reports to Tune: progress, the latest evaluation, the latest full-window
    smoothed d', the smoothed d' at the current pick (NaN until a window is full), whether the
    trace has learned and whether its pick is settled."""
    h = state.history
    s = smoothed(h["val_dprime"], rule.window)
    i = pick(h["val_dprime"], rule.window)
    defined = s[~np.isnan(s)]
    last = {k: (h[k][-1] if h[k] else math.nan) for k in HISTORY_KEYS if k != "examples"}
    return {"examples": state.examples, "trial": state.trial.key, "val_dprime": last.pop("val_dprime"),
            "val_dprime_smoothed": float(defined[-1]) if defined.size else math.nan,
            "val_dprime_pick": float(s[i]) if i is not None else math.nan,
            "step": state.step, "evals": len(h["examples"]), **last,
            "examples_to_pick": int(h["examples"][i]) if i is not None else -1,
            "learned": bool(h["examples"]) and learned(h["val_dprime"], rule, state.start_dprime),
            "converged": bool(h["examples"]) and settled(h["val_dprime"], h["examples"], rule, state.start_dprime),
            "stopped": state.stopped or ""}


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of one optimizer step on one rank: a function of these alone, so a
    worker restarted from a checkpoint redoes its steps exactly (same stream, same masks and
    MixUp draws) and re-reports the same validation numbers."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
