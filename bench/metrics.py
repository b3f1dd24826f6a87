"""The evaluation metrics and the bootstrap at the sizes a sweep meets them.

    python bench/metrics.py

Prints JSON: seconds for `classification_metrics` on AudioSet's evaluation size (20,000 clips
x 527 classes), for `paired_bootstrap` (1,000 resamples of 2,000 clips x 50 classes) and for
the bootstrap each evaluation of a trial adds at AudioSet's validation size
(`resampled_dprime`: 1,836 clips x 527 classes, 1,000 resamples; what racing and the
selection's confidence average over a pick's window), the first two the median of 3 runs, the
last one run (with its peak memory, tracemalloc); sklearn's per-class AP + AUC loop on the same
data is the baseline of the first.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.bootstrap import bootstrap_counts, paired_bootstrap  # noqa: E402
from sweep.confidence import resampled_dprime  # noqa: E402
from sweep.metrics import classification_metrics  # noqa: E402


def _median_seconds(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> int:
    rng = np.random.default_rng(0)
    y = rng.random((20_000, 527)) < np.geomspace(0.3, 5e-4, 527)
    y[:2] = [[True], [False]]  # every class has positives and negatives
    s = (rng.random((20_000, 527)) + 0.5 * y).astype(np.float32)
    ours = _median_seconds(lambda: classification_metrics(y, s))
    sk = _median_seconds(lambda: [(average_precision_score(y[:, k], s[:, k]), roc_auc_score(y[:, k], s[:, k]))
                                  for k in range(527)], runs=1)
    yb = rng.random((2000, 50)) < 0.2
    a, b = rng.random((2000, 50)) + 0.4 * yb, rng.random((2000, 50)) + 0.6 * yb
    boot = _median_seconds(lambda: paired_bootstrap(yb, a, b, "dprime"))
    yv = y[:1836]
    scores = (rng.random(yv.shape) + 0.5 * yv).astype(np.float32)
    tracemalloc.start()
    pick = _median_seconds(lambda: resampled_dprime(yv, scores, bootstrap_counts(1836, 1000, seed=0)), runs=1)
    pick_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"classification_metrics_20000x527_s": ours, "sklearn_per_class_loop_s": sk,
                      "ratio_vs_sklearn": round(ours / sk, 3),
                      "paired_bootstrap_1000x2000x50_s": boot,
                      "bootstrap_per_evaluation_1836x527x1000_s": pick,
                      "bootstrap_per_evaluation_peak_MiB": round(pick_peak / 2**20, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
