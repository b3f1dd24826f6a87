"""Imbalance statistics of a partition: the paper's Tables 1 and 2 for any data.

    python -m data.stats --segments balanced_train_segments.csv unbalanced_train_segments.csv.gz \\
        --class-index class_labels_indices.csv
    python -m data.stats --store runs/synth --split train --betas 0 0.5 1 --json
    python -m data.stats --store runs/synth --split valid --per-class     # + clips per class
    python -m data.stats --store runs/synth --scheme moore psla passt     # Table 2 per scheme
    python -m data.stats --store runs/synth --recipe moore ast passt@500 --betas 1 --json

Several segment files are read as one partition (balanced + unbalanced = "published train").
`--recipe` adds, per recipe and beta, what an epoch exposes in expectation (data/draws.py): its
length E, the expected draws of each class's clips (`exposure`, in class-index order), their
Gini and imbalance ratio, and the largest expected draws of one clip (`max_clip_exposure`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from data.balance import (RECIPES, SCHEMES, as_multilabels, class_counts, gini, imbalance_ratio, oversampled_stats,
                          recipe)
from data.cli import add_list, add_store, parser, run
from data.draws import epoch_draw, exposure_stats

__all__ = ["PAPER_BETAS", "imbalance_row", "oversampled_rows", "recipe_rows", "partition_stats", "per_class_rows",
           "format_table", "format_recipes", "format_per_class", "main"]

PAPER_BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def imbalance_row(counts: np.ndarray, clips: int) -> dict:
    """Table 1 row of a partition of `clips` clips with class counts N_k [classes]: clips,
    classes_present, imbalance_ratio and gini over the classes with clips."""
    counts = np.asarray(counts)
    present = counts[counts > 0]
    return {"clips": int(clips), "classes_present": int(present.size),
            "imbalance_ratio": imbalance_ratio(present), "gini": gini(present)}


def oversampled_rows(labels, n_classes: int, betas=PAPER_BETAS, schemes=("moore",)) -> list[dict]:
    """Table 2: the oversampled set of `labels` (weighed by their own class counts) per scheme
    and beta, `oversampled_stats` rows."""
    ml = as_multilabels(labels)
    return [oversampled_stats(ml, b, n_classes, s) for s in schemes for b in betas]


def recipe_rows(labels, n_classes: int, recipes, betas=PAPER_BETAS) -> list[dict]:
    """Per recipe and beta, what an epoch of `labels` (weighed by their own class counts) exposes
    in expectation: {recipe, scheme, draw, beta, epoch_length, exposure [n_classes], gini,
    imbalance_ratio, max_clip_exposure} (data/draws.py `exposure_stats` of `EpochDraw.expected`)."""
    ml = as_multilabels(labels)
    rows = []
    for name in recipes:
        for b in betas:
            d = epoch_draw(ml, n_classes, name, b)
            rows.append({"recipe": name, "scheme": recipe(name).scheme, "draw": d.draw, "beta": float(b),
                         "epoch_length": d.length, **exposure_stats(ml, d.expected(), n_classes)})
    return rows


def partition_stats(labels, n_classes: int, betas=PAPER_BETAS, schemes=("moore",)) -> dict:
    """Table 1 row (clips, ratio, Gini) and Table 2 rows (one per scheme and beta) for one
    partition; classes with no clips are listed in empty_classes, not warned about."""
    ml = as_multilabels(labels)
    counts = class_counts(ml, n_classes)
    return {**imbalance_row(counts, len(ml)), "classes": n_classes,
            "labels_per_clip": float(ml.lengths.mean()) if len(ml) else 0.0,
            "empty_classes": np.flatnonzero(counts == 0).tolist(),
            "oversampled": oversampled_rows(ml, n_classes, betas, schemes)}


def per_class_rows(labels, mids: list[str], names: list[str]) -> list[dict]:
    """One row per class: {index, mid, name, clips, prior} (prior N_k / N, eq. 1)."""
    ml = as_multilabels(labels)
    counts = class_counts(ml, len(mids))
    return [{"index": k, "mid": m, "name": n, "clips": int(c), "prior": float(c) / max(len(ml), 1)}
            for k, (m, n, c) in enumerate(zip(mids, names, counts))]


def format_per_class(rows: list[dict]) -> str:
    """The per-class counts as a table, rarest first."""
    lines = [f"  {'index':>5} {'clips':>9} {'prior':>9}  name (mid)"]
    for r in sorted(rows, key=lambda r: (r["clips"], r["index"])):
        lines.append(f"  {r['index']:>5} {r['clips']:>9,} {r['prior']:>9.5f}  {r['name']} ({r['mid']})")
    return "\n".join(lines)


def format_table(name: str, s: dict) -> str:
    """The paper's Table 1 (one row) and Table 2 layout as plain text."""
    lines = [f"{name}: {s['clips']:,} clips, {s['classes']} classes, "
             f"{s['labels_per_clip']:.2f} labels per clip",
             f"  imbalance ratio {s['imbalance_ratio']:,.1f}   Gini {s['gini']:.3f}"]
    if s["empty_classes"]:
        lines.append(f"  classes with no clips (excluded): {s['empty_classes']}")
    lines.append(f"  {'scheme':<6} {'beta':>5} {'ratio':>10} {'Gini':>6} {'epoch length':>14} {'max repeat':>11}")
    for r in s["oversampled"]:
        lines.append(f"  {r['scheme']:<6} {r['beta']:5.2f} {r['imbalance_ratio']:10,.1f} {r['gini']:6.3f} "
                     f"{r['epoch_length']:14,d} {r['max_repeat']:11,d}")
    return "\n".join(lines)


