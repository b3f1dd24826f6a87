import numpy as np
import pytest

from data import balance as B

LABELS = [[0], [0, 1], [1], [0, 2]]  # class 3 has no clips


def test_counts_priors_ratio_gini_by_hand():
    counts = B.class_counts(LABELS, 4)
    assert counts.tolist() == [3, 2, 1, 0]
    assert B.priors(LABELS, 4).tolist() == [0.75, 0.5, 0.25, 0.0]
    with pytest.warns(UserWarning, match=r"1 class\(es\) with no clips excluded: 3"):
        assert B.imbalance_ratio(counts) == 3.0
    with pytest.warns(UserWarning):
        # sorted priors .25 .5 .75: cumulative sums .25 .75 1.5 -> G = 1 - 2 * 2.5 / (3 * 1.5)
        assert B.gini(counts) == pytest.approx(1 - 5 / 4.5)


def test_gini_is_scale_free_and_orders_imbalance():
    assert B.gini(np.array([1, 2, 3])) == pytest.approx(B.gini(np.array([10, 20, 30])))
    assert B.gini(np.array([5, 5, 5, 5])) == pytest.approx(-1 / 4)  # the paper's formula, K = 4
    assert B.gini(np.array([1, 1, 1, 100])) > B.gini(np.array([1, 2, 3, 4]))


def test_oversampling_factors_by_hand():
    # rarest priors per clip: .75 .5 .5 .25 -> m_j / min m = (.75 / p)^beta
    assert B.oversampling_factors(LABELS, 0.0).tolist() == [1, 1, 1, 1]
    assert B.oversampling_factors(LABELS, 1.0).tolist() == [1, 2, 2, 3]  # 1.5 rounds half-up
    assert B.oversampling_factors(LABELS, 0.5).tolist() == [1, 1, 1, 2]  # sqrt(1.5), sqrt(3)
    assert B.oversampling_factors(LABELS, 1.0).dtype == np.int64


def test_ties_get_equal_factors():
    labels = [[0], [1], [2], [0, 1], [2]]  # all three classes have 2 clips
    assert B.oversampling_factors(labels, 1.0).tolist() == [1, 1, 1, 1, 1]


def test_zero_count_class_with_given_priors():
    priors = np.array([0.5, 0.0, 0.5])
    assert B.oversampling_factors([[0, 1], [2]], 1.0, priors).tolist() == [1, 1]
    with pytest.raises(ValueError, match="'clip-b'"):
        B.oversampling_factors([[0], [1]], 1.0, priors, clip_ids=["clip-a", "clip-b"])
    with pytest.raises(ValueError, match="no labels"):
        B.oversampling_factors([[0], []], 1.0)


def test_oversampled_stats_counts_repeats():
    s = B.oversampled_stats(LABELS, 1.0, 4)
    # N'_k with M = [1,2,2,3]: class0 = 1+2+3, class1 = 2+2, class2 = 3
    assert s["epoch_length"] == 8 and s["max_repeat"] == 3
    assert s["imbalance_ratio"] == pytest.approx(6 / 3)
    assert s["gini"] == pytest.approx(B.gini(np.array([6, 4, 3])))


def test_multilabels_roundtrip_take_and_multi_hot():
    ml = B.as_multilabels(LABELS)
    assert [list(ml[j]) for j in range(len(ml))] == LABELS
    sub = ml.take(np.array([3, 1]))
    assert [list(sub[j]) for j in range(2)] == [[0, 2], [0, 1]]
    assert ml.multi_hot(4).sum(axis=0).tolist() == [3, 2, 1, 0]


def test_rarest_label_count_orders_factors():
    rng = np.random.default_rng(0)
    labels = [rng.choice(20, size=rng.integers(1, 4), replace=False) for _ in range(500)]
    counts = B.class_counts(labels, 20)
    r = B.rarest_label_count(labels, counts)
    order = np.argsort(r, kind="stable")
    for beta in (0.3, 0.5, 1.0):
        m = B.oversampling_factors(labels, beta)[order]
        assert (np.diff(m) <= 0).all()  # non-increasing: M_j >= c is a prefix for every c
