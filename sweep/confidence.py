"""How sure the selection is: the probability that each beta is best, the margin of the selected
beta over the runner-up, and a verdict.

Two sources of noise decide the answer: which clips are in the validation split, and training
(initialisation, stream order, numerics). The first is measured by a paired bootstrap over
validation clips: every trial's per-clip validation scores at the evaluations of its pick's
smoothing window are kept (sweep/checkpoint.py), and on each resample of the clips (the same
resample for every trial) each trial's smoothed d' at its pick is recomputed, per beta the best
learning rate is taken (on the mean over seeds), and the best beta wins (a tie splits the win).
The second enters through replicate seeds (`sweep.seeds`): each resample also draws the seeds
with replacement (the same draw for every beta), so the spread between seeds widens the
intervals. Pure numpy on arrays; the bootstrap engine is sweep/bootstrap.py's.

    p_best[beta] = share of resamples in which beta is best
    margin       = selected - runner-up, smoothed validation d' at the picks (95% interval)
    verdict      "resolved: ..." when p_best[selected] >= 0.95 (with several seeds, also the
                 margin's interval above 0) and every pick settled; else "unresolved: ...",
                 naming the betas within noise of the selected one (p_best >= 0.05) and what
                 would resolve it
"""
from __future__ import annotations

import numpy as np

from sweep.metrics import Ranking, macro_metrics

__all__ = ["P_RESOLVED", "P_PLAUSIBLE", "resampled_pick_dprime", "confidence", "verdict"]

P_RESOLVED = 0.95    # p_best of the selected beta for a resolved verdict
P_PLAUSIBLE = 0.05   # p_best from which another beta is named as within noise


def resampled_pick_dprime(targets: np.ndarray, window_scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A trial's smoothed d' at its pick on each resample of the validation clips: the mean over
    the pick's window of d' = sqrt(2) Phi^-1(macro AUC) under the resample's clip weights.
    targets [clips, classes] 0/1; window_scores [window, clips, classes]; counts [resamples,
    clips] (bootstrap_counts) -> [resamples]."""
    return np.mean([macro_metrics(*Ranking(targets, s).ap_auc(counts[:, :, None]))["dprime"]
                    for s in window_scores], axis=0)


def _values(trials: list[dict], seed_draw: np.ndarray | None) -> dict[float, np.ndarray]:
    """Per beta, the best learning rate's mean over seeds of the smoothed pick d': on the full
    data ([1]) or per resample ([resamples]) with seeds drawn by `seed_draw` [resamples, seeds]
    (indices into each (beta, lr)'s seeds, sorted by seed)."""
    by_arm: dict[tuple[float, float], list[dict]] = {}
    for t in sorted(trials, key=lambda t: t["seed"]):
        by_arm.setdefault((t["beta"], t["lr"]), []).append(t)
    per_beta: dict[float, np.ndarray] = {}
    for (beta, _), ts in by_arm.items():
        if seed_draw is None:
            v = np.array([np.mean([t["full"] for t in ts])])
        else:
            samples = np.stack([t["samples"] for t in ts])               # [seeds, resamples]
            v = samples[seed_draw.T % len(ts), np.arange(samples.shape[1])].mean(axis=0)
        per_beta[beta] = v if beta not in per_beta else np.maximum(per_beta[beta], v)
    return per_beta


def confidence(trials: list[dict], n_resamples: int, seed: int = 0) -> dict:
    """p_best per beta and the selected beta's margin over the runner-up.

    trials: [{beta, lr, seed, full: smoothed d' at the pick, samples: the same on each resample
    [n_resamples] (resampled_pick_dprime, every trial on the same clip resamples)}]. Returns
    {selected, runner_up (None with one beta), p_best {beta: p}, margin, margin_ci95 (NaN
    without a runner-up), resamples, seeds}."""
    n_seeds = len({t["seed"] for t in trials})
    draw = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds)) if n_seeds > 1 \
        else np.zeros((n_resamples, 1), dtype=np.int64)
    full = {b: float(v[0]) for b, v in _values(trials, None).items()}
    per_beta = _values(trials, draw)
    betas = sorted(per_beta)
    values = np.stack([per_beta[b] for b in betas])                     # [betas, resamples]
    best = values == values.max(axis=0)
    p = (best / best.sum(axis=0)).mean(axis=1)                          # a tie splits the win
    ranked = sorted(betas, key=lambda b: (-full[b], b))                 # as select_overall
    selected, runner = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    margin, ci = float("nan"), (float("nan"), float("nan"))
    if runner is not None:
        margin = full[selected] - full[runner]
        diff = per_beta[selected] - per_beta[runner]
        ci = tuple(float(x) for x in np.percentile(diff, [2.5, 97.5]))
    return {"selected": selected, "runner_up": runner, "p_best": {b: float(pb) for b, pb in zip(betas, p)},
            "margin": margin, "margin_ci95": ci, "resamples": int(n_resamples), "seeds": n_seeds}


def verdict(conf: dict, not_converged: list[float], valid_clips: int) -> str:
    """The verdict on a selection (see the module docstring), one line."""
    sel, p = conf["selected"], conf["p_best"]
    if conf["runner_up"] is None:
        return f"unresolved: one beta was swept (beta={sel:g}): there is nothing to compare it with"
    if not_converged:
        return ("unresolved: NOT CONVERGED for beta " + ", ".join(f"{b:g}" for b in not_converged)
                + ": raise train.max_examples until every pick settles")
    margin = ("" if conf["runner_up"] is None else
              f", margin {conf['margin']:+.3f} d' [{conf['margin_ci95'][0]:+.3f}, {conf['margin_ci95'][1]:+.3f}] "
              f"over beta={conf['runner_up']:g}")
    seeds_ok = conf["seeds"] == 1 or conf["margin_ci95"][0] > 0
    if p[sel] >= P_RESOLVED and seeds_ok:
        return f"resolved: beta={sel:g} is best (p_best {p[sel]:.2f}{margin})"
    close = [b for b in sorted(p, key=lambda b: -p[b]) if b == sel or p[b] >= P_PLAUSIBLE]
    named = ", ".join(f"beta={b:g} (p_best {p[b]:.2f})" for b in close)
    more = "replicate seeds (sweep.seeds)" if conf["seeds"] == 1 else "more replicate seeds (sweep.seeds)"
    return (f"unresolved: {named} are within noise of each other{margin}; more validation clips "
            f"(the split has {valid_clips:,}) or {more} would resolve it")
