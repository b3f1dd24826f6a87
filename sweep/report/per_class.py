"""per_class_<split>.csv: every model's per-class AP and AUC on one eval split, beside each class's
training clips and prior and its positives in the split."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


__all__ = ["write_per_class_csv"]


def write_per_class_csv(path: Path, store, train: str, split: str, scored: dict[str, dict | None]) -> None:
    """One row per class: index, mid, name, train_clips, train_prior, <split>_positives, then
    'AP <model>' and 'AUC <model>' for each model of `scored` ({name: sweep.bootstrap.resampled_metrics,
    or None: no predictions of the split, no column}); '' = undefined (no positives or negatives)."""
    train_clips = store.class_counts(train)
    prior = store.priors(train)
    scored = {name: b for name, b in scored.items() if b is not None}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "name", "train_clips", "train_prior", f"{split}_positives",
                    *(f"AP {n}" for n in scored), *(f"AUC {n}" for n in scored)])
        for k, (mid, name, n, positives) in enumerate(zip(store.mids, store.classes, train_clips,
                                                          store.class_counts(split))):
            values = [b["ap"][k] for b in scored.values()] + [b["auc"][k] for b in scored.values()]
            w.writerow([k, mid, name, int(n), f"{prior[k]:.6g}", int(positives),
                        *("" if not np.isfinite(v) else f"{v:.6f}" for v in values)])
