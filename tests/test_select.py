"""sweep.select on hand-made traces: full-window smoothing, the pick, settling, what to keep;
and the stopping rule on simulated traces of fast and slow trials (bench/stopping_rule.py)."""
import numpy as np
import pytest

from bench.stopping_rule import SPEEDS, simulate, stop_at, true_curve
from sweep.select import (ArmSelection, StoppingRule, TrialTrace, checkpoints_to_keep, latest_settled_pick, learned,
                          noise, pick, select_overall, select_per_arm, select_trial, settled, smoothed)
from sweep.trial import Arm, Trial


def _trace(name: str, beta: float, lr: float, dprime: list[float], mAP: list[float] | None = None,
           seed: int = 0, scheme: str = "moore") -> TrialTrace:
    """A trace evaluated every 1000 examples; its checkpoints are named ckpt/<name>/<evaluation>."""
    e = len(dprime)
    return TrialTrace(Trial(scheme, beta, lr, seed), np.arange(1, e + 1) * 1000, np.array(dprime),
                      np.array(dprime if mAP is None else mAP) / 10, [f"ckpt/{name}/{i}" for i in range(e)])


def _name(sel) -> str:
    """The trace name a pick's checkpoint carries (ckpt/<name>/<evaluation>)."""
    return sel.checkpoint.split("/")[1]


def _settled(d, window, patience, ratio=1.0) -> bool:
    """`settled` on a trace evaluated every 1000 examples."""
    d = np.asarray(d, dtype=float)
    return settled(d, np.arange(1, len(d) + 1) * 1000, StoppingRule(window, patience, ratio))


def test_smoothed_is_defined_only_on_full_windows():
    v = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(smoothed(v, 3), [np.nan, 7 / 3, 14 / 3, 28 / 3, np.nan])
    np.testing.assert_allclose(smoothed(v, 5), [np.nan, np.nan, 31 / 5, np.nan, np.nan])
    np.testing.assert_array_equal(smoothed(v, 1), v)
    assert np.isnan(smoothed(v, 7)).all() and smoothed(np.array([]), 7).size == 0


def test_smoothed_interior_is_the_plain_mean():
    v = np.random.default_rng(0).random(20)
    np.testing.assert_allclose(smoothed(v, 7)[3:-3], np.convolve(v, np.ones(7) / 7, "valid"))


@pytest.mark.parametrize("window", [0, 4, -1, 2.0])
def test_window_must_be_a_positive_odd_integer(window):
    with pytest.raises(ValueError, match="odd"):
        smoothed(np.ones(9), window)


def test_flat_noisy_traces_do_not_favour_the_edges():
    """40 evaluations, all equally good: the pick must not pile up at either end. With the
    old shrinking window 54.8% of picks fell on the first or last 3 evaluations; a uniform
    pick over the 34 full-window centres never lands there, and one over all 40 would land
    there 15% of the time. Required: at most half that uniform rate."""
    rng = np.random.default_rng(0)
    picks = np.array([pick(rng.normal(1.0, 0.3, 40), 7) for _ in range(4000)])
    edge = np.mean((picks < 3) | (picks >= 37))
    assert edge <= 0.5 * 6 / 40
    centre_share = np.bincount(picks, minlength=40)[3:37] / len(picks)
    assert centre_share.max() < 3 / 34  # no interior position is strongly preferred either


def test_a_nan_evaluation_only_blanks_its_windows():
    d = 1.0 + np.sin(np.linspace(0, np.pi, 25))   # peak at index 12
    clean = pick(d, 7)
    assert clean == 12
    for where in (1, 5, 20):
        broken = d.copy()
        broken[where] = np.nan
        s = smoothed(broken, 7)
        blank = np.flatnonzero(np.isnan(s))
        assert set(blank) == set(range(3)) | set(range(22, 25)) | set(range(max(3, where - 3), min(22, where + 4)))
        assert pick(broken, 7) == clean  # the pick stays at the peak
    assert pick(np.full(9, np.nan), 7) is None


def test_spike_is_rejected_by_smoothing():
    d = np.array([1.0, 1.1, 2.4, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.8, 1.7, 1.5, 1.4, 1.3, 1.2, 1.1])
    assert int(np.argmax(d)) == 2
    assert pick(d, 7) == 9 and smoothed(d, 7)[9] == pytest.approx(11.6 / 7)


