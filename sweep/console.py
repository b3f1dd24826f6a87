"""What `python -m sweep.run` shows while the sweep runs: a Tune callback that prints, every
`every_s` seconds and whenever a trial ends, one 80-column table of the grid - beta, lr,
examples seen, validation d' (raw and smoothed), the current pick and the status of each
trial, the best pick so far marked - with the elapsed time and an ETA bound: the time left if
every unfinished trial trains to the cap at the rate seen so far (trials whose pick settles
stop earlier). Tune's own tables are off (`verbose=0`); `--verbose` brings them back.
"""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

from ray.tune import Callback

__all__ = ["SweepProgress", "eta_seconds", "format_progress"]


def eta_seconds(remaining: list[float], rate: float | None, pending: int, startup_s: float,
                concurrency: int) -> float | None:
    """Upper bound on the seconds left: `remaining` examples of the started trials and `pending`
    trials still to start (each a start-up plus the cap, in `remaining` too), at `rate`
    examples/s per trial, `concurrency` trials at a time. None before any rate is known."""
    if rate is None or rate <= 0:
        return None
    return (sum(remaining) / rate + pending * startup_s) / max(1, concurrency)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def format_progress(rows: list[dict], elapsed_s: float, eta_s: float | None) -> str:
    """The progress table. rows: beta, lr, status, and when known examples, dprime, smoothed,
    pick (smoothed d' at the pick), pick_examples; the best pick is marked with '*'."""
    done = sum(r["status"] not in ("running", "pending", "paused") for r in rows)
    eta = "ETA after the first evaluation" if eta_s is None else "ETA < 1 min" if eta_s < 60 else \
        f"ETA <= {math.ceil(eta_s / 60)} min (less if picks settle)"
    header = ("beta", "lr", "examples", "val d'", "smoothed", "pick (examples)")
    lines = [f"{_clock(elapsed_s)} elapsed, {done}/{len(rows)} trials done, {eta}",
             "{:>5} {:>7} {:>11} {:>7} {:>8} {:>19}  status".format(*header)]
    picks = [r["pick"] for r in rows if r.get("pick") is not None and math.isfinite(r["pick"])]
    best = max(picks) if picks else None

    def num(value, fmt):
        return "-" if value is None or not math.isfinite(value) else format(value, fmt)

    for r in rows:
        pick = "-" if r.get("pick") is None or not math.isfinite(r["pick"]) else \
            f"{r['pick']:.3f} ({r['pick_examples']:,})"
        mark = "*" if best is not None and r.get("pick") == best else " "
        examples = "-" if r.get("examples") is None else f"{r['examples']:,}"
        lines.append(f"{r['beta']:>5g} {r['lr']:>7g} {examples:>11} {num(r.get('dprime'), '.3f'):>7} "
                     f"{num(r.get('smoothed'), '.3f'):>8} {pick:>19}{mark} {r['status']}")
    return "\n".join(lines)


class SweepProgress(Callback):
    """Prints the sweep's progress table (see the module docstring) from Tune's trial states."""

    def __init__(self, grid: list[tuple[float, float]], max_examples: int, concurrency: int, every_s: float = 30.0):
        """grid: every (beta, lr) of the sweep (Tune creates trials as it starts them)."""
        self.grid, self.max_examples, self.concurrency, self.every_s = grid, max_examples, concurrency, every_s
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
        by_point = {(float(t.config["beta"]), float(t.config["lr"])): t for t in trials}
        for point in sorted(set(self.grid) | by_point.keys()):
            t = by_point.get(point, SimpleNamespace(config={"beta": point[0], "lr": point[1]},
                                                    status="PENDING", last_result=None))
            r, state = t.last_result or {}, (ended or {}).get(getattr(t, "trial_id", None), t.status)
            status = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused",
                      "ERROR": "failed"}.get(state)
            if status is None:  # TERMINATED: stopped by its own rule, at the cap, or by a scheduler
                status = {"settled": "settled", "cap": "settled" if r.get("converged") else "NOT CONVERGED"
                          }.get(r.get("stopped"), "stopped")
            row = {"beta": float(t.config["beta"]), "lr": float(t.config["lr"]), "status": status}
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
