"""Saved predictions: where they live (sweep/rundir.py names the path), how they are written
and read, and how they are re-scored under another class prior (AP moves with the prior; AUC
and d' do not). numpy only: the report reads predictions without importing torch or Ray.

    python -m sweep.evaluate --predictions P.npz --target-prior {train|uniform|<split>|file.csv}
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from data.cli import InputError
from data.balance import priors_from_counts
from data.store import Store
from sweep.metrics import classification_metrics

__all__ = ["load_predictions", "save_predictions", "target_prior", "rescore", "format_rescore"]


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions .npz (scores, targets, clip_ids); a file that cannot be read
    (cut short, not an npz) is a ValueError naming it."""
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable predictions file ({type(e).__name__}: {e})") from e


def save_predictions(path: str | Path, result: dict) -> None:
    """`path`.npz with scores, targets, clip_ids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, scores=result["scores"], targets=result["targets"],
                        clip_ids=result["clip_ids"])


def target_prior(spec: str, targets: np.ndarray, store: Store | None, train_split: str = "train") -> np.ndarray:
    """A class prior [K] named on the command line: `train` (the store's training split), `uniform`
    (every class at the set's mean prior, so the expected labels per clip stay the same), a store
    split's name, or a CSV file with a `prior` column, one row per class in class order (or in any
    order with an `index` column)."""
    k = targets.shape[1]
    if spec == "uniform":
        return np.full(k, _own_priors(targets).mean())
    if spec.endswith(".csv"):
        import csv
        with open(spec, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "prior" not in rows[0]:
            raise InputError(f"{spec}: expected a CSV with a 'prior' column, one row per class")
        try:
            values = [float(r["prior"]) for r in rows]
            index = [int(r["index"]) for r in rows] if "index" in rows[0] else list(range(len(rows)))
        except (TypeError, ValueError) as e:
            raise InputError(f"{spec}: {e}") from None
        if sorted(index) != list(range(len(rows))):
            raise InputError(f"{spec}: the 'index' column must hold 0..{len(rows) - 1} once each")
        prior = np.empty(len(rows))
        prior[index] = values
    else:
        if store is None:
            raise InputError(f"--target-prior {spec} needs --store (or give uniform or a .csv file)")
        split = train_split if spec == "train" else spec
        prior = store.priors(split)
    if prior.shape != (k,):
        raise InputError(f"target prior {spec}: {prior.size} classes, the predictions {k}")
    bad = ~(np.isfinite(prior) & (prior >= 0) & (prior <= 1))
    if bad.any():
        raise InputError(f"target prior {spec}: class {int(np.flatnonzero(bad)[0])} has prior "
                         f"{prior[bad][0]!r}, not in [0, 1]")
    return prior


def _own_priors(targets: np.ndarray) -> np.ndarray:
    """The class priors of 0/1 targets [clips, classes], float64 [classes]."""
    return priors_from_counts(np.count_nonzero(targets, axis=0), len(targets))


def rescore(predictions: str | Path, spec: str, store: Store | None = None, train_split: str = "train") -> dict:
    """Saved predictions re-scored under the class prior `spec` (see target_prior): per-class AP
    with the negatives of class k weighted to make its prior pi'_k (sweep.bootstrap.prior_shift_metrics),
    its mAP, d' and macro AUC (unchanged by design: they do not depend on the prior), and per class
    the effective sample size of the weighted set. Classes whose own or target prior is 0 or 1
    have no shifted AP and are listed in `excluded`."""
    from sweep.bootstrap import prior_shift_metrics
    f = load_predictions(predictions)
    scores, targets = f["scores"], f["targets"]
    prior = target_prior(spec, targets, store, train_split)
    own = classification_metrics(targets, scores)
    shifted = prior_shift_metrics(targets, scores, prior)
    names = store.classes if store is not None and store.n_classes == targets.shape[1] \
        else [str(i) for i in range(targets.shape[1])]
    nan = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731 (strict JSON: no NaN)
    own_prior = _own_priors(targets)
    return {"predictions": str(predictions), "target_prior": spec, "clips": int(targets.shape[0]),
            "classes": int(targets.shape[1]), "mAP_own_prior": own["mAP"], "mAP_target_prior": nan(shifted["mAP"]),
            "dprime": nan(own["dprime"]), "AUC": own["mAUC"],
            "ess_min": nan(np.nanmin(shifted["ess"])) if np.isfinite(shifted["ess"]).any() else None,
            "excluded": [names[i] for i in np.flatnonzero(~np.isfinite(shifted["ap"]))],
            "per_class": [{"class": names[i], "prior_own": nan(own_prior[i]), "prior_target": nan(prior[i]),
                           "ap_own_prior": nan(own["ap"][i]), "ap_target_prior": nan(shifted["ap"][i]),
                           "ess": nan(shifted["ess"][i])} for i in range(targets.shape[1])]}


def format_rescore(r: dict) -> str:
    """The re-scored predictions (rescore), readable."""
    shifted = "n/a" if r["mAP_target_prior"] is None else f"{r['mAP_target_prior']:.4f}"
    dprime = "n/a" if r["dprime"] is None else f"{r['dprime']:.3f}"
    lines = [f"{r['predictions']} ({r['clips']:,} clips, {r['classes']} classes) under the prior {r['target_prior']}:",
             f"  mAP {r['mAP_own_prior']:.4f} under its own prior, {shifted} under the target prior; "
             f"d' {dprime} and AUC {r['AUC']:.4f} do not depend on it"]
    if r["ess_min"] is not None:
        lines.append(f"  smallest effective sample size of a class: {r['ess_min']:.1f}")
    if r["excluded"]:
        lines.append(f"  without a shifted AP (prior 0 or 1): {', '.join(r['excluded'])}")
    return "\n".join(lines)
