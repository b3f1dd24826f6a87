import numpy as np
import pytest

from data import balance as B

LABELS = [[0], [0, 1], [1], [0, 2]]  # class 3 has no clips


def test_counts_priors_ratio_gini_by_hand():
    counts = B.class_counts(LABELS, 4)
    assert counts.tolist() == [3, 2, 1, 0]
    assert B.priors(LABELS, 4).tolist() == [0.75, 0.5, 0.25, 0.0]
    assert B.priors_from_counts(counts, 4).tolist() == [0.75, 0.5, 0.25, 0.0]
    assert B.priors_from_counts(np.zeros(3, np.int64), 0).tolist() == [0.0, 0.0, 0.0]  # no clips: no NaN
    with pytest.warns(UserWarning, match=r"1 class\(es\) with no clips excluded: 3"):
        assert B.imbalance_ratio(counts) == 3.0
    with pytest.warns(UserWarning):
        # sorted priors .25 .5 .75: cumulative sums .25 .75 1.5 -> G = 1 + 1/3 - 2 * 2.5 / (3 * 1.5)
        assert B.gini(counts) == pytest.approx(1 + 1 / 3 - 5 / 4.5)


def test_gini_is_scale_free_and_orders_imbalance():
    assert B.gini(np.array([1, 2, 3])) == pytest.approx(B.gini(np.array([10, 20, 30])))
    assert B.gini(np.array([5, 5, 5, 5])) == pytest.approx(0)  # even: 0 (the paper's eq. 3: -1/4)
    assert B.gini(np.array([9])) == 0 and 0 < B.gini(np.array([1, 1_000_000])) < 1
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


def test_zero_count_class_with_given_counts():
    counts = np.array([5, 0, 5])
    for method in B.SCHEMES:
        assert B.oversampling_factors([[0, 1], [2]], 1.0, counts, method).tolist() == [1, 1]
        with pytest.raises(ValueError, match="'clip-b'"):
            B.oversampling_factors([[0], [1]], 1.0, counts, method, clip_ids=["clip-a", "clip-b"])
    with pytest.raises(ValueError, match="no labels"):
        B.oversampling_factors([[0], []], 1.0)


def test_schemes_by_hand():
    """m_j = (agg over k of 1 / (N_k + c))^beta with the exponent outside: counts N = [3, 2, 1]
    over LABELS ([0], [0, 1], [1], [0, 2]), M_j = round(m_j / min m)."""
    w_sum = 1 / np.array([3.01, 3.01, 2.01, 3.01]) + np.array([0, 1 / 2.01, 0, 1 / 1.01])   # psla, c = 0.01
    assert B.oversampling_factors(LABELS, 1.0, method="psla").tolist() == B.round_half_up(w_sum / w_sum.min()).tolist()
    assert B.oversampling_factors(LABELS, 1.0, method="psla").tolist() == [1, 2, 1, 4]  # 2.4975, 1.4975, 3.98
    w_passt = np.array([1 / 103, 1 / 103 + 1 / 102, 1 / 102, 1 / 103 + 1 / 101])
    assert B.oversampling_factors(LABELS, 1.0, method="passt").tolist() == [1, 2, 1, 2]
    assert (w_passt / w_passt.min()).round(3).tolist() == [1.0, 2.01, 1.01, 2.02]
    for method in B.SCHEMES:  # beta = 0 is no balancing, whatever the aggregation
        assert B.oversampling_factors(LABELS, 0.0, method=method).tolist() == [1, 1, 1, 1]
    assert B.scheme("psla") == B.Scheme("psla", "sum", 0.01)
    with pytest.raises(ValueError, match="unknown balancing scheme 'nope'; known: moore, psla, passt"):
        B.scheme("nope")


def test_oversampled_stats_counts_repeats():
    s = B.oversampled_stats(LABELS, 1.0, 4)
    # N'_k with M = [1,2,2,3]: class0 = 1+2+3, class1 = 2+2, class2 = 3
    assert s["epoch_length"] == 8 and s["max_repeat"] == 3
    assert s["imbalance_ratio"] == pytest.approx(6 / 3)
    assert s["gini"] == pytest.approx(B.gini(np.array([6, 4, 3]))) and s["scheme"] == "moore"


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
    assert np.array_equal(B.rarest_label_order(labels, 20), order) and B.rarest_label_order(labels, 20).dtype == np.int64


def test_rarest_label_order_is_stable_by_hand():
    # rarest-label counts 4 2 2 1 4 (classes 0, 1, 2 have 4, 2, 1 clips): ties keep their order
    assert B.rarest_label_order([[0], [0, 1], [1], [0, 2], [0]], 3).tolist() == [3, 1, 2, 0, 4]


@pytest.mark.parametrize("rare, common, beta, want", [
    (10, 45, 1.0, 5), (10, 25, 1.0, 3), (10, 15, 1.0, 2),   # count ratios 4.5, 2.5, 1.5
    (10, 55, 1.0, 6), (10, 65, 1.0, 7), (10, 95, 1.0, 10),  # 15, 55, 65, 95 / 10 fell to floor in log space
    (100, 625, 0.5, 3), (4, 225, 0.5, 8),                   # sqrt ratios 2.5 and 7.5
    (16, 2025, 0.5, 11), (10, 44, 1.0, 4),                  # no ties: 11.25 and 4.4 round to nearest
])
def test_exact_ties_round_half_up(rare, common, beta, want):
    """M_j of the rare-class clips when the ratio m_j / min m is exactly a half (eq. 5)."""
    # clips of a third class vary N (so the priors), not the ratio; each case has an N at which
    # the former log-space floor(exp(.) + 0.5) rounded the tie down (45/10: N = 65, 625/100: N = 754)
    for extra in [e for e in (0, 1, 3, 7, 9, 10, 29) if e <= common]:
        labels = [[0]] * common + [[1]] * rare + [[2]] * extra
        m = B.oversampling_factors(labels, beta)
        assert m[common:common + rare].tolist() == [want] * rare, extra
        assert (m[:common] == 1).all()


def test_round_half_up():
    x = np.array([0.5, 1.5, 2.5, 4.4999999999, 4.49999, 4.5000001, 1.0, 1.4, 15_009.0])
    assert B.round_half_up(x).tolist() == [1, 2, 3, 5, 4, 5, 1, 1, 15_009]


def test_table_2_unchanged_on_the_published_labels(published_train):
    """The paper's Table 2 Gini per beta on the 2,063,949 published clips, to the digit measured
    before the rounding change (log space, floor(x + 0.5)): none of the 2M factors moved. The
    paper's eq. 3 is the standard Gini less 1/K; both round to its table."""
    seg = published_train
    measured = {0.0: (0.8319273206972688, 2_063_949), 0.1: (0.7892307237587031, 2_930_096),
                0.2: (0.7468452136474559, 4_207_243), 0.3: (0.7050266533655989, 6_601_650),
                0.5: (0.6294405914159333, 19_039_972), 0.7: (0.560246952658165, 62_760_427),
                1.0: (0.4653231489316566, 437_491_263)}
    table2 = {0.0: 0.83, 0.1: 0.79, 0.2: 0.75, 0.3: 0.71, 0.5: 0.63, 0.7: 0.56, 1.0: 0.47}
    for beta, (g, epoch) in measured.items():
        s = B.oversampled_stats(seg.labels, beta, 527)
        assert s["gini"] - 1 / 527 == pytest.approx(g, rel=1e-12) and s["epoch_length"] == epoch, beta
        assert round(s["gini"], 2) == round(s["gini"] - 1 / 527, 2) == table2[beta]
