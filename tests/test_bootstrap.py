"""sweep.bootstrap against independent computations on small data."""

import numpy as np
import pytest
from scipy.stats import linregress
from sklearn.metrics import average_precision_score

from sweep.metrics import classification_metrics
from sweep.bootstrap import (bootstrap_counts, paired_bootstrap, paired_difference, prior_shift_metrics, prior_slope,
                         resampled_metrics, weighted_average_precision)


def _two_models(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets and two models' scores [clips, classes]; b is better than a."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < np.geomspace(0.3, 0.02, k)).astype(int)
    return y, rng.normal(size=(n, k)) + 1.0 * y, rng.normal(size=(n, k)) + 1.5 * y


def test_weighted_ap_equals_ap_on_replicated_rows():
    rng = np.random.default_rng(0)
    y = (rng.random((150, 4)) < 0.3).astype(int)
    s = np.round(rng.random((150, 4)) + 0.3 * y, 1)  # with ties
    w = rng.integers(0, 4, 150)
    rows = np.repeat(np.arange(150), w)
    expect = [average_precision_score(y[rows, k], s[rows, k]) for k in range(4)]
    np.testing.assert_allclose(weighted_average_precision(y, s, w), expect, rtol=0, atol=1e-12)
    # one weight per clip and class: the same thing column by column
    np.testing.assert_allclose(weighted_average_precision(y, s, np.repeat(w[:, None], 4, 1)), expect,
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average_precision(y, s, -w)
    with pytest.raises(ValueError, match=r"\[clips\]"):
        weighted_average_precision(y, s, w[:10])


@pytest.mark.parametrize("metric", ["mAP", "mAUC", "dprime"])
def test_bootstrap_diff_and_samples(metric):
    y, a, b = _two_models(300, 6, seed=1)
    y[:, 5] = 0
    y[7, 5] = 1  # one positive: many resamples lose it, and leave the class out
    out = paired_bootstrap(y, a, b, metric, n_resamples=200, seed=3)
    full = classification_metrics(y, b)[metric] - classification_metrics(y, a)[metric]
    assert out["diff"] == pytest.approx(full, abs=1e-12)
    assert out["samples"].shape == (200,)
    lo, hi = out["ci95"]
    assert lo < out["diff"] < hi
    # each sample: both models scored on the same explicit resample (the documented draw)
    counts = np.random.default_rng(3).multinomial(300, np.full(300, 1 / 300), size=200)
    lost = counts[:, 7] == 0
    for r in (np.argmax(lost), np.argmax(~lost), 199):  # class 5 left out; kept; the last
        rows = np.repeat(np.arange(300), counts[r])
        direct = (classification_metrics(y[rows], b[rows])[metric]
                  - classification_metrics(y[rows], a[rows])[metric])
        assert out["samples"][r] == pytest.approx(direct, abs=1e-12)
    assert np.array_equal(paired_bootstrap(y, a, b, metric, 200, seed=3)["samples"], out["samples"])


def test_one_pass_per_model_is_the_paired_bootstrap():
    """Each model scored once on shared resamples (what the report does) gives paired_bootstrap
    exactly, for every metric; the counts are the documented multinomial draw."""
    y, a, b = _two_models(200, 5, seed=7)
    counts = bootstrap_counts(200, 150, seed=2)
    assert counts.shape == (150, 200) and (counts.sum(axis=1) == 200).all()
    assert np.array_equal(counts, np.random.default_rng(2).multinomial(200, np.full(200, 1 / 200), size=150))
    ra, rb = resampled_metrics(y, a, counts), resampled_metrics(y, b, counts, desc="test")
    assert ra["full"]["mAP"] == pytest.approx(classification_metrics(y, a)["mAP"], abs=1e-12)
    np.testing.assert_allclose(ra["ap"], classification_metrics(y, a)["ap"], rtol=0, atol=1e-12)
    for metric in ("mAP", "mAUC", "dprime"):
        want = paired_bootstrap(y, a, b, metric, n_resamples=150, seed=2)
        got = paired_difference(ra, rb, metric)
        assert got["diff"] == want["diff"] and got["ci95"] == want["ci95"]
        assert np.array_equal(got["samples"], want["samples"])


def test_bootstrap_interval_shrinks_with_more_clips():
    widths = []
    for n in (400, 3200):
        y, a, b = _two_models(n, 8, seed=2)
        lo, hi = paired_bootstrap(y, a, b, "mAP", n_resamples=300)["ci95"]
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(8) in theory


def test_bootstrap_rejects_unknown_metric():
    y, a, b = _two_models(50, 3, seed=0)
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap(y, a, b, "accuracy")

def test_prior_shift_equals_ap_on_replicated_set():
    n = 200
    rng = np.random.default_rng(5)
    y = np.zeros((n, 5), dtype=int)
    y[rng.permutation(n)[:20], 0] = 1  # prior 0.1
    y[rng.permutation(n)[:40], 1] = 1  # prior 0.2
    y[rng.permutation(n)[:30], 2] = 1  # prior 0.15
    y[rng.permutation(n)[:30], 4] = 1  # class 3 has no positives
    s = np.round(rng.random((n, 5)) + 0.4 * y, 2)
    # class 0 -> 1/28: negatives x3; class 1 -> 1/3: negatives x0.5 = positives x2; class 2 unchanged
    target = np.array([1 / 28, 1 / 3, 0.15, 0.1, 0.0])
    out = prior_shift_metrics(y, s, target)
    own = classification_metrics(y, s)

    def replicated_ap(k: int, pos_copies: int, neg_copies: int) -> float:
        rows = np.repeat(np.arange(n), np.where(y[:, k] == 1, pos_copies, neg_copies))
        assert y[rows, k].mean() == pytest.approx(target[k])  # the set now has the target prior
        return average_precision_score(y[rows, k], s[rows, k])

    assert out["ap"][0] == pytest.approx(replicated_ap(0, 1, 3), abs=1e-12)
    assert out["ap"][1] == pytest.approx(replicated_ap(1, 2, 1), abs=1e-12)
    assert out["ap"][2] == pytest.approx(own["ap"][2], abs=1e-12)
    assert np.isnan(out["ap"][3:]).all()  # no positives; target prior 0
    assert out["mAP"] == pytest.approx(np.mean(out["ap"][:3]))
    assert out["dprime"] == own["dprime"]
    assert out["ess"][0] == pytest.approx((20 + 180 * 3) ** 2 / (20 + 180 * 9))
    assert out["ess"][2] == pytest.approx(n)
    with pytest.raises(ValueError, match="target_prior"):
        prior_shift_metrics(y, s, target[:3])


def test_prior_slope_matches_scipy():
    rng = np.random.default_rng(6)
    prior = 10 ** rng.uniform(-4, -1, 60)
    delta = -0.05 * np.log10(prior) + rng.normal(0, 0.05, 60)
    delta[[3, 9]] = np.nan
    prior[12] = 0.0
    out = prior_slope(delta, prior, n_resamples=500)
    keep = np.isfinite(delta) & (prior > 0)
    ref = linregress(np.log10(prior[keep]), delta[keep])
    assert (out["slope"], out["intercept"], out["r"], out["p"]) == pytest.approx(
        (ref.slope, ref.intercept, ref.rvalue, ref.pvalue), abs=1e-12)
    lo, hi = out["slope_ci95"]
    assert lo < ref.slope < hi < 0
    assert 0.5 < (hi - lo) / (2 * 1.96 * ref.stderr) < 2  # close to the normal-theory interval
    with pytest.raises(ValueError, match=">= 3 classes"):
        prior_slope(np.array([0.1, np.nan, 0.2]), np.array([0.1, 0.2, 0.3]))


def test_a_perfect_auc_is_left_out_and_counted_without_a_warning():
    """A resample where a model separates every class perfectly has an infinite d': its
    difference has no value. It is left out of the interval, counted, and no numpy warning
    reaches the console."""
    import warnings
    y, _, _ = _two_models(40, 2, seed=5)
    perfect = y.astype(float) + 0.01 * np.random.default_rng(0).random(y.shape)  # AUC 1 everywhere
    other = np.random.default_rng(1).random(y.shape)
    counts = bootstrap_counts(40, 200, seed=0)
    a, b = resampled_metrics(y, other, counts), resampled_metrics(y, perfect, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = paired_difference(a, b, "dprime")
        both = paired_difference(b, b, "dprime")
    assert d["undefined"] == 200 and np.isnan(d["ci95"]).all() and both["undefined"] == 200
    mixed = {**b, "samples": {**b["samples"], "dprime": np.where(np.arange(200) < 10, np.inf, 1.0)}}
    d = paired_difference(a, mixed, "dprime")
    assert d["undefined"] == 10 and np.isfinite(d["ci95"]).all() and np.isnan(d["samples"][:10]).all()
