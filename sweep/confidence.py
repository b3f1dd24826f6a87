"""How sure the selection is: the probability that each arm (a scheme at a beta) is best, the
margin of the selected arm over the runner-up, and a verdict.

Two sources of noise decide the answer: which clips are in the validation split, and training
(initialisation, stream order, numerics). The first is measured by a paired bootstrap over
validation clips: every evaluation of every trial also scores its d' on the same resamples of the
validation clips (`resampled_dprime`, kept in its checkpoint), so each trial's smoothed d' at its
pick is known on every resample (the mean over the pick's window); then the
selection's own rule is applied to the resample (sweep/select.py `arm_values`: per arm the best
learning rate on the mean over seeds) and the best arm wins (a tie splits the win). The second
enters through replicate seeds (`sweep.seeds`): each resample also draws the seeds with
replacement (the same draw for every arm), so the spread between seeds widens the intervals.
Pure numpy on arrays; the bootstrap engine is sweep/bootstrap.py's.

    p_best[arm] = share of resamples in which the arm is best
    margin      = selected - runner-up, smoothed validation d' at the picks (95% interval)
    Verdict     resolved when p_best[selected] >= 0.95 (with several seeds, also the margin's
                interval above 0), every arm learned and every pick settled; provisional while
                an arm did not learn or its pick did not settle (p_best is then provisional too:
                more training can move it); else unresolved, naming the arms within noise of the
                selected one (p_best >= 0.05) and what would resolve it
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweep.bootstrap import resampled_metrics
from sweep.select import arm_values, best_arm
from sweep.trial import Arm, Trial

__all__ = ["P_RESOLVED", "P_PLAUSIBLE", "Verdict", "resampled_dprime", "confidence", "verdict"]

P_RESOLVED = 0.95    # p_best of the selected arm for a resolved verdict
P_PLAUSIBLE = 0.05   # p_best from which another arm is named as within noise


@dataclass(frozen=True)
class Verdict:
    """The verdict on a selection: `resolved` (one arm is best, beyond the noise), `provisional`
    (an arm did not learn or its pick did not settle within the cap: p_best and the answer can
    still move), and the verdict in words."""
    resolved: bool
    provisional: bool
    text: str

    @property
    def word(self) -> str:
        """One word for titles and MLflow run names: resolved, provisional or unresolved."""
        return "resolved" if self.resolved else "provisional" if self.provisional else "unresolved"


def resampled_dprime(targets: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One evaluation's d' = sqrt(2) Phi^-1(macro AUC) on each resample of the validation clips,
    under the resample's clip weights. targets [clips, classes] 0/1; scores [clips, classes];
    counts [resamples, clips] (bootstrap_counts) -> [resamples]. Scored by resampled_metrics, a
    few resamples at a time: memory stays bounded at AudioSet's validation size (1,836 clips x
    527 classes: about 30 CPU-seconds for 1,000 resamples)."""
    return resampled_metrics(targets, scores, counts)["samples"]["dprime"]


def _seed_drawn(samples: dict[Trial, np.ndarray], draw: np.ndarray) -> dict[Trial, np.ndarray]:
    """Each trial's samples [resamples] replaced by those of the seed `draw` [resamples, seeds]
    assigns it on each resample (indices into its (arm, lr)'s seeds, sorted by seed): averaging
    over the seeds then averages over seeds drawn with replacement."""
    groups: dict[tuple[Arm, float], list[Trial]] = {}
    for t in sorted(samples, key=lambda t: t.seed):
        groups.setdefault((t.arm, t.lr), []).append(t)
    out = {}
    for trials in groups.values():
        stacked = np.stack([samples[t] for t in trials])                  # [seeds, resamples]
        for i, t in enumerate(trials):
            out[t] = stacked[draw[:, i % draw.shape[1]] % len(trials), np.arange(stacked.shape[1])]
    return out


