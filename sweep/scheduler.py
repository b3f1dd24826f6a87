"""The sweep's Tune scheduler and searcher.

`FairRacing` (a TrialScheduler): after every evaluation of any trial, sweep/racing.py's `race`
runs on the traces as they stand, and a trial it eliminates is stopped: at once by Tune when
trial drivers are not reused (or at its next evaluation when another trial's result decided
it); with reused drivers (`resources.reuse_actors`) the trial ends itself at its next
evaluation (sweep/train.py), since Tune would hand the next trial a driver whose training still
runs. Eliminations are recorded in `<train_runs>/racing.json` (the sweep's shared storage: local
or s3://), which is what makes them stick: a resumed or continued sweep, and a trial of an
eliminated arm or learning rate that has not started yet, read it (`eliminated`) and do not
train again. The traces come from the trials' checkpoints (state.json, and the d' per resample
of each evaluation), read once each.

`RefiningGrid` (a Searcher): yields the grid's trials in order and, each time all of them have
finished, adds the betas sweep/refine.py proposes; the betas added are recorded in
`<train_runs>/grid.json`, and `refined(cfg, train_runs)` is the config with them, so a resumed
sweep, its answer and its report see the whole grid. A new arm's learning rate that racing
eliminated in both neighbouring arms (sweep/refine.py `ruled_out`) is recorded as eliminated
before it starts (level "neighbours", examples 0): its trial ends at once, without training.
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Callable

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweep.checkpoint import checkpoint_dir, list_checkpoints, load_resampled, read_record, write_record
from sweep.config import Config
from sweep.racing import Elimination, RaceTrace, race
from sweep.refine import neighbours, refine, ruled_out
from sweep.trial import Arm, Trial

__all__ = ["RACING", "GRID", "FairRacing", "RefiningGrid", "eliminated", "is_eliminated", "record_eliminations",
           "refined"]

RACING, GRID = "racing.json", "grid.json"


def refined(cfg: Config, train_runs: str) -> Config:
    """The config with the betas refinement added to the grid (grid.json), in ascending order."""
    added = (read_record(train_runs, GRID) or {}).get("added", [])
    if not added:
        return cfg
    betas = sorted({*cfg.sweep.betas, *added})
    return replace(cfg, sweep=replace(cfg.sweep, betas=betas))


def eliminated(train_runs: str) -> dict[str, dict]:
    """The trials racing stopped, by trial key: {trial, scheme, beta, lr, seed, examples, p,
    level ("arm" | "lr" | "neighbours"), against}; empty when racing stopped none."""
    return {e["trial"]: e for e in (read_record(train_runs, RACING) or {}).get("eliminated", [])}


def is_eliminated(trial: Trial, record: dict[str, dict]) -> dict | None:
    """The elimination that covers `trial`: its own, or its setting's (the same arm and learning
    rate: a seed that had not started when the others were stopped); None if there is none."""
    if trial.key in record:
        return record[trial.key]
    return next((e for e in record.values() if (e["scheme"], e["beta"], e["lr"]) == (trial.scheme, trial.beta, trial.lr)),
                None)


def record_eliminations(train_runs: str, new: list[Elimination]) -> dict[str, dict]:
    """Add `new` eliminations to racing.json (written whole); returns the record."""
    record = eliminated(train_runs)
    for e in new:
        record.setdefault(e.trial.key, {"trial": e.trial.key, **asdict(e.trial), "examples": e.examples,
                                        "p": e.p, "level": e.level, "against": e.against})
    write_record(train_runs, RACING, {"eliminated": list(record.values())})
    return record


class _Traces:
    """Each trial's trace as racing sees it, read from its checkpoints; a checkpoint's files are
    read once (they do not change once Train registered them)."""

    def __init__(self, cfg: Config, train_runs: str):
        self.cfg, self.train_runs = cfg, train_runs
        self.resampled: dict[tuple[Trial, int], np.ndarray] = {}

    def trace(self, trial: Trial) -> RaceTrace | None:
        run_path = os.path.join(self.train_runs, trial.key)
        checkpoints = list_checkpoints(run_path)
        if not checkpoints:
            return None
        state = checkpoints[-1][1]
        examples = [int(e) for e in state.history["examples"]]
        rows = []
        for e in examples:
            if (trial, e) not in self.resampled:
                found = load_resampled(os.path.join(run_path, checkpoint_dir(e)))
                if found is None:
                    return None
                self.resampled[trial, e] = found
            rows.append(self.resampled[trial, e])
        return RaceTrace(trial, np.asarray(examples), np.asarray(state.history["val_dprime"]), np.stack(rows),
                         finished=state.finished(self.cfg.train.max_examples))


class FairRacing(FIFOScheduler):
    """Runs trials in submission order; stops those sweep/racing.py eliminates (see the module
    docstring); the trials Tune has created are judged (those not started yet have no trace)."""

    def __init__(self, cfg: Config, train_runs: str):
        super().__init__()
        self.cfg, self.train_runs = cfg, train_runs
        self.traces = _Traces(cfg, train_runs)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        me = Trial.from_tune(trial.config)
        record = eliminated(self.train_runs)
        if not is_eliminated(me, record):
            trials = {Trial.from_tune(t.config) for t in tune_controller.get_trials()}
            self.labels = {t.arm: t.arm.label(self.cfg.sweep.several_schemes) for t in trials}
            traces = [t for t in (self.traces.trace(x) for x in trials) if t is not None]
            gone = [e for e in race(traces, self.cfg.sweep.rule, self.cfg.train.max_examples, self.cfg.sweep.racing_p,
                                    self.labels) if e.trial.key not in record]
            if gone:
                record = record_eliminations(self.train_runs, gone)
        stop = is_eliminated(me, record) and not self.cfg.resources.reuse_actors
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"Fair racing: {len(eliminated(self.train_runs))} trial(s) eliminated."


class RefiningGrid(Searcher):
    """Tune searcher over the sweep's grid (see the module docstring). `standing(cfg)` tells where
    the sweep stands on its finished trials: (the selected arm, p_best per contender, resolved)."""

    def __init__(self, cfg: Config, train_runs: str, standing: Callable[[Config], tuple]):
        from sweep.tune import METRIC
        super().__init__(metric=METRIC, mode="max")
        self.cfg, self.train_runs, self.standing = refined(cfg, train_runs), train_runs, standing
        self.queue, self.live = list(self.cfg.sweep.trials), set()

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.queue and not self.live:
            self.queue = self._refine()
        if self.queue:
            self.live.add(trial_id)
            return self.queue.pop(0).tune_config
        return None if self.live else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.live.discard(trial_id)

    def _refine(self) -> list[Trial]:
        """The trials of the betas refinement adds now (recorded in grid.json), or none."""
        s = self.cfg.sweep
        if not s.beta_step:
            return []
        best, p_best, resolved = self.standing(self.cfg)
        new = refine(s.arms, best, p_best, resolved, s.beta_step, s.max_arms)
        if not new:
            return []
        added = sorted({*(read_record(self.train_runs, GRID) or {}).get("added", []), *(a.beta for a in new)})
        write_record(self.train_runs, GRID, {"added": added})
        before = set(s.trials)
        self.cfg = refined(self.cfg, self.train_runs)
        trials = [t for t in self.cfg.sweep.trials if t not in before]
        if gone := self._ruled_out(trials):
            record_eliminations(self.train_runs, gone)
        return trials

    def _ruled_out(self, trials: list[Trial]) -> list[Elimination]:
        """The eliminations before they start of the new `trials` whose learning rate racing
        eliminated as not its arm's best in both neighbouring arms."""
        out: dict[Arm, dict[float, float]] = {}
        for e in eliminated(self.train_runs).values():
            if e["level"] in ("lr", "neighbours"):
                out.setdefault(Arm(e["scheme"], e["beta"]), {})[e["lr"]] = e["p"]
        several, arms, gone = self.cfg.sweep.several_schemes, self.cfg.sweep.arms, []
        for t in trials:
            p = ruled_out(t.arm, arms, out).get(t.lr)
            if p is not None:
                against = " and ".join(a.label(several) for a in neighbours(t.arm, arms))
                gone.append(Elimination(t, 0, p, "neighbours", against))
        return gone
