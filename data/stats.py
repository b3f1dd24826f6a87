"""Imbalance statistics of a partition: the paper's Tables 1 and 2 for any data.

    python -m data.stats --segments balanced_train_segments.csv unbalanced_train_segments.csv.gz \\
        --class-index class_labels_indices.csv
    python -m data.stats --store runs/synth --split train --betas 0 0.5 1 --json

Several segment files are read as one partition (balanced + unbalanced = "published train").
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from data.balance import as_multilabels, class_counts, gini, imbalance_ratio, oversampled_stats
from data.cli import add_list, add_store, parser, run

__all__ = ["PAPER_BETAS", "imbalance_row", "oversampled_rows", "partition_stats", "format_table", "main"]

PAPER_BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def imbalance_row(counts: np.ndarray, clips: int) -> dict:
    """Table 1 row of a partition of `clips` clips with class counts N_k [classes]: clips,
    classes_present, imbalance_ratio and gini over the classes with clips."""
    counts = np.asarray(counts)
    present = counts[counts > 0]
    return {"clips": int(clips), "classes_present": int(present.size),
            "imbalance_ratio": imbalance_ratio(present), "gini": gini(present)}


def oversampled_rows(labels, n_classes: int, betas=PAPER_BETAS) -> list[dict]:
    """Table 2: the oversampled set of `labels` (own priors) per beta, `oversampled_stats` rows."""
    ml = as_multilabels(labels)
    return [oversampled_stats(ml, b, n_classes) for b in betas]


def partition_stats(labels, n_classes: int, betas=PAPER_BETAS) -> dict:
    """Table 1 row (clips, ratio, Gini) and Table 2 rows (one per beta) for one partition;
    classes with no clips are listed in empty_classes, not warned about."""
    ml = as_multilabels(labels)
    counts = class_counts(ml, n_classes)
    return {**imbalance_row(counts, len(ml)), "classes": n_classes,
            "labels_per_clip": float(ml.lengths.mean()) if len(ml) else 0.0,
            "empty_classes": np.flatnonzero(counts == 0).tolist(),
            "oversampled": oversampled_rows(ml, n_classes, betas)}


def format_table(name: str, s: dict) -> str:
    """The paper's Table 1 (one row) and Table 2 layout as plain text."""
    lines = [f"{name}: {s['clips']:,} clips, {s['classes']} classes, "
             f"{s['labels_per_clip']:.2f} labels per clip",
             f"  imbalance ratio {s['imbalance_ratio']:,.1f}   Gini {s['gini']:.3f}"]
    if s["empty_classes"]:
        lines.append(f"  classes with no clips (excluded): {s['empty_classes']}")
    lines.append(f"  {'beta':>5} {'ratio':>10} {'Gini':>6} {'epoch length':>14} {'max repeat':>11}")
    for r in s["oversampled"]:
        lines.append(f"  {r['beta']:5.2f} {r['imbalance_ratio']:10,.1f} {r['gini']:6.3f} "
                     f"{r['epoch_length']:14,d} {r['max_repeat']:11,d}")
    return "\n".join(lines)


def _beta(text: str) -> float:
    """argparse type: one oversampling exponent, a finite number >= 0."""
    try:
        beta = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (betas are separated by spaces: 0 0.5 1)") from None
    if not np.isfinite(beta) or beta < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return beta


def main(argv=None) -> int:
    p = parser(prog="python -m data.stats", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    add_list(src, "--segments", metavar="CSV", help="AudioSet segment CSV(s), .gz ok")
    add_store(src, "a spectrogram store (see data/store.py)", required=False)
    p.add_argument("--class-index", metavar="CSV", help="class_labels_indices.csv (with --segments)")
    p.add_argument("--split", default="train", help="split of --store (default: train)")
    add_list(p, "--betas", type=_beta, default=PAPER_BETAS, metavar="BETA",
             help="oversampling exponents, e.g. --betas 0 0.5 1 (default: the paper's 7)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return run(lambda a: _main(p, a), p, argv)


def _main(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if a.segments:
        if not a.class_index:
            p.error("--segments needs --class-index")
        from data.labels import read_class_index, read_segments
        ci = read_class_index(a.class_index)
        labels, n_classes, name = read_segments(a.segments, ci).labels, len(ci), " + ".join(a.segments)
    else:
        from data.store import open_store
        store = open_store(a.store)
        labels, n_classes, name = store.labels(a.split), store.n_classes, f"{a.store} [{a.split}]"
    t1 = time.perf_counter()
    stats = partition_stats(labels, n_classes, a.betas)
    stats["seconds"] = {"read": round(t1 - t0, 3), "stats": round(time.perf_counter() - t1, 3)}
    print(json.dumps(stats, indent=1) if a.json else format_table(name, stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