def confidence(full: dict[Trial, float], samples: dict[Trial, np.ndarray], n_resamples: int, seed: int = 0) -> dict:
    """p_best per arm and the selected arm's margin over the runner-up. full: each trial's
    smoothed d' at its pick; samples: the same on each resample [n_resamples] (the mean of
    resampled_dprime over the pick's window, every trial on the same clip resamples). Returns {selected,
    runner_up (Arm; None with one arm), p_best {Arm: p}, margin, margin_ci95 (NaN without a
    runner-up), resamples, seeds}."""
    n_seeds = len({t.seed for t in full})
    draw = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds)) if n_seeds > 1 \
        else np.zeros((n_resamples, 1), dtype=np.int64)
    on_full = {a: float(v[0]) for a, (_, v) in arm_values({t: np.array([v]) for t, v in full.items()}).items()}
    per_arm = {a: v for a, (_, v) in arm_values(_seed_drawn(samples, draw)).items()}
    arms = list(per_arm)
    values = np.stack([per_arm[a] for a in arms])                       # [arms, resamples]
    best = values == values.max(axis=0)
    p = (best / best.sum(axis=0)).mean(axis=1)                          # a tie splits the win
    selected = best_arm(on_full)
    runner = best_arm({a: v for a, v in on_full.items() if a != selected}) if len(arms) > 1 else None
    margin, ci = float("nan"), (float("nan"), float("nan"))
    if runner is not None:
        margin = on_full[selected] - on_full[runner]
        ci = tuple(float(x) for x in np.percentile(per_arm[selected] - per_arm[runner], [2.5, 97.5]))
    return {"selected": selected, "runner_up": runner, "p_best": {a: float(pa) for a, pa in zip(arms, p)},
            "margin": margin, "margin_ci95": ci, "resamples": int(n_resamples), "seeds": n_seeds}


def verdict(conf: dict, labels: dict[Arm, str], unsettled: list[Arm], unlearned: list[Arm], valid_clips: int,
            cap: int, lost: list[str] = ()) -> Verdict:
    """The verdict on a selection (see the module docstring). `labels`: each arm's name;
    `unsettled`: the arms whose picks did not settle (those that did not learn among them);
    `unlearned`: the arms whose traces never left their starting level within the `cap`; `lost`:
    the labels of the arms racing eliminated (not contenders: they are only named)."""
    sel, p = conf["selected"], conf["p_best"]
    raced = f"; racing eliminated {', '.join(lost)}" if lost else ""
    if unlearned and set(unlearned) >= set(p):
        return Verdict(False, True, f"no arm learned within the cap ({cap:,} examples): every smoothed validation d' "
                                    "stayed within noise of chance or of its start; raise train.max_examples or check "
                                    "the learning rates (sweep.lrs)")
    if conf["runner_up"] is None and lost:
        return Verdict(not unsettled, bool(unsettled), f"{labels[sel]} is best: the only arm left{raced}"
                       + (" (its pick has not settled: raise train.max_examples)" if unsettled else ""))
    if conf["runner_up"] is None:
        return Verdict(False, bool(unsettled), f"one arm was swept ({labels[sel]}): there is nothing to compare it with")
    margin = (f", margin {conf['margin']:+.3f} d' [{conf['margin_ci95'][0]:+.3f}, {conf['margin_ci95'][1]:+.3f}] "
              f"over {labels[conf['runner_up']]}")
    if unsettled:
        parts = []
        if unlearned:
            parts.append(", ".join(labels[a] for a in unlearned) + f" did not learn within the cap ({cap:,} examples)")
        late = [a for a in unsettled if a not in unlearned]
        if late:
            parts.append("NOT CONVERGED for " + ", ".join(labels[a] for a in late))
        return Verdict(False, True, "; ".join(parts) + f"{margin}{raced}; p_best is provisional until every arm learns "
                                    "and settles: raise train.max_examples (--resume continues each unsettled trial)")
    seeds_ok = conf["seeds"] == 1 or conf["margin_ci95"][0] > 0
    if p[sel] >= P_RESOLVED and seeds_ok:
        return Verdict(True, False, f"{labels[sel]} is best (p_best {p[sel]:.2f}{margin}){raced}")
    close = [a for a in sorted(p, key=lambda a: -p[a]) if a == sel or p[a] >= P_PLAUSIBLE]
    named = ", ".join(f"{labels[a]} (p_best {p[a]:.2f})" for a in close)
    more = "replicate seeds (sweep.seeds)" if conf["seeds"] == 1 else "more replicate seeds (sweep.seeds)"
    return Verdict(False, False, f"{named} are within noise of each other{margin}{raced}; more validation clips "
                                 f"(the split has {valid_clips:,}) or {more} would resolve it")
