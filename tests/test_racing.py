"""sweep/racing.py on constructed sweeps: two identical arms are never eliminated against each
other, a slow arm that overtakes late (a plateau, then a rise) is not eliminated, an arm worse by
construction is, and nothing is judged before it has trained twice as long as the leader needed;
and racing in a sweep on a local Ray (sweep/scheduler.py), end to end."""
import csv
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import children, smoke_args

from sweep.racing import RaceTrace, headroom, race
from sweep.run import main
from sweep.select import StoppingRule
from sweep.trial import Arm, Trial

RULE = StoppingRule(7, 5, 2.0)
EVERY, R = 1000, 400
CAP = 200 * EVERY
LABELS = {Arm("moore", b): f"beta={b:g}" for b in (0.0, 0.5, 1.0)}


def _trace(beta: float, curve, evals: int, lr: float = 1e-3, seed: int = 0, sigma: float = 0.02,
           resample_sd: float = 0.03, shared: np.ndarray | None = None, finished: bool = False,
           every: int = EVERY) -> RaceTrace:
    """A trace of `evals` evaluations, one every `every` examples, of the true curve(examples) plus
    noise; each evaluation's d' on R resamples of the validation clips, paired with every other
    trace through `shared` (the resamples' common part)."""
    rng = np.random.default_rng([int(beta * 100), int(lr * 1e6), seed])
    x = every * np.arange(1, evals + 1)
    d = curve(x) + rng.normal(0, sigma, evals)
    shared = np.zeros(R) if shared is None else shared
    resampled = d[:, None] + resample_sd * (0.8 * shared[None, :] + 0.6 * rng.normal(size=(1, R)))
    return RaceTrace(Trial("moore", beta, lr, seed), x, d, resampled, finished)


def _peak(at: float, height: float):
    """Rises to `height` at `at` examples, then falls slowly."""
    return lambda x: height * (x / at) * np.exp(1 - x / at)


def test_two_identical_arms_are_never_eliminated_against_each_other():
    shared = np.random.default_rng(0).normal(size=R)
    same = _trace(0.5, _peak(20_000, 2.0), 100, shared=shared)
    twin = RaceTrace(Trial("moore", 1.0, 1e-3, 0), same.examples, same.dprime, same.resampled)
    assert race([same, twin], RULE, CAP, 0.01, LABELS) == []


def test_an_arm_worse_by_construction_is_eliminated_once_it_has_trained_twice_the_leaders_pick():
    shared = np.random.default_rng(1).normal(size=R)
    leader = _trace(1.0, _peak(20_000, 2.0), 100, shared=shared)           # pick at ~20k
    worse = _trace(0.0, _peak(20_000, 1.5), 30, shared=shared)             # as fast, 0.5 d' lower
    assert race([leader, worse], RULE, CAP, 0.01, LABELS) == []            # 30k < 2 x 20k: not judged yet
    worse = _trace(0.0, _peak(20_000, 1.5), 60, shared=shared)
    (gone,) = race([leader, worse], RULE, CAP, 0.01, LABELS)
    assert gone.trial == worse.trial and gone.level == "arm" and gone.against == "beta=1" and gone.p < 0.01
    assert gone.examples == 60_000


def test_a_slow_arm_still_rising_is_not_eliminated():
    """The slow arm is below the leader when judged, but rose fast over its last doubling: where
    it can still go by the cap reaches the leader."""
    shared = np.random.default_rng(2).normal(size=R)
    leader = _trace(1.0, _peak(20_000, 2.0), 100, shared=shared)
    slow = _trace(0.0, _peak(104_000, 2.3), 45, shared=shared)             # at 45k: still climbing
    assert headroom(slow.examples, slow.dprime, RULE, CAP) > 0.5
    assert race([leader, slow], RULE, CAP, 0.01, LABELS) == []


def test_a_slow_arm_that_overtakes_after_a_plateau_is_not_eliminated():
    """The paper's speeds: the leader peaks at 33k examples, the slow arm at 104k after a plateau
    from 30% to 55% of that (31k to 57k), then overtakes (cap 240k, an evaluation every 3k). It is
    judged only from twice the leader's pick on (66k), when its second rise is under way, and
    never eliminated, at any point of its trace."""
    shared = np.random.default_rng(3).normal(size=R)
    every, cap = 3000, 240_000
    leader = _trace(1.0, _peak(33_000, 2.0), 80, shared=shared, every=every, finished=True)

    def plateau_rise(e):
        t = e / 104_000
        first = 1.4 * np.sqrt(np.minimum(t / 0.3, 1.0))
        b = np.clip((t - 0.55) / 0.45, 0.0, 1.0)
        return first + 0.9 * (1 - (1 - b) ** 2)
    for evals in range(10, 81, 2):
        slow = _trace(0.0, plateau_rise, evals, shared=shared, every=every)
        assert race([leader, slow], RULE, cap, 0.01, LABELS) == [], evals


