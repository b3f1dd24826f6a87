"""The progress table while the sweep runs: a Tune callback (Tune's own tables are off,
`verbose=0`; `--verbose` brings them back) that prints sweep/console.py's table every `every_s`
seconds and whenever a trial ends, from Tune's trial states. When the output is not a terminal
(a log file, a CI job) it is a log: the table's first line and only the rows that changed since
the last print, nothing when nothing did."""
from __future__ import annotations

import sys
import time
from types import SimpleNamespace

from ray.tune import Callback

from sweep.config import Config
from sweep.console import eta_seconds, format_progress
from sweep.scheduler import eliminated, is_eliminated
from sweep.trial import Trial

__all__ = ["SweepProgress"]


class SweepProgress(Callback):
    """Prints the sweep's progress table (see the module docstring) from Tune's trial states."""

    def __init__(self, cfg: Config, grid: list[Trial], concurrency: int, every_s: float = 30.0,
                 log: bool | None = None, train_runs: str | None = None):
        """grid: every trial of the sweep, in order (Tune creates trials as it starts them); log:
        print as to a log (only what changed), or the whole table (None: a log unless stdout is a
        terminal); train_runs: where racing records the trials it stopped."""
        self.cfg, self.grid, self.concurrency, self.every_s = cfg, grid, concurrency, every_s
        self.train_runs = train_runs
        self.log = log
        self.max_examples = cfg.train.max_examples
        self.started = time.time()
        self.last_print = 0.0
        self.first: dict[str, tuple[float, float]] = {}  # trial id -> (time_total_s, examples) at its first result
        self.printed: list[str] = []  # the rows of the last table printed

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.first:
            self.first[trial.trial_id] = (result.get("time_total_s", 0.0), result.get("examples", 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, {trial.trial_id: "TERMINATED"})  # Tune sets the status after the callbacks

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, {trial.trial_id: "ERROR"})
        name = Trial.from_tune(trial.config).name(self.cfg.sweep.several_schemes, self.cfg.sweep.several_seeds)
        print(f"trial {name} failed: {_last_line(trial)}", file=sys.stderr, flush=True)  # named as in MLflow

    def on_step_end(self, iteration, trials, **info):
        if time.time() - self.last_print >= self.every_s:
            self._print(trials)

    def _rate(self, trials) -> float | None:
        """Mean examples/s per trial after its first evaluation (start-up excluded)."""
        rates = []
        for t in trials:
            r, first = t.last_result or {}, self.first.get(t.trial_id)
            if first and r.get("time_total_s", 0) > first[0]:
                rates.append((r["examples"] - first[1]) / (r["time_total_s"] - first[0]))
        return sum(rates) / len(rates) if rates else None

    def _print(self, trials, ended: dict[str, str] | None = None) -> None:
        self.last_print = time.time()
        rows, remaining, pending = [], [], 0
        by_trial = {Trial.from_tune(t.config): t for t in trials}
        record = eliminated(self.train_runs) if self.train_runs else {}
        order = {p: i for i, p in enumerate(self.grid)}
        for trial in sorted(set(self.grid) | by_trial.keys(), key=lambda p: (order.get(p, len(order)), p.key)):
            t = by_trial.get(trial, SimpleNamespace(status="PENDING", last_result=None))
            r, state = t.last_result or {}, (ended or {}).get(getattr(t, "trial_id", None), t.status)
            name = trial.arm.label(self.cfg.sweep.several_schemes) + (f" s{trial.seed}" if self.cfg.sweep.several_seeds else "")
            out = is_eliminated(trial, record)
            status = f"eliminated p={out['p']:.3f}" if out else _status(state, r)
            row = {"trial": name, "lr": trial.lr, "status": status}
            if "examples" in r:
                row.update(examples=int(r["examples"]), dprime=r.get("val_dprime"), smoothed=r.get("val_dprime_smoothed"),
                           pick=r.get("val_dprime_pick"), pick_examples=int(r.get("examples_to_pick") or 0))
            rows.append(row)
            if state == "PENDING":
                pending += 1
                remaining.append(self.max_examples)
            elif state == "RUNNING":
                remaining.append(max(0, self.max_examples - int(r.get("examples", 0))))
        # a trial's start-up: the seconds to its first result
        startup = sum(t for t, _ in self.first.values()) / len(self.first) if self.first else 30.0
        eta = eta_seconds(remaining, self._rate(trials), pending, startup, self.concurrency)
        table = format_progress(rows, time.time() - self.started, eta).splitlines()
        if self.log if self.log is not None else not sys.stdout.isatty():  # a log: only what changed
            changed = [line for line in table[2:2 + len(rows)] if line not in self.printed]
            self.printed = table[2:2 + len(rows)]
            if not changed:
                return
            table = table[:2] + changed
        print("\n".join(table), flush=True)


def _last_line(trial) -> str:
    """The last line of a failed trial's error as Tune recorded it (the exception; Tune's own
    traceback print is off, sweep/environment.py), or why it cannot be read."""
    try:
        text = trial.get_error() or ""
    except Exception as e:  # noqa: BLE001 - e.g. the error file cut short by a full disk
        return f"(its error file cannot be read: {type(e).__name__}: {e})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no error recorded)"


def _status(state: str, result: dict) -> str:
    """A trial's status on the table from Tune's state and its last result: running, pending,
    paused, failed; once terminated, settled, NOT CONVERGED or did not learn (at the cap), or
    stopped (by a scheduler)."""
    status = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "ERROR": "failed"}.get(state)
    if status is not None:
        return status
    if result.get("stopped") == "settled" or (result.get("stopped") == "cap" and result.get("converged")):
        return "settled"
    if result.get("stopped") == "cap":
        return "NOT CONVERGED" if result.get("learned") else "did not learn"
    return "stopped"
