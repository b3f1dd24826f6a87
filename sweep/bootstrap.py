"""Statistics beyond the paper: paired bootstrap intervals for a difference
between two models on the same evaluation set, AP re-scored under another class prior, and the
regression of per-class delta-AP on the training prior (the paper's Fig. 3) with a bootstrap
interval for its slope. Arrays are [clips, classes] unless stated.

The bootstrap is one engine: `bootstrap_counts` draws the clip resamples, `resampled_metrics`
scores one model on all of them (once, however many pairs it is in), `paired_difference` pairs
two models; `paired_bootstrap` is the three for one pair."""
from __future__ import annotations

import numpy as np
from scipy.stats import linregress
from tqdm import tqdm

from data.balance import priors_from_counts
from sweep.metrics import WEIGHTINGS_PER_PRODUCT, Ranking, check_inputs, classification_metrics, macro_metrics

__all__ = ["METRICS", "weighted_average_precision", "bootstrap_counts", "resampled_metrics", "paired_difference",
           "paired_bootstrap", "prior_shift_metrics", "prior_slope"]

METRICS = ("mAP", "mAUC", "dprime")


def weighted_average_precision(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-class AP [classes] of scores s against 0/1 targets y with non-negative weights w
    ([clips] or [clips, classes]); equals sklearn's AP with sample_weight. NaN for a class with
    no positive or no negative weight."""
    y, s = check_inputs(y, s)
    w = np.asarray(w, dtype=np.float64)
    w = w[:, None] if w.ndim == 1 else w
    if w.ndim != 2 or w.shape[0] != y.shape[0] or w.shape[1] not in (1, y.shape[1]):
        raise ValueError(f"weights {w.shape} must be [clips] or [clips, classes] for {y.shape}")
    if not (np.isfinite(w) & (w >= 0)).all():
        raise ValueError("weights must be finite and non-negative")
    return Ranking(y, s).ap_auc(w)[0]


def bootstrap_counts(n_clips: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """How often each clip is drawn in each resample with replacement: multinomial counts, int64
    [n_resamples, n_clips], each row summing to n_clips. The one draw every bootstrap here uses."""
    return np.random.default_rng(seed).multinomial(n_clips, np.full(n_clips, 1.0 / n_clips), size=n_resamples)


def resampled_metrics(targets: np.ndarray, scores: np.ndarray, counts: np.ndarray,
                      desc: str | None = None) -> dict:
    """One model's macro metrics (METRICS) on the full set and on each resample of clips (counts
    [resamples, clips], from `bootstrap_counts`); models scored on the same counts are paired.

    Returns full {metric: float}, ap and auc [classes] (full set) and samples {metric:
    [resamples]}. A class without positives or negatives in a resample is left out of that
    resample's means. desc: a tqdm progress bar over resamples with that label (on a terminal)."""
    r = Ranking(targets, scores)
    ap, auc = r.ap_auc()
    full = macro_metrics(ap, auc)
    n_res = len(counts)
    samples = {m: np.empty(n_res) for m in METRICS}
    step = WEIGHTINGS_PER_PRODUCT  # resamples per pass (Ranking bounds the memory of each)
    with tqdm(total=n_res, desc=desc, unit="resample", leave=False, disable=True if desc is None else None) as bar:
        for lo in range(0, n_res, step):
            m = macro_metrics(*r.ap_auc(counts[lo:lo + step, :, None]))
            for key in METRICS:
                samples[key][lo:lo + step] = m[key]
            bar.update(min(step, n_res - lo))
    return {"full": {m: float(full[m]) for m in METRICS}, "ap": ap, "auc": auc, "samples": samples}


def paired_difference(a: dict, b: dict, metric: str) -> dict:
    """metric(b) - metric(a) from two models' `resampled_metrics` on the same counts: diff (full
    set), ci95 (2.5 and 97.5 percentiles of the resampled differences over the resamples where
    both are finite; NaN if none is), samples [resamples] (NaN where undefined) and `undefined`,
    the resamples left out: a class without positives or negatives everywhere, or a perfect
    macro AUC, whose d' is infinite (a difference of infinities has no value)."""
    va, vb = a["samples"][metric], b["samples"][metric]
    finite = np.isfinite(va) & np.isfinite(vb)
    samples = np.where(finite, vb - np.where(finite, va, 0.0), np.nan)
    lo_hi = np.percentile(samples[finite], [2.5, 97.5]) if finite.any() else (np.nan, np.nan)
    return {"diff": b["full"][metric] - a["full"][metric], "ci95": (float(lo_hi[0]), float(lo_hi[1])),
            "samples": samples, "undefined": int((~finite).sum())}


