"""sweep.select on hand-made traces."""
import numpy as np
import pytest

from sweep.select import (Selection, TrialTrace, best_checkpoint, moving_average, select_overall,
                          select_per_beta)


def _trace(trial_id: str, beta: float, lr: float, dprime: list[float]) -> TrialTrace:
    e = len(dprime)
    return TrialTrace(trial_id, beta, lr, np.arange(1, e + 1) * 1000, np.array(dprime),
                      [f"ckpt/{trial_id}/{i}" for i in range(e)])


def test_moving_average_shrinks_at_the_ends():
    v = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    # window 3: the ends keep their own value (a centred window of one point)
    np.testing.assert_allclose(moving_average(v, 3), [1.0, 7 / 3, 14 / 3, 28 / 3, 16.0])
    # window 5: index 0 -> v[0], 1 -> v[0:3], 2 -> all, 3 -> v[2:5], 4 -> v[4]
    np.testing.assert_allclose(moving_average(v, 5), [1.0, 7 / 3, 31 / 5, 28 / 3, 16.0])
    np.testing.assert_array_equal(moving_average(v, 1), v)
    assert moving_average(np.array([]), 7).size == 0


def test_moving_average_interior_is_the_plain_mean():
    v = np.random.default_rng(0).random(20)
    np.testing.assert_allclose(moving_average(v, 7)[3:-3], np.convolve(v, np.ones(7) / 7, "valid"))


@pytest.mark.parametrize("window", [0, 4, -1])
def test_window_must_be_odd(window):
    with pytest.raises(ValueError, match="odd"):
        moving_average(np.ones(5), window)


def test_spike_is_rejected_by_smoothing():
    d = np.array([1.0, 1.1, 2.4, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.8, 1.7, 1.5, 1.4, 1.3, 1.2, 1.1])
    assert int(np.argmax(d)) == 2
    assert best_checkpoint(d, 7) == 9
    # the pick averages d[6:13]; the spike's own smoothed value averages d[0:5]
    assert moving_average(d, 7)[9] == pytest.approx(11.6 / 7)
    assert moving_average(d, 7)[2] == pytest.approx(7.0 / 5)


def test_a_rising_trace_picks_its_end_not_its_start():
    d = np.array([0.17, 0.36, 0.47, 0.57])  # still improving when the budget ran out
    assert best_checkpoint(d, 7) == 3


def test_ties_pick_the_first():
    assert best_checkpoint(np.array([1.0, 2.0, 2.0, 1.0]), 1) == 1


def test_select_per_beta_and_overall():
    traces = [
        _trace("a", 0.0, 1e-4, [1.0, 1.2, 1.4, 1.5, 1.5, 1.4]),
        _trace("b", 0.0, 1e-3, [1.1, 1.6, 1.8, 1.7, 1.5, 1.4]),
        _trace("c", 1.0, 1e-4, [0.9, 1.0, 1.1, 1.2, 1.3, 1.4]),
        _trace("d", 1.0, 1e-3, [1.0, 2.5, 1.0, 1.0, 1.0, 1.0]),  # one spike only
    ]
    per_beta = select_per_beta(traces, window=3)
    assert set(per_beta) == {0.0, 1.0}
    b0 = per_beta[0.0]
    # b smoothed (window 3): [1.1, 1.5, 1.7, 1.667, 1.533, 1.4] -> index 2; a peaks at 1.467
    assert (b0.trial_id, b0.lr, b0.index, b0.examples_to_peak) == ("b", 1e-3, 2, 3000)
    assert b0.val_dprime == pytest.approx(1.7) and b0.val_dprime_raw == 1.8
    assert b0.checkpoint == "ckpt/b/2"
    # d smoothed: [1.0, 1.5, 1.5, 1.0, 1.0, 1.0] -> index 1, 1.5; c: best 1.4 at its end
    b1 = per_beta[1.0]
    assert (b1.trial_id, b1.index) == ("d", 1) and b1.val_dprime == pytest.approx(1.5)
    best = select_overall(per_beta)
    assert isinstance(best, Selection) and best.trial_id == "b"


def test_untrainable_trace_is_skipped_with_a_warning():
    traces = [_trace("a", 0.5, 1e-4, [np.nan, np.nan]), _trace("b", 0.5, 1e-3, [1.0, 1.1])]
    with pytest.warns(UserWarning, match="trial a"):
        assert select_per_beta(traces)[0.5].trial_id == "b"
    with pytest.raises(ValueError):
        select_overall({})


def test_trace_lengths_must_agree():
    with pytest.raises(ValueError, match="one length"):
        TrialTrace("x", 0.0, 1e-4, np.arange(3), np.zeros(3), [None, None])