def format_recipes(rows: list[dict]) -> str:
    """`recipe_rows` as plain text (the per-class exposures left out)."""
    lines = [f"  {'recipe':<14} {'beta':>5} {'draw':<11} {'epoch length':>14} {'Gini':>6} {'ratio':>10} "
             f"{'max per clip':>12}"]
    lines += [f"  {r['recipe']:<14} {r['beta']:5.2f} {r['draw']:<11} {r['epoch_length']:14,d} {r['gini']:6.3f} "
              f"{r['imbalance_ratio']:10,.1f} {r['max_clip_exposure']:12,.2f}" for r in rows]
    return "\n".join(["  expected exposure an epoch, per recipe:", *lines])


def _recipe(text: str) -> str:
    """argparse type: a recipe name (data/balance.py `recipe`)."""
    try:
        recipe(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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
    add_list(p, "--scheme", dest="schemes", default=("moore",), metavar="NAME", choices=list(SCHEMES),
             help=f"balancing scheme(s) of Table 2: {', '.join(SCHEMES)} (default moore, the paper's)")
    add_list(p, "--recipe", dest="recipes", type=_recipe, default=(), metavar="NAME",
             help=f"recipe(s) whose expected exposure to report: {', '.join(RECIPES)}; NAME@E: epochs of E draws")
    p.add_argument("--per-class", action="store_true", help="also the clips and prior of every class, rarest first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return run(lambda a: _main(p, a), p, argv)


def _main(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if a.segments:
        if not a.class_index:
            p.error("--segments needs --class-index")
        from data.labels import read_class_index, read_segments
        ci = read_class_index(a.class_index)
        labels, name = read_segments(a.segments, ci).labels, " + ".join(a.segments)
        mids, names = ci.mids, ci.names
    else:
        from data.store import open_store
        store = open_store(a.store)
        labels, name = store.labels(a.split), f"{a.store} [{a.split}]"
        mids, names = store.mids, store.classes
    t1 = time.perf_counter()
    stats = partition_stats(labels, len(mids), a.betas, a.schemes)
    if a.recipes:
        stats["recipes"] = recipe_rows(labels, len(mids), a.recipes, a.betas)
    stats["seconds"] = {"read": round(t1 - t0, 3), "stats": round(time.perf_counter() - t1, 3)}
    if a.per_class:
        stats["per_class"] = per_class_rows(labels, mids, names)
    text = format_table(name, stats) + (f"\n{format_recipes(stats['recipes'])}" if a.recipes else "")
    text += f"\n{format_per_class(stats['per_class'])}" if a.per_class else ""
    print(json.dumps(stats, indent=1) if a.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
