"""sweep/confidence.py on constructed validation scores: identical trials are never resolved,
a trial better by construction is, and seeds widen the margin's interval."""
import numpy as np
import pytest

from sweep.bootstrap import bootstrap_counts
from sweep.confidence import confidence, resampled_dprime, verdict
from sweep.metrics import classification_metrics
from sweep.trial import Arm, Trial

CLIPS, CLASSES, WINDOW = 240, 6, 3


def _targets(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random((CLIPS, CLASSES)) < 0.3
    y[0], y[1] = True, False  # every class has positives and negatives
    return y


def _scores(y, separation, seed):
    """[window, clips, classes] scores whose classes separate by `separation` (plus noise)."""
    rng = np.random.default_rng(seed)
    return np.stack([separation * y + rng.normal(size=y.shape) for _ in range(WINDOW)]).astype(np.float16)


def _trial(beta, y, scores, counts, lr=1e-3, seed=0) -> tuple[Trial, float, np.ndarray]:
    """(the trial, its smoothed d' at the pick, the same on each resample)."""
    full = float(np.mean([classification_metrics(y, s.astype(np.float32))["dprime"] for s in scores]))
    window = np.mean([resampled_dprime(y, s.astype(np.float32), counts) for s in scores], axis=0)
    return Trial("moore", beta, lr, seed), full, window


def _confidence(trials, n=300) -> dict:
    return confidence({t: f for t, f, _ in trials}, {t: s for t, _, s in trials}, n)


def _again(trial, **changes):
    """The same scores as another trial (its lr or seed changed)."""
    t, full, samples = trial
    return Trial(t.scheme, t.beta, changes.get("lr", t.lr), changes.get("seed", t.seed)), full, samples


B = {b: Arm("moore", b) for b in (0.0, 0.001, 0.5, 1.0)}
LABELS = {a: a.label(False) for a in B.values()}


def _verdict(conf, unsettled=(), unlearned=()):
    return verdict(conf, LABELS, list(unsettled), list(unlearned), CLIPS, 20_000)


def test_the_resampled_dprime_is_the_dprime_of_each_resample():
    y = _targets()
    (scores,) = _scores(y, 1.0, 0).astype(np.float32)[:1]
    counts = bootstrap_counts(CLIPS, 20, seed=1)
    got = resampled_dprime(y, scores, counts)
    for r in (0, 7, 19):
        rows = np.repeat(np.arange(CLIPS), counts[r])  # the resample as repeated clips
        assert got[r] == pytest.approx(classification_metrics(y[rows], scores[rows])["dprime"], abs=1e-9)


def test_the_resampled_pick_takes_bounded_memory():
    """2,000 clips x 100 classes, 200 resamples: scored all at once the work arrays would be
    [200, 100, 2000] int64 (320 MB each, several alive at once); a few resamples at a time they
    stay small."""
    import tracemalloc
    rng = np.random.default_rng(0)
    y = rng.random((2000, 100)) < 0.1
    window = (rng.random((1, 2000, 100)) + 0.5 * y).astype(np.float16)
    counts = bootstrap_counts(2000, 200, seed=0)
    tracemalloc.start()
    try:
        resampled_dprime(y, window[0], counts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100e6, f"{peak / 1e6:.0f} MB"


def test_identical_trials_are_never_resolved():
    """beta 0 and beta 0.001 stream the same clips (every M_j rounds to 1) from the same
    initialisation: the same scores. Every resample ties, so neither is best more than half the
    time, whatever the validation set."""
    for seed in range(3):
        y = _targets(seed)
        scores = _scores(y, 0.8, seed)
        counts = bootstrap_counts(CLIPS, 300, seed=seed)
        conf = _confidence([_trial(0.0, y, scores, counts), _trial(0.001, y, scores, counts)])
        assert conf["p_best"] == {B[0.0]: 0.5, B[0.001]: 0.5} and conf["margin"] == 0.0
        assert conf["selected"] == B[0.0] and conf["margin_ci95"] == (0.0, 0.0)
        v = _verdict(conf)
        assert not v.resolved and not v.provisional and v.word == "unresolved"
        assert v.text.startswith("beta=0 (p_best 0.50), beta=0.001 (p_best 0.50) are within noise")
        assert f"the split has {CLIPS}" in v.text


def test_a_clearly_better_trial_is_resolved():
    y = _targets()
    counts = bootstrap_counts(CLIPS, 300, seed=0)
    trials = [_trial(0.0, y, _scores(y, 0.5, 1), counts), _trial(0.5, y, _scores(y, 0.6, 2), counts),
              _trial(1.0, y, _scores(y, 2.0, 3), counts)]
    conf = _confidence(trials)
    assert conf["selected"] == B[1.0] and conf["runner_up"] == B[0.5] and conf["p_best"][B[1.0]] == 1.0
    lo, hi = conf["margin_ci95"]
    assert 0 < lo < conf["margin"] < hi
    v = _verdict(conf)
    assert v.resolved and not v.provisional and v.text.startswith("beta=1 is best (p_best 1.00, margin +")
    late = _verdict(conf, unsettled=[B[0.0]])
    assert not late.resolved and late.provisional and late.word == "provisional"
    assert late.text.startswith("NOT CONVERGED for beta=0, margin +") and "p_best is provisional" in late.text
    unlearned = _verdict(conf, unsettled=[B[0.0], B[0.5]], unlearned=[B[0.5]])
    assert unlearned.provisional and unlearned.text.startswith(
        "beta=0.5 did not learn within the cap (20,000 examples); NOT CONVERGED for beta=0, margin")
    nothing = _verdict(conf, unsettled=list(B.values()), unlearned=[B[0.0], B[0.5], B[1.0]])
    assert nothing.provisional and not nothing.resolved and nothing.text.startswith("no arm learned within the cap")


def test_learning_rates_and_seeds():
    """Per beta the best learning rate on the mean over seeds; two seeds that disagree widen the
    interval until a margin that one seed resolves is not resolved."""
    y = _targets()
    counts = bootstrap_counts(CLIPS, 300, seed=0)
    a = _trial(0.0, y, _scores(y, 1.0, 1), counts)
    better = _trial(1.0, y, _scores(y, 1.3, 2), counts)
    worse_lr = _again(_trial(1.0, y, _scores(y, 0.2, 3), counts), lr=1e-4)
    one = _confidence([a, better, worse_lr])
    assert one["selected"] == B[1.0] and one["margin"] == pytest.approx(better[1] - a[1])
    assert one["p_best"][B[1.0]] >= 0.95 and _verdict(one).resolved
    # a second seed of beta = 1 that came out much worse: the mean decides, and the seeds' spread
    second = _again(_trial(1.0, y, _scores(y, 0.7, 4), counts), seed=1)
    two = _confidence([a, _again(a, seed=1), better, second])
    assert two["seeds"] == 2 and two["margin"] == pytest.approx((better[1] + second[1]) / 2 - a[1])
    assert two["margin_ci95"][1] - two["margin_ci95"][0] > one["margin_ci95"][1] - one["margin_ci95"][0]
    assert not _verdict(two).resolved and "more replicate seeds" in _verdict(two).text
