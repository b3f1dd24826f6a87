"""How an epoch is drawn (data/draws.py): the recipes by name, each draw mode's expected draws by
hand, its epochs against them (exact, or within sampling error), round robin's class turns and
cycles, and the errors a recipe can raise. The stream of each mode: tests/test_stream.py; the
recipes on the real AudioSet labels: tests/test_labels.py."""
import numpy as np
import pytest

from data import balance as B
from data.draws import check_epoch, epoch_draw, exposure_stats, inclusion_probabilities

LABELS = [[0], [0, 1], [1], [0, 2], [2], [0]]   # N_k = 4, 2, 2


def _random_labels(n: int, classes: int, seed: int = 0) -> B.MultiLabels:
    """n clips with 1-3 Zipf-like labels each (AudioSet-like skew), every class present."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, classes + 1)
    labels = [np.unique(rng.choice(classes, rng.integers(1, 4), p=p / p.sum())) for _ in range(n - classes)]
    return B.as_multilabels(labels + [[k] for k in range(classes)])


def test_recipes_by_name():
    assert B.recipe("ast") == B.Recipe("ast", "psla", "replacement", None)
    assert B.recipe("passt") == B.Recipe("passt", "passt", "subset", 100_000)
    assert B.recipe("audiomae") == B.Recipe("audiomae", "psla", "subset", 200_000)
    assert B.recipe("audiomae@500") == B.Recipe("audiomae@500", "psla", "subset", 500)
    assert (B.recipe("moore").draw, B.recipe("passt-repeats").scheme, B.recipe("panns").draw) == (
        "repeats", "passt", "round_robin")
    with pytest.raises(ValueError, match=r"unknown balancing recipe 'focal'; known: moore, psla, passt-repeats, ast, "
                                         r"audiomae, passt, panns \(NAME@E: epochs of E draws\)"):
        B.recipe("focal")
    with pytest.raises(ValueError, match=r"'psla@10': psla draws each clip M_j times a pass .* an epoch length "
                                         r"applies to replacement, subset, round_robin recipes"):
        B.recipe("psla@10")
    with pytest.raises(ValueError, match=r"'ast@x': the epoch length after '@' must be an integer >= 1, got 'x'"):
        B.recipe("ast@x")


def test_expected_draws_by_hand():
    """E m_j / sum m with replacement (m_j = w_j^beta), M_j for repeats, the class turns over
    the class's clips for round robin; beta = 0 is uniform but for round robin."""
    n_k = np.array([4, 2, 2])
    w = np.array([sum(1 / (n_k[k] + 0.01) for k in clip) for clip in LABELS])   # psla: sum 1 / (N_k + .01)
    assert epoch_draw(LABELS, 3, "ast", 1.0).expected() == pytest.approx(6 * w / w.sum())
    assert epoch_draw(LABELS, 3, "ast@12", 0.5).expected() == pytest.approx(12 * w ** 0.5 / (w ** 0.5).sum())
    assert epoch_draw(LABELS, 3, "ast", 0.0).expected() == pytest.approx(np.ones(6))
    assert epoch_draw(LABELS, 3, "audiomae@3", 0.0).expected() == pytest.approx(np.full(6, 0.5))
    moore = epoch_draw(LABELS, 3, "moore", 1.0)
    assert moore.expected().tolist() == [1, 2, 2, 2, 2, 1] and moore.length == 10   # (4 / rarest N_k), halves up
    # round robin, beta 1: 6 turns an epoch, 2 per class; a clip gets 2 / N_k for each of its labels
    assert epoch_draw(LABELS, 3, "panns", 1.0).expected() == pytest.approx([.5, 1.5, 1, 1.5, 1, .5])
    # beta 0: class shares N_k / sum N = 4/8, 2/8, 2/8; a clip's draws are its label count x 6 / 8
    assert epoch_draw(LABELS, 3, "panns", 0.0).expected() == pytest.approx(np.array([1, 2, 1, 2, 1, 1]) * 6 / 8)


def test_inclusion_probabilities_by_hand():
    assert inclusion_probabilities(np.ones(4), 2) == pytest.approx(np.full(4, 0.5))
    w = np.array([1.0, 2.0, 4.0, 8.0, 0.0])
    pi = inclusion_probabilities(w, 2)
    assert pi.sum() == pytest.approx(2, rel=1e-9) and pi[-1] == 0 and (np.diff(pi[:4]) > 0).all() and pi[3] < 1
    assert pi == pytest.approx(-np.expm1(-w * np.log(1 / (1 - pi[0]))))   # one lambda for all: 1 - exp(-lambda w)
    assert inclusion_probabilities(w, 4).tolist() == [1, 1, 1, 1, 0]      # E = the clips that can be drawn