def test_a_learning_rate_worse_by_construction_is_stopped_within_its_arm():
    shared = np.random.default_rng(4).normal(size=R)
    good = _trace(1.0, _peak(20_000, 2.0), 60, lr=1e-3, shared=shared)
    bad = _trace(1.0, _peak(20_000, 1.0), 60, lr=1e-2, shared=shared)
    (gone,) = race([good, bad], RULE, CAP, 0.01, LABELS)
    assert gone.trial == bad.trial and gone.level == "lr" and gone.against == "lr=0.001"


def test_a_finished_trial_is_judged_but_not_stopped_again():
    shared = np.random.default_rng(5).normal(size=R)
    leader = _trace(1.0, _peak(20_000, 2.0), 100, shared=shared)
    worse = _trace(0.0, _peak(20_000, 1.5), 60, shared=shared, finished=True)
    assert race([leader, worse], RULE, CAP, 0.01, LABELS) == []


@pytest.mark.end_to_end
def test_racing_stops_a_learning_rate_that_cannot_win(ray_local, smoke_store, tmp_path, monkeypatch):
    """The smoke sweep at beta 1 with two seeds, one trial at a time, and a learning rate too
    small to learn (1e-6): racing stops its first seed before the cap (once it has seen 1.5, the
    settle ratio, times the examples of the good rate's pick); its second seed never starts. Both
    are labelled in MLflow, neither is selected or failed, and the compute saved is reported. The
    second seed runs in the first one's driver process (resources.reuse_actors: the stopped
    trial ended its own training, so Tune could hand its driver the next trial) and ends at once
    with a result Tune accepts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = smoke_args(tmp_path, smoke_store, "sweep.betas=[1.0]", "sweep.lrs=[0.001, 0.000001]", "sweep.seeds=[0, 1]",
                      "train.max_examples=1600", "sweep.settle_ratio=1.5", "resources.max_concurrent_trials=1",
                      f"run.ray_address={ray_local.get_runtime_context().gcs_address}")
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    (gone,) = results["eliminated"]
    assert (gone["lr"], gone["seed"], gone["level"], gone["against"]) == (1e-6, 0, "lr", "lr=0.001") and gone["p"] < 0.01
    (row,) = results["rows"]
    assert row["lr"] == 1e-3 and row["status"] != "eliminated" and not results["failed"]
    traces = {(t["lr"], t["seed"]): t for t in results["traces"]}
    assert (1e-6, 1) not in traces  # never started
    assert min(traces[1e-3, s]["examples"][0] for s in (0, 1)) * 1.5 <= gone["examples"] < 1600
    assert traces[1e-6, 0]["eliminated"]["examples"] == gone["examples"] in traces[1e-6, 0]["examples"]
    assert traces[1e-6, 0]["examples"][-1] < 1600  # stopped before the cap
    pids = {}  # Tune's trial directories: ..._beta=1.0000,scheme=moore,lr=0.0000,seed=1_<date>
    for path in (run / "ray").glob("*/trial_driver_*/progress.csv"):
        lr, seed = path.parent.name.split("lr=")[1].split(",seed=")
        pids[lr, seed[0]] = {row["pid"] for row in csv.DictReader(path.read_text().splitlines())}
    assert len(pids) == 4 and pids["0.0000", "0"] == pids["0.0000", "1"]  # the stopped trial's driver ran the next
    assert results["compute"]["examples"] < results["compute"]["without_racing_at_least"]
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    _, trials = children(client, run)
    tags = {(float(c.data.params["lr"]), int(c.data.params["seed"])): (c.info.status, c.data.tags) for c in trials}
    for seed in (0, 1):
        assert tags[1e-6, seed][0] == "FINISHED" and tags[1e-6, seed][1]["eliminated"] == "true"
        assert "eliminated" not in tags[1e-3, seed][1]
