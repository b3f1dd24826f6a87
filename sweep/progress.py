"""The progress table while the sweep runs: a Tune callback (Tune's own tables are off,
`verbose=0`; `--verbose` brings them back) that prints sweep/console.py's table every `every_s`
seconds and whenever a trial ends, from Tune's trial states."""
from __future__ import annotations

import time
from types import SimpleNamespace

from ray.tune import Callback

from sweep.config import Config, trial_point
from sweep.console import eta_seconds, format_progress, trial_short_name

__all__ = ["SweepProgress"]


class SweepProgress(Callback):
    """Prints the sweep's progress table (see the module docstring) from Tune's trial states."""

    def __init__(self, cfg: Config, grid: list[tuple[str, float, float, int]], concurrency: int,
                 every_s: float = 30.0):
        """grid: every (scheme, beta, lr, seed) of the sweep (Tune creates trials as it starts them)."""
        self.cfg, self.grid, self.concurrency, self.every_s = cfg, grid, concurrency, every_s
        self.max_examples = cfg.train.max_examples
        self.started = time.time()
        self.last_print = 0.0
        self.first: dict[str, tuple[float, float]] = {}  # trial id -> (time_total_s, examples) at its first result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.first:
            self.first[trial.trial_id] = (result.get("time_total_s", 0.0), result.get("examples", 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, {trial.trial_id: "TERMINATED"})  # Tune sets the status after the callbacks

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, {trial.trial_id: "ERROR"})

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
        by_point = {trial_point(t.config): t for t in trials}
        order = {p: i for i, p in enumerate(self.grid)}
        for point in sorted(set(self.grid) | by_point.keys(), key=lambda p: (order.get(p, len(order)), p)):
            scheme, beta, lr, seed = point
            t = by_point.get(point, SimpleNamespace(status="PENDING", last_result=None))
            r, state = t.last_result or {}, (ended or {}).get(getattr(t, "trial_id", None), t.status)
            status = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused",
                      "ERROR": "failed"}.get(state)
            if status is None:  # TERMINATED: stopped by its own rule, at the cap, or by a scheduler
                status = {"settled": "settled", "cap": "settled" if r.get("converged") else "NOT CONVERGED"
                          }.get(r.get("stopped"), "stopped")
            row = {"trial": trial_short_name(self.cfg, scheme, beta, seed), "lr": lr, "status": status}
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
        print(format_progress(rows, time.time() - self.started, eta), flush=True)
