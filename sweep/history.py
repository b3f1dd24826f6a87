"""A trial's training state and validation history, and the decisions made on them: when to
evaluate, when to stop, what to report to Tune. Pure functions of plain dicts (the state is
what a checkpoint's state.json holds), so every Train rank computes the same decision from the
same gathered scores, and a restart from a checkpoint continues exactly.

state: {examples, step, scheme, beta, lr, seed, stopped (None | "settled" | "cap"), history: {examples,
train_loss, val_mAP, val_AUC, val_dprime}: one list entry per evaluation}.
"""
from __future__ import annotations

import numpy as np

from sweep.select import StoppingRule, pick, settled, smoothed

__all__ = ["HISTORY_KEYS", "new_state", "next_evaluation", "evaluated", "summary_metrics", "step_seed"]

HISTORY_KEYS = ("examples", "train_loss", "val_mAP", "val_AUC", "val_dprime")


def new_state(scheme: str, beta: float, lr: float, seed: int) -> dict:
    """The state of a trial that has not trained yet."""
    return {"examples": 0, "step": 0, "scheme": scheme, "beta": beta, "lr": lr, "seed": seed, "stopped": None,
            "history": {k: [] for k in HISTORY_KEYS}}


def next_evaluation(examples: int, every: int) -> int:
    """Examples at which the next evaluation is due: the next multiple of `every` after `examples`."""
    return (examples // every + 1) * every


def evaluated(state: dict, metrics: dict, losses: list[float], rule: StoppingRule, cap: int,
              train_to_cap: bool, end: bool = False) -> dict:
    """The state after an evaluation: `metrics` (mAP, mAUC, dprime on the validation split) and the
    mean of the training `losses` since the last one appended to the history, and `stopped` set
    when the trial is done: "settled" once its pick is settled (unless `train_to_cap`), "cap" at
    `cap` examples or at the end of the stream (`end`)."""
    h = {k: list(v) for k, v in state["history"].items()}
    h["examples"].append(state["examples"])
    h["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
    h["val_mAP"].append(float(metrics["mAP"]))
    h["val_AUC"].append(float(metrics["mAUC"]))
    h["val_dprime"].append(float(metrics["dprime"]))
    stopped = None
    if not train_to_cap and settled(h["val_dprime"], h["examples"], rule):
        stopped = "settled"
    elif end or state["examples"] >= cap:
        stopped = "cap"
    return {**state, "history": h, "stopped": stopped}


def summary_metrics(state: dict, rule: StoppingRule) -> dict:
    """What a trial reports to Tune: progress, the latest evaluation, the latest full-window
    smoothed d', the smoothed d' at the current pick (NaN until a window is full) and whether
    that pick is settled."""
    h = state["history"]
    s = smoothed(h["val_dprime"], rule.window)
    i = pick(h["val_dprime"], rule.window)
    defined = s[~np.isnan(s)]
    last = {k: (h[k][-1] if h[k] else float("nan")) for k in HISTORY_KEYS if k != "examples"}
    return {"examples": state["examples"], "val_dprime": last.pop("val_dprime"),
            "val_dprime_smoothed": float(defined[-1]) if defined.size else float("nan"),
            "val_dprime_pick": float(s[i]) if i is not None else float("nan"),
            "step": state["step"], "evals": len(h["examples"]), **last,
            "examples_to_pick": int(h["examples"][i]) if i is not None else -1,
            "converged": bool(h["examples"]) and settled(h["val_dprime"], h["examples"], rule),
            "stopped": state["stopped"] or ""}


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of one optimizer step on one rank: a function of these alone, so a
    worker restarted from a checkpoint redoes its steps exactly (same stream, same masks and
    MixUp draws) and re-reports the same validation numbers."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