def test_a_rising_trace_is_not_settled():
    d = np.linspace(0.2, 1.5, 12)
    assert pick(d, 7) == 8 and not _settled(d, 7, patience=1)  # the last full window, still rising


def test_settled_after_patience_full_windows_without_a_better_one():
    d = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 2.6, 2.2, 2.0, 1.8, 1.7, 1.6])
    # window 3: full windows at 1..9; the best (2.7) centres on 4 -> settled when 4 + p <= 9
    assert pick(d, 3) == 4
    assert _settled(d, 3, patience=5) and not _settled(d, 3, patience=6)
    assert not _settled(d[:6], 3, patience=1)  # index 4 has a full window only once 5 exists
    assert not _settled(d[:3], 7, patience=0)  # no full window at all


def test_settled_needs_ratio_times_the_picks_examples():
    """The pick (index 4, at 5,000 examples) has 5 full windows behind it at 11 evaluations
    (11,000 examples): settled for ratio <= 2.2, not for more; at ratio 2 from 10,000 on."""
    d = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 2.6, 2.2, 2.0, 1.8, 1.7, 1.6])
    assert _settled(d, 3, patience=5, ratio=2.2) and not _settled(d, 3, patience=5, ratio=2.3)
    longer = np.concatenate([d, [1.5] * 4])
    assert [_settled(longer[:n], 3, patience=1, ratio=2.0) for n in range(9, 12)] == [False, True, True]


def test_a_nan_window_is_not_patience():
    """Patience counts evaluations with full windows after the pick, not positions: a NaN
    evaluation right after the pick blanks the windows that contain it, and they do not count."""
    d = np.array([1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0])   # window 3: pick at index 2
    assert _settled(d, 3, patience=4)                        # full windows at 3..6
    d[4] = np.nan                                            # blanks the windows at 3, 4 and 5
    assert pick(d, 3) == 2 and not _settled(d, 3, patience=2)  # only index 6 left
    assert _settled(np.concatenate([d, [1.0]]), 3, patience=2)


def test_latest_settled_pick():
    rule = StoppingRule(7, 5, 2.0)
    # a 60k cap at one evaluation per 1,000: by patience a pick at evaluation 52 could settle, by ratio 30
    assert latest_settled_pick(60_000, 1_000, rule) == 30_000
    assert latest_settled_pick(60_000, 1_000, StoppingRule(7, 5, 1.0)) == 52_000
    # a user's 10k cap at 500 a evaluation: 5,000 examples (10 evaluations) at ratio 2
    assert latest_settled_pick(10_000, 500, rule) == 5_000
    # 8 evaluations: the first full window (evaluation 4) cannot have 5 more behind it
    assert latest_settled_pick(8_000, 1_000, rule) == 0
    # the latest is itself settleable, one later is not
    every, cap = 1_000, 24_000
    last = latest_settled_pick(cap, every, rule) // every
    n = cap // every
    for i, expect in ((last, True), (last + 1, False)):
        d = np.zeros(n)
        d[i - 1] = 1.0                                  # one bump: the pick centres on it
        assert settled(d, np.arange(1, n + 1) * every, StoppingRule(1, 5, 2.0)) == expect


@pytest.mark.parametrize("shape", ["peak", "broad"])
def test_the_rule_costs_fast_and_slow_trials_alike(shape):
    """Simulated traces (bench/stopping_rule.py): 0.30 d' gain, sigma 0.02 noise on every raw
    evaluation, peaks after 11 (fast) and 34 (slow) evaluations. Against training to the cap
    (4x the slow peak), the rule loses at most 0.005 true d' on average for both, and the two
    losses differ by less than 0.002; a patience fixed in evaluations (ratio 1) loses more on
    the slow traces than on the fast ones, which is the bias the ratio removes."""
    rule = StoppingRule(7, 5, 2.0)
    fast, slow = (simulate(shape, SPEEDS[s], 0.02, rule, reps=150) for s in ("fast", "slow"))
    assert fast["loss_mean"] <= 0.005 and slow["loss_mean"] <= 0.005
    assert abs(slow["loss_mean"] - fast["loss_mean"]) < 0.002
    assert slow["compute"] < 0.6 and fast["compute"] < 0.25  # what it saves against the cap
    old_fast, old_slow = (simulate(shape, SPEEDS[s], 0.02, StoppingRule(7, 5, 1.0), reps=150)
                          for s in ("fast", "slow"))
    assert old_slow["loss_mean"] > old_fast["loss_mean"] and old_slow["picked_early"] > 2 * slow["picked_early"]