@pytest.mark.parametrize("name", ["moore", "ast@40", "audiomae@5", "panns@40"])
def test_an_epoch_is_a_function_of_seed_and_epoch(name):
    d = epoch_draw(LABELS, 3, name, 1.0)
    a = d.counts(0, 3)
    assert a.dtype == np.int64 and a.sum() == d.length and (a >= 0).all()
    np.testing.assert_array_equal(a, d.counts(0, 3))
    others = [d.counts(s, e) for s, e in [(0, 4), (1, 3), (0, 5), (2, 3)]]
    assert all((o == a).all() for o in others) == (d.draw == "repeats")


def test_a_subset_epoch_draws_distinct_clips_heavier_ones_more_often():
    """No clip twice in an epoch, E clips each epoch, and over 200 epochs each clip as often as
    its inclusion probability says (within 5 sd)."""
    labels = _random_labels(400, 12)
    d = epoch_draw(labels, 12, "passt@60", 1.0)
    epochs = np.stack([d.counts(7, e) for e in range(200)])
    assert epochs.max() == 1 and (epochs.sum(axis=1) == 60).all()
    pi = d.expected()
    z = (epochs.mean(axis=0) - pi) / np.sqrt(pi * (1 - pi) / 200 + 1e-12)
    assert np.abs(z).max() < 5 and pi.max() > 5 * pi.min()


def test_round_robin_turns_and_cycles_by_hand():
    """Two single-label classes of 2 and 6 clips, 8 draws an epoch at beta 1: 4 turns a class
    each epoch; class 0's clips twice each every epoch, class 1's 6 clips each twice in every 3
    epochs (its cycles run on from epoch to epoch: 12 turns are 2 whole cycles)."""
    d = epoch_draw([[0], [0], [1], [1], [1], [1], [1], [1]], 2, "panns@8", 1.0)
    epochs = np.stack([d.counts(5, e) for e in range(6)])
    assert (epochs[:, :2] == 2).all() and (epochs[:, 2:].sum(axis=1) == 4).all()
    assert (epochs[:3, 2:].sum(axis=0) == 2).all() and (epochs[3:, 2:].sum(axis=0) == 2).all()


def test_round_robin_shares_are_unbiased():
    """Class turns that are not whole numbers (E s_k = 1028 / 24 at beta 1) are rounded up or
    down by chance: over 300 epochs each clip is drawn as often as expected, within 5 sd."""
    labels = _random_labels(1028, 24, seed=1)
    for beta in (1.0, 0.5):
        d = epoch_draw(labels, 24, "panns", beta)
        epochs = np.stack([d.counts(0, e) for e in range(300)])
        assert (epochs.sum(axis=1) == 1028).all()
        got = B.class_counts(labels, 24, weights=epochs.mean(axis=0))
        want = np.array(exposure_stats(labels, d.expected(), 24)["exposure"])
        assert np.abs(got - want).max() <= 5 * np.sqrt(want.max() / 300), beta


def test_exposure_stats_by_hand():
    s = exposure_stats(LABELS, np.array([1, 1, 1, 1, 1, 3.0]), 4)   # class 3 has no clips
    assert s["exposure"] == [6, 2, 2, 0] and s["max_clip_exposure"] == 3
    assert s["imbalance_ratio"] == 3 and s["gini"] == pytest.approx(B.gini(np.array([6, 2, 2])))


def test_an_epoch_that_cannot_be_drawn_is_named():
    check_epoch("passt", 100_000)
    check_epoch("ast@5000000", 10)                  # with replacement: any length
    with pytest.raises(ValueError, match=r"recipe 'passt' draws 100,000 clips an epoch without replacement and the "
                                         r"split has 99,999: give a shorter epoch, e.g. passt@9999"):
        check_epoch("passt", 99_999)
    with pytest.raises(ValueError, match=r"recipe 'audiomae@7' draws 7 clips .* has 6: .* audiomae@1"):
        epoch_draw(LABELS, 3, "audiomae@7", 1.0)
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        epoch_draw(LABELS, 3, "ast", -1.0)
    with pytest.raises(ValueError, match="unknown balancing recipe"):
        epoch_draw(LABELS, 3, "nope", 1.0)
