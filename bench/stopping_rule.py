"""The stopping rule on simulated validation traces: d' lost against training to a large cap,
and the compute it saves, for fast (balanced-like) and slow (unbalanced-like) trials.

    python bench/stopping_rule.py                  # JSON, a row per shape x speed x noise x rule
    python bench/stopping_rule.py --reps 200

A trace is a true validation curve d(t) = 0.30 * shape(t / t_peak) plus iid noise sigma on every
raw evaluation, evaluated every 3,072,000 examples (the paper's cadence) up to a cap of 4x the
slow trial's peak; d = 0 is chance, and the trial's d' before training (its start) is measured
once, with the same noise. Fast trials peak after 11 evaluations (33.8M examples, the paper's
balanced model), slow ones after 34 (104M, its unbalanced one). Shapes: a peak, a broad peak, a
plateau then a second rise, late starters (at chance for 10%, 40% or 50% of the time to their
peak, then the peak's rise), and a trial that never learns. Each trace is replayed through the
project's own `sweep.select.settled`, one evaluation at a time, until the rule stops it; the
loss is the true d' at the pick of the whole trace (training to the cap) minus the true d' at
the pick where the rule stopped; compute is the share of the cap's evaluations the rule ran;
`settled` is the share of traces the rule stopped before the cap (for a trace that never
learns it must be 0: such a trial trains to the cap and is reported as not having learned).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.select import StoppingRule, pick, settled  # noqa: E402

EVERY = 3_072_000           # examples between evaluations
GAIN = 0.30                 # d' from the start to the peak
SPEEDS = {"fast": 11, "slow": 34}   # evaluations to the true peak
CAP_EVALS = 4 * SPEEDS["slow"]


def _peak(x: np.ndarray) -> np.ndarray:
    """Rises to 1 at x = 1, then falls (overfitting): x e^(1 - x)."""
    return x * np.exp(1 - x)


def _broad(x: np.ndarray) -> np.ndarray:
    """The same peak, half as curved at the top: sqrt(x e^(1 - x))."""
    return np.sqrt(_peak(x))


def _plateau_rise(x: np.ndarray) -> np.ndarray:
    """Up to 0.6 by x = 0.3, flat until x = 0.55, a second rise to 1 at x = 1, then a slow fall:
    a trial that looks settled on its plateau."""
    first = 0.6 * np.sqrt(np.minimum(x / 0.3, 1.0))
    b = np.clip((x - 0.55) / 0.45, 0.0, None)
    second = np.where(b <= 1, 1 - (1 - np.minimum(b, 1.0)) ** 2, 1 - 0.1 * (b - 1))
    return first + 0.4 * second


def _late(onset: float):
    """At chance until x = onset, then the peak's rise and fall, squeezed into the time left
    before x = 1: a trial that starts learning late."""
    def shape(x: np.ndarray) -> np.ndarray:
        return np.where(x <= onset, 0.0, _peak(np.clip(x - onset, 0.0, None) / (1 - onset)))
    return shape


def _never(x: np.ndarray) -> np.ndarray:
    """At chance throughout."""
    return np.zeros_like(x, dtype=float)


SHAPES = {"peak": _peak, "broad": _broad, "plateau_rise": _plateau_rise, "late_10": _late(0.1),
          "late_40": _late(0.4), "late_50": _late(0.5), "never": _never}


def true_curve(shape: str, peak_evals: int, n_evals: int = CAP_EVALS) -> tuple[np.ndarray, np.ndarray]:
    """(examples [n_evals], true d' [n_evals]) of a trial peaking after `peak_evals` evaluations."""
    examples = np.arange(1, n_evals + 1) * EVERY
    return examples, GAIN * SHAPES[shape](np.arange(1, n_evals + 1) / peak_evals)


def stop_at(values: np.ndarray, examples: np.ndarray, rule: StoppingRule, start: float | None = None) -> int:
    """The evaluations a trial runs under `rule`: the first n at which its first n evaluations are
    settled (the trial stops there), or all of them (the cap)."""
    for n in range(1, len(values) + 1):
        if settled(values[:n], examples[:n], rule, start):
            return n
    return len(values)


def simulate(shape: str, peak_evals: int, sigma: float, rule: StoppingRule, reps: int = 400,
             seed: int = 0) -> dict:
    """`reps` noisy traces of one true curve through `rule`: the true d' lost against training to
    the cap (mean, 90th percentile), the share of traces whose pick came before 80% of the true
    peak's examples, the share the rule stopped before the cap (`settled`), and the mean share of
    the cap's evaluations trained."""
    examples, true = true_curve(shape, peak_evals)
    rng = np.random.default_rng(seed)
    lost, early, compute, stopped = [], [], [], []
    for _ in range(reps):
        d = true + rng.normal(0.0, sigma, true.size)
        n = stop_at(d, examples, rule, start=float(rng.normal(0.0, sigma)))  # d' before training, measured
        i_rule, i_cap = pick(d[:n], rule.window), pick(d, rule.window)
        lost.append(true[i_cap] - true[i_rule])
        early.append(i_rule + 1 < 0.8 * int(np.argmax(true) + 1))
        compute.append(n / true.size)
        stopped.append(n < true.size)
    lost = np.asarray(lost)
    return {"loss_mean": float(lost.mean()), "loss_p90": float(np.percentile(lost, 90)),
            "picked_early": float(np.mean(early)), "settled": float(np.mean(stopped)),
            "compute": float(np.mean(compute))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/stopping_rule.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=400, help="noisy traces per row (default 400)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    a = p.parse_args(argv)
    rules = {"patience only (ratio 1)": StoppingRule(7, 5, 1.0),
             "ratio 2, no learned guard": StoppingRule(7, 5, 2.0, chance=-np.inf, learn_z=0.0),
             "ratio 2 (default)": StoppingRule(7, 5, 2.0)}
    rows = [{"shape": shape, "speed": speed, "peak_examples": peak * EVERY, "sigma": sigma, "rule": name,
             **{k: round(v, 4) for k, v in simulate(shape, peak, sigma, rule, a.reps).items()}}
            for shape in a.shapes for speed, peak in SPEEDS.items() for sigma in a.sigmas
            for name, rule in rules.items()]
    print(json.dumps({"every_examples": EVERY, "cap_examples": CAP_EVALS * EVERY, "gain": GAIN,
                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