def test_a_plateau_then_rise_is_not_stopped_on_its_plateau():
    """A slow trial flat from 30% to 55% of its time to peak, then rising again (sigma 0.02): the
    rule trains through the plateau to the true peak (under 5% of picks before 80% of it, under
    0.005 d' lost); a patience fixed in evaluations stops on the plateau in a quarter of them."""
    examples, d = true_curve("plateau_rise", SPEEDS["slow"])
    n = stop_at(d, examples, StoppingRule(7, 5, 2.0))          # noise-free: through to the peak
    assert n > SPEEDS["slow"] and abs(pick(d[:n], 7) - (SPEEDS["slow"] - 1)) <= 1
    new = simulate("plateau_rise", SPEEDS["slow"], 0.02, StoppingRule(7, 5, 2.0), reps=150)
    old = simulate("plateau_rise", SPEEDS["slow"], 0.02, StoppingRule(7, 5, 1.0), reps=150)
    assert new["picked_early"] < 0.05 and new["loss_mean"] <= 0.005
    assert old["picked_early"] > 0.15 and old["loss_mean"] > 0.01


def test_ties_pick_the_first():
    assert pick(np.array([1.0, 2.0, 2.0, 1.0]), 1) == 1


def test_checkpoints_to_keep_cover_every_possible_future_pick():
    """Whatever evaluations come next, the eventual pick is in the set kept now."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        d = rng.normal(size=rng.integers(3, 30))
        if rng.random() < 0.3:
            d[rng.integers(len(d))] = np.nan
        future = np.concatenate([d, rng.normal(size=rng.integers(0, 10))])
        final = pick(future, 5)
        keep = checkpoints_to_keep(d, 5, keep=1)
        assert len(d) - 1 in keep
        if final is not None and final < len(d):
            assert final in keep, (d, future, final, keep)
    assert checkpoints_to_keep(np.arange(10.0), 5, keep=1) == {7, 8, 9}  # rising: the tail only
    assert checkpoints_to_keep(np.array([0.0, 5.0, 0.0, 0.0, 0.0, 0.0]), 3, keep=2) == {1, 2, 5}
    with pytest.raises(ValueError):
        checkpoints_to_keep(np.ones(3), 3, keep=0)


def test_select_per_arm_and_overall():
    traces = [
        _trace("a", 0.0, 1e-4, [1.0, 1.2, 1.4, 1.5, 1.5, 1.4]),
        _trace("b", 0.0, 1e-3, [1.1, 1.6, 1.8, 1.7, 1.5, 1.4]),
        _trace("c", 1.0, 1e-4, [0.9, 1.0, 1.1, 1.2, 1.3, 1.4]),
        _trace("d", 1.0, 1e-3, [1.0, 2.5, 1.0, 1.0, 1.0, 1.0]),  # one spike only
    ]
    per_arm = select_per_arm(traces, StoppingRule(3, 2, 1.0))
    assert set(per_arm) == {Arm("moore", 0.0), Arm("moore", 1.0)} and all(len(s.picks) == 1 for s in per_arm.values())
    b0 = per_arm[Arm("moore", 0.0)].picks[0]
    # b smoothed (window 3): [-, 1.5, 1.7, 1.667, 1.533, -] -> index 2; a peaks at 1.467
    assert (_name(b0), b0.trial.lr, b0.index, b0.examples_to_peak) == ("b", 1e-3, 2, 3000)
    assert b0.val_dprime == pytest.approx(1.7) and b0.val_dprime_raw == 1.8
    assert b0.checkpoint == "ckpt/b/2" and b0.converged and b0.evaluations == 6 and b0.examples_to_map_peak == 3000
    # d smoothed: [-, 1.5, 1.5, 1.0, 1.0, -] -> index 1; c rises to 1.3 at index 4, unsettled
    b1 = per_arm[Arm("moore", 1.0)].picks[0]
    assert (_name(b1), b1.index) == ("d", 1) and b1.val_dprime == pytest.approx(1.5) and b1.converged
    assert not select_trial(traces[2], StoppingRule(3, 2, 1.0)).converged
    # at ratio 2, b's pick (3,000 examples) needs the 6,000 it has; at 2.5, 7,500
    assert select_trial(traces[1], StoppingRule(3, 2, 2.0)).converged
    assert not select_trial(traces[1], StoppingRule(3, 2, 2.5)).converged
    # the mAP pick is reported beside the d' pick, from the mAP trace alone
    later = _trace("e", 0.5, 1e-3, [1.1, 1.6, 1.8, 1.7, 1.5, 1.4], mAP=[1, 2, 3, 4, 5, 4])
    assert select_trial(later, StoppingRule(3, 2, 1.0)).examples_to_map_peak == 5000
    best = select_overall(per_arm)
    assert isinstance(best, ArmSelection) and best.arm.beta == 0.0 and _name(best.picks[0]) == "b"


def test_schemes_are_arms_of_their_own():
    """Two schemes at one beta are two arms, each choosing its learning rate; the overall pick
    is the better arm, on a tie the smaller beta, then the scheme swept first."""
    traces = [_trace("m", 0.5, 1e-3, [1.0, 1.5, 1.6, 1.5, 1.4, 1.3]),
              _trace("p1", 0.5, 1e-4, [1.0, 1.9, 2.0, 1.9, 1.4, 1.3], scheme="psla"),
              _trace("p2", 0.5, 1e-3, [1.0, 1.2, 1.3, 1.2, 1.1, 1.0], scheme="psla")]
    per_arm = select_per_arm(traces, StoppingRule(3, 2, 1.0))
    assert set(per_arm) == {Arm("moore", 0.5), Arm("psla", 0.5)}
    assert per_arm[Arm("psla", 0.5)].lr == 1e-4
    best = select_overall(per_arm)
    assert best.arm == Arm("psla", 0.5) and best.picks[0].trial.scheme == "psla"
    tied = select_per_arm([_trace("a", 0.5, 1e-3, [1.0] * 6, scheme="psla"), _trace("b", 0.5, 1e-3, [1.0] * 6),
                           _trace("c", 0.3, 1e-3, [1.0] * 6, scheme="passt")], StoppingRule(3, 2, 1.0))
    assert select_overall(tied).arm == Arm("passt", 0.3)


def test_seeds_choose_the_learning_rate_on_their_mean():
    """Per beta the learning rate with the best mean over seeds, not the luckiest seed; every
    seed's pick comes with it, and the beta is converged only if every one is settled."""
    lucky = [_trace("a0", 0.0, 1e-4, [1.0, 3.0, 3.0, 1.0, 1.0, 1.0], seed=0),
             _trace("a1", 0.0, 1e-4, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], seed=1)]   # mean 1.83
    steady = [_trace("b1", 0.0, 1e-3, [1.0, 2.0, 2.0, 1.9, 1.5, 1.5], seed=1),
              _trace("b0", 0.0, 1e-3, [1.0, 2.0, 2.1, 2.0, 1.6, 1.5], seed=0)]  # mean 1.98
    sel = select_per_arm(lucky + steady, StoppingRule(3, 2, 1.0))[Arm("moore", 0.0)]
    assert sel.lr == 1e-3 and [_name(p) for p in sel.picks] == ["b0", "b1"]
    assert sel.val_dprime == pytest.approx(np.mean([p.val_dprime for p in sel.picks])) and sel.converged
    unsettled = _trace("b1", 0.0, 1e-3, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0], seed=1)
    assert not select_per_arm(steady[1:] + [unsettled], StoppingRule(3, 2, 1.0))[Arm("moore", 0.0)].converged


