"""sweep/history.py: a trial's state through its evaluations, stopping at the cap, and continued
to a higher cap exactly as if it had been started with it."""
import json

import numpy as np

from sweep.history import TrialState, evaluated, next_evaluation, reopened, summary_metrics
from sweep.select import StoppingRule
from sweep.trial import Trial

RULE = StoppingRule(3, 2, 2.0)
TRIAL = Trial("moore", 1.0, 1e-3, 0)


def _metrics(d: float) -> dict:
    return {"mAP": d / 4, "mAUC": 0.5 + d / 10, "dprime": d}


def _run(cap: int, every: int, batch: int, trace, state: TrialState | None = None, carry=()):
    """Replay the train loop's bookkeeping (sweep/train.py): a batch of `batch` examples per step,
    losses of 1 / step, an evaluation when one is due or at the cap; d' from `trace(examples)`."""
    state = state or TrialState(TRIAL, start=_metrics(0.0))
    losses, due = list(carry), next_evaluation(state.examples, every)
    while state.stopped is None:
        state = TrialState(**{**state.__dict__, "step": state.step + 1, "examples": state.examples + batch})
        losses.append(1.0 / state.step)
        if state.examples >= due or state.examples >= cap:
            state = evaluated(state, _metrics(trace(state.examples)), losses, RULE, cap, every, train_to_cap=False)
            losses, due = [], next_evaluation(state.examples, every)
    return state


def rising(examples: int) -> float:
    """Still rising at every cap used here: never settles."""
    return 0.5 + examples / 1000


def test_a_trial_continued_to_a_higher_cap_equals_one_run_to_it_at_once():
    """Cap A then 704 against 704 at once, with the old cap on the cadence (every 64, A = 320: an
    evaluation was due there anyway) and off it (every 100, A = 352: evaluations at 320 and 400,
    so the one at 352 only the cap called for): the same history, losses included, the same step
    and examples."""
    for every, cap, on_cadence in ((64, 320, True), (100, 352, False)):
        once = _run(704, every, 32, rising)
        first = _run(cap, every, 32, rising)
        assert first.stopped == "cap" and first.cap == cap and not first.finished(704) and first.finished(cap)
        assert (first.carry is None) == on_cadence
        state, carry = reopened(first, 704)
        assert state.stopped is None and state.cap is None and state.carry is None
        continued = _run(704, every, 32, rising, state, carry)
        assert continued.history == once.history and (continued.step, continued.examples) == (once.step, once.examples)
        assert continued.stopped == once.stopped == "cap"


def test_a_settled_trial_stays_settled():
    peaked = _run(10_000, 64, 32, lambda e: 1.0 + np.sin(np.pi * min(e, 640) / 640))
    assert peaked.stopped == "settled" and peaked.finished(20_000)
    assert reopened(peaked, 20_000) == (peaked, [])


def test_the_state_round_trips_through_json():
    state = _run(320, 100, 32, rising)
    back = TrialState.from_json({**json.loads(json.dumps(state.to_json())), "model": {"size": "tiny"}})
    assert back == state and back.trial == TRIAL and back.start_dprime == 0.0


def test_what_a_trial_reports():
    state = _run(640, 64, 32, lambda e: 0.05)  # at chance: not learned, so never settled
    summary = summary_metrics(state, RULE)
    assert summary["trial"] == TRIAL.key and summary["stopped"] == "cap" and summary["evals"] == 10
    assert summary["learned"] is False and summary["converged"] is False
