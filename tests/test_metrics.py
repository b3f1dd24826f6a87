"""sweep.metrics against sklearn, per class, including ties and degenerate classes."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from sweep.metrics import Ranking, classification_metrics, dprime_from_auc


def _data(n: int, k: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < rng.uniform(0.02, 0.5, k)).astype(int)
    s = rng.random((n, k)) + 0.4 * y
    return y, (s if decimals is None else np.round(s, decimals))


@pytest.mark.parametrize("decimals", [None, 2, 1])  # continuous, some ties, heavy ties
def test_matches_sklearn_per_class(decimals):
    y, s = _data(400, 10, seed=decimals or 0, decimals=decimals)
    y[:, 0], y[:, 1] = 0, 1  # no positives; no negatives
    m = classification_metrics(y, s)
    assert m["excluded"] == [0, 1]
    assert np.isnan(m["ap"][:2]).all() and np.isnan(m["auc"][:2]).all()
    ap = [average_precision_score(y[:, k], s[:, k]) for k in range(2, 10)]
    auc = [roc_auc_score(y[:, k], s[:, k]) for k in range(2, 10)]
    np.testing.assert_allclose(m["ap"][2:], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["auc"][2:], auc, rtol=0, atol=1e-12)
    assert m["mAP"] == pytest.approx(np.mean(ap), abs=1e-12)
    assert m["mAUC"] == pytest.approx(np.mean(auc), abs=1e-12)
    assert m["dprime"] == pytest.approx(np.sqrt(2) * norm.ppf(np.mean(auc)), abs=1e-12)
    assert m["dprime_per_class_mean"] == pytest.approx(np.mean(np.sqrt(2) * norm.ppf(auc)), abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_weights_match_sklearn_sample_weight(decimals):
    y, s = _data(300, 6, seed=7, decimals=decimals)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, size=(2, 300))  # integer weights, two weightings at once
    per_class = rng.random((300, 6))             # float weights, one per clip and class
    ranking = Ranking(y, s)
    ap_c, auc_c = ranking.ap_auc(counts[..., None])
    ap_f, auc_f = ranking.ap_auc(per_class)
    def sk(k: int, w: np.ndarray) -> tuple[float, float]:
        return (average_precision_score(y[:, k], s[:, k], sample_weight=w),
                roc_auc_score(y[:, k], s[:, k], sample_weight=w))

    for k in range(6):
        for r in range(2):
            assert (ap_c[r, k], auc_c[r, k]) == pytest.approx(sk(k, counts[r]), abs=1e-12)
        assert (ap_f[k], auc_f[k]) == pytest.approx(sk(k, per_class[:, k]), abs=1e-12)


def test_blocks_of_classes_give_the_same_answer(monkeypatch):
    import sweep.metrics as metrics
    y, s = _data(200, 9, seed=3, decimals=2)
    whole = classification_metrics(y, s)
    monkeypatch.setattr(metrics, "WORK_ELEMENTS", 400)  # two classes per block
    blocked = classification_metrics(y, s)
    np.testing.assert_array_equal(whole["ap"], blocked["ap"])
    np.testing.assert_array_equal(whole["auc"], blocked["auc"])


@pytest.mark.parametrize("decimals", [None, 1])
def test_products_over_few_positives_equal_the_sorted_sums(monkeypatch, decimals):
    """Every class scored by matrix products over its positives (FEW_POSITIVES huge) or every
    class sorted (FEW_POSITIVES -1): the same AP and AUC under bootstrap counts (more weightings
    than one product takes) and under per-class float weights (as many weightings, so that the
    products are used for them too)."""
    import sweep.metrics as metrics
    y, s = _data(250, 7, seed=5, decimals=decimals)
    y[:, 0] = 0  # no positives: NaN both ways
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 3, size=(300, 250))[..., None]
    per_class = rng.random((40, 250, 7))
    got = {}
    for few in (10**9, -1):
        monkeypatch.setattr(metrics, "FEW_POSITIVES", few)
        r = Ranking(y, s)
        got[few] = [r.ap_auc(counts), r.ap_auc(per_class)]
    for products, sorted_ in zip(got[10**9], got[-1]):
        for a, b in zip(products, sorted_):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
            assert np.isnan(a[..., 0]).all()


def test_dprime_from_auc():
    assert dprime_from_auc(0.5) == 0.0
    assert dprime_from_auc(norm.cdf(1.0)) == pytest.approx(np.sqrt(2))
    np.testing.assert_allclose(dprime_from_auc(np.array([0.5, 1.0])), [0.0, np.inf])


@pytest.mark.parametrize("targets, scores, match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "must both be"),
    (np.full((3, 2), 2), np.zeros((3, 2)), "0/1"),
    (np.zeros((3, 2)), np.array([[0, 0], [0, np.nan], [0, 0]]), "clip 1, class 1"),
    (np.zeros((3, 2)), np.zeros((3, 2)), "no class has both"),
])
def test_bad_input(targets, scores, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(targets, scores)