def test_a_trace_without_a_full_window_cannot_be_selected():
    traces = [_trace("a", 0.5, 1e-4, [1.0, 1.2, 1.1]), _trace("b", 0.5, 1e-3, [1.0] * 7)]
    with pytest.warns(UserWarning, match="trial moore-beta=0.5-lr=0.0001-seed=0 has no 7-evaluation window"):
        assert _name(select_per_arm(traces)[Arm("moore", 0.5)].picks[0]) == "b"
    assert select_trial(traces[0], StoppingRule(7, 5, 2.0)) is None
    with pytest.raises(ValueError):
        select_overall({})


def test_trace_lengths_must_agree():
    with pytest.raises(ValueError, match="one length"):
        TrialTrace(Trial("moore", 0.0, 1e-4, 0), np.arange(3), np.zeros(3), np.zeros(3), [None, None])


def test_a_trace_at_chance_never_settles():
    """The issue's check: 1,000 traces flat at chance (d' 0.05 +- 0.04, 30 evaluations every 500
    examples) under the default rule. Before the learned guard about half of them settled, on a
    pick at chance; now none does, with the start measured or not."""
    rng = np.random.default_rng(0)
    examples = np.arange(1, 31) * 500
    for _ in range(1000):
        d = 0.05 + rng.normal(0, 0.04, 30)
        assert not settled(d, examples) and not settled(d, examples, start=float(0.05 + rng.normal(0, 0.04)))
        assert not learned(d)