def paired_bootstrap(targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, metric: str,
                     n_resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of metric(b) - metric(a), metric in METRICS, over evaluation clips.

    Each resample draws clips with replacement (`bootstrap_counts`, i.e. integer weights per
    clip) and scores both models on it; a class without positives or negatives in a resample is
    left out of that resample's means. Returns diff (on the full set), ci95 (2.5 and 97.5
    percentiles of the resampled differences) and samples [n_resamples]."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    counts = bootstrap_counts(np.shape(targets)[0], n_resamples, seed)
    a, b = (resampled_metrics(targets, s, counts) for s in (scores_a, scores_b))
    return paired_difference(a, b, metric)


def prior_shift_metrics(targets: np.ndarray, scores: np.ndarray, target_prior: np.ndarray) -> dict:
    """Scores re-scored as if the evaluation set had class prior target_prior [classes].

    Negatives of class k get weight w_k = pi_k (1 - pi'_k) / (pi'_k (1 - pi_k)) (pi: the set's own
    prior, pi': the target), which makes class k's weighted prior pi'_k. AP moves; AUC and d' do
    not (returned unchanged). Returns ap [classes] (NaN where pi_k or pi'_k is 0 or 1), mAP, dprime
    and ess [classes], Kish's effective sample size (sum w)^2 / sum w^2 of class k's weights."""
    y, s = check_inputs(targets, scores)
    pi_target = np.asarray(target_prior, dtype=np.float64)
    if pi_target.shape != y.shape[1:]:
        raise ValueError(f"target_prior {pi_target.shape} must be [classes] = {y.shape[1:]}")
    pi = priors_from_counts(y.sum(axis=0), y.shape[0])
    ok = (pi > 0) & (pi < 1) & (pi_target > 0) & (pi_target < 1)
    pi_ok, target_ok = np.where(ok, pi, 0.5), np.where(ok, pi_target, 0.5)
    w_neg = pi_ok * (1 - target_ok) / (target_ok * (1 - pi_ok))
    w = np.where(y, 1.0, w_neg)
    ap = np.where(ok, weighted_average_precision(y, s, w), np.nan)
    ess = np.where(ok, w.sum(axis=0) ** 2 / (w ** 2).sum(axis=0), np.nan)
    return {"ap": ap, "mAP": float(np.nanmean(ap)) if ok.any() else float("nan"),
            "dprime": classification_metrics(y, s)["dprime"], "ess": ess}


def prior_slope(delta_ap: np.ndarray, train_prior: np.ndarray, n_resamples: int = 1000,
                seed: int = 0) -> dict:
    """Least-squares line of per-class delta_ap [classes] on log10(train_prior) [classes] (the
    paper's Fig. 3), classes with a non-finite delta or a prior <= 0 dropped. Returns slope,
    intercept, r, p (scipy.stats.linregress, two-sided test of slope 0) and slope_ci95, the 2.5
    and 97.5 percentiles of the slope over n_resamples resamples of classes with replacement."""
    d, p = np.asarray(delta_ap, dtype=np.float64), np.asarray(train_prior, dtype=np.float64)
    if d.ndim != 1 or d.shape != p.shape:
        raise ValueError(f"delta_ap {d.shape} and train_prior {p.shape} must both be [classes]")
    keep = np.isfinite(d) & np.isfinite(p) & (p > 0)
    if keep.sum() < 3:
        raise ValueError(f"need >= 3 classes with a finite delta-AP and prior > 0, have {keep.sum()}")
    x, d = np.log10(p[keep]), d[keep]
    fit = linregress(x, d)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    xs, ds = x[idx], d[idx]
    xs = xs - xs.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of one repeated class
        slopes = (xs * ds).sum(axis=1) / (xs ** 2).sum(axis=1)
    lo, hi = np.nanpercentile(slopes, [2.5, 97.5])
    return {"slope": float(fit.slope), "intercept": float(fit.intercept), "r": float(fit.rvalue),
            "p": float(fit.pvalue), "slope_ci95": (float(lo), float(hi))}
