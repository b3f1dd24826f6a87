"""How sure the selection is: the probability that each arm (a scheme at a beta; with one scheme,
a beta) is best, the margin of the selected arm over the runner-up, and a verdict.

Two sources of noise decide the answer: which clips are in the validation split, and training
(initialisation, stream order, numerics). The first is measured by a paired bootstrap over
validation clips: every trial's per-clip validation scores at the evaluations of its pick's
smoothing window are kept (sweep/checkpoint.py), and on each resample of the clips (the same
resample for every trial) each trial's smoothed d' at its pick is recomputed, per arm the best
learning rate is taken (on the mean over seeds), and the best arm wins (a tie splits the win).
The second enters through replicate seeds (`sweep.seeds`): each resample also draws the seeds
with replacement (the same draw for every arm), so the spread between seeds widens the
intervals. Pure numpy on arrays; the bootstrap engine is sweep/bootstrap.py's. Arms are named
by their labels (sweep/select.py arm_label: `beta=0.5`, `psla beta=1`).

    p_best[arm] = share of resamples in which the arm is best
    margin      = selected - runner-up, smoothed validation d' at the picks (95% interval)
    verdict     "resolved: ..." when p_best[selected] >= 0.95 (with several seeds, also the
                margin's interval above 0) and every pick settled; else "unresolved: ...",
                naming the arms within noise of the selected one (p_best >= 0.05) and what
                would resolve it
"""
from __future__ import annotations

import numpy as np

from sweep.bootstrap import resampled_metrics

__all__ = ["P_RESOLVED", "P_PLAUSIBLE", "resampled_pick_dprime", "confidence", "verdict"]

P_RESOLVED = 0.95    # p_best of the selected beta for a resolved verdict
P_PLAUSIBLE = 0.05   # p_best from which another beta is named as within noise


def resampled_pick_dprime(targets: np.ndarray, window_scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A trial's smoothed d' at its pick on each resample of the validation clips: the mean over
    the pick's window of d' = sqrt(2) Phi^-1(macro AUC) under the resample's clip weights.
    targets [clips, classes] 0/1; window_scores [window, clips, classes]; counts [resamples,
    clips] (bootstrap_counts) -> [resamples]. Scored by resampled_metrics, a few resamples at a
    time: memory stays bounded at AudioSet's validation size (1,836 clips x 527 classes)."""
    return np.mean([resampled_metrics(targets, s, counts)["samples"]["dprime"] for s in window_scores], axis=0)


def _values(trials: list[dict], seed_draw: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per arm, the best learning rate's mean over seeds of the smoothed pick d': on the full
    data ([1]) or per resample ([resamples]) with seeds drawn by `seed_draw` [resamples, seeds]
    (indices into each (arm, lr)'s seeds, sorted by seed)."""
    by_arm: dict[tuple[str, float], list[dict]] = {}
    for t in sorted(trials, key=lambda t: t["seed"]):
        by_arm.setdefault((t["arm"], t["lr"]), []).append(t)
    per_arm: dict[str, np.ndarray] = {}
    for (arm, _), ts in by_arm.items():
        if seed_draw is None:
            v = np.array([np.mean([t["full"] for t in ts])])
        else:
            samples = np.stack([t["samples"] for t in ts])               # [seeds, resamples]
            v = samples[seed_draw.T % len(ts), np.arange(samples.shape[1])].mean(axis=0)
        per_arm[arm] = v if arm not in per_arm else np.maximum(per_arm[arm], v)
    return per_arm


def confidence(trials: list[dict], n_resamples: int, seed: int = 0) -> dict:
    """p_best per arm and the selected arm's margin over the runner-up.

    trials: [{arm (its label), beta, lr, seed, full: smoothed d' at the pick, samples: the same
    on each resample [n_resamples] (resampled_pick_dprime, every trial on the same clip
    resamples)}]; ties of the full values go to the smaller beta, as select_overall's. Returns
    {selected, runner_up (None with one arm), p_best {arm: p}, margin, margin_ci95 (NaN without
    a runner-up), resamples, seeds}."""
    n_seeds = len({t["seed"] for t in trials})
    draw = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds)) if n_seeds > 1 \
        else np.zeros((n_resamples, 1), dtype=np.int64)
    full = {a: float(v[0]) for a, v in _values(trials, None).items()}
    per_arm = _values(trials, draw)
    beta = {t["arm"]: t["beta"] for t in trials}
    arms = list(per_arm)
    values = np.stack([per_arm[a] for a in arms])                       # [arms, resamples]
    best = values == values.max(axis=0)
    p = (best / best.sum(axis=0)).mean(axis=1)                          # a tie splits the win
    ranked = sorted(arms, key=lambda a: (-full[a], beta[a]))            # as select_overall
    selected, runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    margin, ci = float("nan"), (float("nan"), float("nan"))
    if runner is not None:
        margin = full[selected] - full[runner]
        diff = per_arm[selected] - per_arm[runner]
        ci = tuple(float(x) for x in np.percentile(diff, [2.5, 97.5]))
    return {"selected": selected, "runner_up": runner, "p_best": {a: float(pa) for a, pa in zip(arms, p)},
            "margin": margin, "margin_ci95": ci, "resamples": int(n_resamples), "seeds": n_seeds}


def verdict(conf: dict, not_converged: list[str], valid_clips: int) -> str:
    """The verdict on a selection (see the module docstring), one line; `not_converged`: the
    labels of the arms whose picks did not settle."""
    sel, p = conf["selected"], conf["p_best"]
    if conf["runner_up"] is None:
        return f"unresolved: one arm was swept ({sel}): there is nothing to compare it with"
    if not_converged:
        return ("unresolved: NOT CONVERGED for " + ", ".join(not_converged)
                + ": raise train.max_examples until every pick settles")
    margin = (f", margin {conf['margin']:+.3f} d' [{conf['margin_ci95'][0]:+.3f}, {conf['margin_ci95'][1]:+.3f}] "
              f"over {conf['runner_up']}")
    seeds_ok = conf["seeds"] == 1 or conf["margin_ci95"][0] > 0
    if p[sel] >= P_RESOLVED and seeds_ok:
        return f"resolved: {sel} is best (p_best {p[sel]:.2f}{margin})"
    close = [a for a in sorted(p, key=lambda a: -p[a]) if a == sel or p[a] >= P_PLAUSIBLE]
    named = ", ".join(f"{a} (p_best {p[a]:.2f})" for a in close)
    more = "replicate seeds (sweep.seeds)" if conf["seeds"] == 1 else "more replicate seeds (sweep.seeds)"
    return (f"unresolved: {named} are within noise of each other{margin}; more validation clips "
            f"(the split has {valid_clips:,}) or {more} would resolve it")