def test_a_trace_that_never_leaves_its_start_does_not_settle():
    """A trial that starts above chance (its d' before training 0.5) and stays there has not
    learned; the same trace rising from that start has."""
    rng = np.random.default_rng(1)
    examples = np.arange(1, 31) * 500
    flat = [0.5 + rng.normal(0, 0.03, 30) for _ in range(300)]
    assert np.mean([settled(d, examples, start=0.5) for d in flat]) < 0.02
    x = np.arange(1, 31) / 10
    risen = [0.5 + 0.4 * x * np.exp(1 - x) + rng.normal(0, 0.03, 30) for _ in range(100)]
    assert all(settled(d, examples, start=0.5) for d in risen)


def test_a_trace_that_learned_and_peaked_still_settles():
    """Fast and slow peaks, gains of 0.3 and 2 d', from chance: the guard changes nothing."""
    rng = np.random.default_rng(2)
    for peak, gain, n in ((3, 2.0, 20), (10, 0.3, 30), (10, 2.0, 30)):
        x = np.arange(1, n + 1) / peak
        for _ in range(100):
            d = gain * x * np.exp(1 - x) + rng.normal(0, 0.02, n)
            assert learned(d, start=float(rng.normal(0, 0.02)))
            assert settled(d, np.arange(1, n + 1) * 1000, start=0.0) == settled(
                d, np.arange(1, n + 1) * 1000, StoppingRule(chance=-np.inf, learn_z=0.0))


def test_noise_is_the_evaluation_sd_whatever_the_trend():
    rng = np.random.default_rng(3)
    x = np.arange(200.0)
    for trend in (0 * x, 0.01 * x, 2 - 0.005 * x):
        assert noise(trend + rng.normal(0, 0.05, 200)) == pytest.approx(0.05, rel=0.15)
    assert np.isnan(noise(np.array([1.0, 2.0]))) and noise(np.array([1.0, np.nan, 2.0, 3.0, 4.0])) == 0.0


def test_an_arm_that_did_not_learn_says_so():
    at_chance = _trace("c", 1.0, 1e-3, [0.05, 0.02, 0.06, 0.04, 0.05, 0.03, 0.06, 0.05])
    sel = select_trial(at_chance, StoppingRule(3, 2, 1.0))
    assert sel is not None and not sel.learned and not sel.converged
    arm = select_per_arm([at_chance], StoppingRule(3, 2, 1.0))[Arm("moore", 1.0)]
    assert not arm.learned and not arm.converged


def test_late_starters_lose_no_more_than_early_ones():
    """Simulated slow traces at chance for 40% of their time to peak, then rising (bench/
    stopping_rule.py, sigma 0.02): with the learned guard they lose no more against training to
    the cap than traces that start at once; without it a quarter stop on their flat start."""
    rule = StoppingRule(7, 5, 2.0)
    late, early = (simulate(shape, SPEEDS["slow"], 0.02, rule, reps=60) for shape in ("late_40", "peak"))
    assert late["loss_mean"] <= early["loss_mean"] + 0.002 and late["picked_early"] <= early["picked_early"] + 0.02
    unguarded = simulate("late_40", SPEEDS["slow"], 0.02, StoppingRule(7, 5, 2.0, chance=-np.inf, learn_z=0.0), reps=60)
    assert unguarded["loss_mean"] > 0.02 and unguarded["picked_early"] > 0.1
    never = simulate("never", SPEEDS["fast"], 0.02, rule, reps=60)
    assert never["settled"] == 0 and never["compute"] == 1.0
