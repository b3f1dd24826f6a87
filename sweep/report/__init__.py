"""The paper's tables and figures for a finished sweep, with confidence intervals.

    python -m sweep.report --run-dir runs/demo
    python -m sweep.report --run-dir runs/demo --extra AST=runs/ast_preds   # + an external model

Reads <run_dir>/results.json and the saved predictions
(<run_dir>/predictions/<scheme>-beta=<b>/seed=<s>/<split>.npz); writes <run_dir>/report/:
  tables.json  table1 (imbalance per partition), table2 (the oversampled training set per arm: a
               scheme at a beta), table3 (d') and table4 (mAP) per model and eval split as {abs,
               rel, ci95} (rel: change from the baseline, beta = 0 or else the smallest beta; ci95:
               95% paired bootstrap interval of that change over evaluation clips), fig3 (per-class
               delta-AP of the first scheme's largest beta vs the baseline regressed on log10
               training prior, with the per-class data), prior_shift (each model's mAP re-scored
               under every other eval split's class prior), convergence (examples to the selected
               checkpoint per arm and seed)
  report.md    the same, readable
  per_class_<split>.csv  one row per class: mid, name, training clips and prior, positives in
               the split, then AP and AUC of every model (sweep rows and extras) on that split
  *.png        fig1_2_metrics_vs_beta (mAP and d' vs beta, aligned at the baseline, CI bars),
               fig3_delta_ap_vs_prior, validation_traces (raw and smoothed, per trial),
               examples_to_peak
--extra NAME=PATH adds a model evaluated outside the sweep (python -m sweep.evaluate --checkpoint
... --out DIR) as an extra row of tables 3/4 and the prior-shift table: PATH is a directory
holding <split>.npz per eval split, or one .npz (matched to the eval split with its clip ids);
several: --extra A=PATH B=PATH, or --extra A=PATH --extra B=PATH.
Prints the files written (`--json`: {report_dir, report, tables, figures, per_class} as one JSON
document); the bootstrap shows a progress bar per model and split on a terminal.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from data.cli import InputError
from data.store import open_store
from sweep.report import markdown
from sweep.report.figures import FIGURES, draw_figures
from sweep.report.per_class import write_per_class_csv
from sweep.bootstrap import bootstrap_counts, resampled_metrics
from sweep.predictions import load_predictions
from sweep.select import StoppingRule
from sweep.rundir import predictions_path
from sweep.trial import Arm
from sweep.report.tables import (convergence_rows, fig3_table, imbalance_tables, metric_tables, ordered_rows,
                                 prior_shift_rows)

__all__ = ["build_report", "FIGURES"]

# This module reads the run and composes: sweep/bootstrap.py (the paired bootstrap, every model scored
# once on the same clip resamples), sweep/report/tables.py (the tables), sweep/report/figures.py,
# sweep/report/per_class.py and sweep/report/markdown.py (report.md).

SEED = 0  # bootstrap seed: the same clip resamples as sweep.bootstrap.paired_bootstrap(seed=0)


# --- predictions ------------------------------------------------------------------------------
def _load_npz(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path}")
    f = load_predictions(path)
    missing = {"scores", "targets", "clip_ids"} - set(f)
    if missing:
        raise InputError(f"{path}: missing array(s) {sorted(missing)}")
    return {"scores": f["scores"], "targets": f["targets"], "clip_ids": f["clip_ids"].astype(str), "path": str(path)}


def _align(pred: dict, ref: dict, what: str) -> dict:
    """pred reordered to ref's clip order; an error naming `what` if the clip sets or labels differ."""
    if pred["clip_ids"].shape == ref["clip_ids"].shape and (pred["clip_ids"] == ref["clip_ids"]).all():
        order = slice(None)
    else:
        pos = {c: i for i, c in enumerate(pred["clip_ids"])}
        if len(pos) != len(ref["clip_ids"]) or any(c not in pos for c in ref["clip_ids"]):
            raise InputError(f"{what} ({pred['path']}): not the clips of {ref['path']}")
        order = np.array([pos[c] for c in ref["clip_ids"]])
    out = {**pred, "scores": pred["scores"][order], "targets": pred["targets"][order],
           "clip_ids": ref["clip_ids"]}
    if out["targets"].shape != ref["targets"].shape or not (out["targets"] == ref["targets"]).all():
        raise InputError(f"{what} ({pred['path']}): targets differ from {ref['path']}")
    return out


def _extra_for_split(path: Path, split: str, ref: dict) -> dict | None:
    """An extra model's predictions of `split`: DIR/<split>.npz, or the one npz if it holds the
    clips of ref (the sweep's predictions of that split); None if it has none for the split."""
    if path.is_dir():
        f = path / f"{split}.npz"
        return _load_npz(f) if f.is_file() else None
    pred = _load_npz(path)
    return pred if set(pred["clip_ids"]) == set(ref["clip_ids"]) else None


def _predictions(run_dir: Path, split: str, models: list[dict], extras: dict) -> dict[str, list[dict] | None]:
    """Every model's predictions of `split` in the baseline's clip order ({name: one npz's arrays
    per seed}; None: an extra model without this split)."""
    def saved(row: dict) -> list[dict]:
        return [_load_npz(predictions_path(run_dir, Arm(row["scheme"], row["beta"]), s["seed"], split))
                for s in row["seeds"]]

    ref = saved(models[0]["row"])[0]
    preds = {}
    for m in models:
        p = saved(m["row"]) if m["row"] is not None else _extra_for_split(Path(extras[m["name"]]), split, ref)
        p = [p] if isinstance(p, dict) else p
        preds[m["name"]] = None if p is None else [_align(q, ref, f"{m['name']} on {split}") for q in p]
    return preds


def _mean_over_seeds(scored: list[dict]) -> dict:
    """One model's resampled_metrics averaged over its seeds (every seed on the same clip
    resamples: the average stays paired with the other models')."""
    if len(scored) == 1:
        return scored[0]
    return {"full": {k: float(np.mean([b["full"][k] for b in scored])) for k in scored[0]["full"]},
            "ap": np.mean([b["ap"] for b in scored], axis=0), "auc": np.mean([b["auc"] for b in scored], axis=0),
            "samples": {k: np.mean([b["samples"][k] for b in scored], axis=0) for k in scored[0]["samples"]}}


def _score_split(run_dir: Path, split: str, models: list[dict], extras: dict, n_resamples: int,
                 priors: dict[str, np.ndarray]) -> tuple[dict, list[dict]]:
    """Every model on one split (only its predictions in memory): {name: resampled_metrics (the
    mean over seeds) or None}, all on the same clip resamples, and the split's prior-shift rows."""
    preds = _predictions(run_dir, split, models, extras)
    counts = bootstrap_counts(len(preds[models[0]["name"]][0]["clip_ids"]), n_resamples, SEED)
    boot = {name: None if p is None else
            _mean_over_seeds([resampled_metrics(q["targets"], q["scores"], counts, desc=f"bootstrap {name} on {split}")
                              for q in p])
            for name, p in preds.items()}
    return boot, prior_shift_rows(models, preds, boot, split, priors)


def _models(rows: list[dict], extras: dict) -> list[dict]:
    """[{name, scheme, beta, lr, learned, row}]: the sweep rows in order (the first is the
    baseline), named by their arm's label, then the extras."""
    models = [{"name": r["label"], "scheme": r["scheme"], "beta": r["beta"], "lr": r["lr"], "learned": r["learned"],
               "row": r} for r in rows]
    for name in extras:
        if name in {m["name"] for m in models}:
            raise InputError(f"--extra {name}: the name is taken by a sweep row")
        models.append({"name": name, "scheme": None, "beta": None, "lr": None, "learned": True, "row": None})
    return models


def _json_safe(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# --- the report -------------------------------------------------------------------------------
def build_report(run_dir: str | Path, n_resamples: int = 1000, extras: dict[str, str | Path] | None = None,
                 results: dict | None = None, out: str | Path | None = None) -> Path:
    """Write the report from results.json (or `results`, what it holds) and the predictions
    under `run_dir`, to `out` (default <run_dir>/report/); returns the folder.
    extras: {name: predictions dir or npz} of models evaluated outside the sweep."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    run_dir, extras = Path(run_dir), extras or {}
    results = results or json.loads((run_dir / "results.json").read_text())
    cfg, splits = results["config"], results["eval_splits"]
    rows = ordered_rows(results["rows"], cfg["sweep"]["schemes"])  # rows[0]: the baseline
    if not rows:
        raise InputError(f"{run_dir / 'results.json'}: no rows (every trial failed?)")
    store, train = open_store(cfg["data"]["store"]), cfg["data"]["train_split"]
    models = _models(rows, extras)
    eval_priors, boot, shift = {s: store.priors(s) for s in splits}, {}, []
    for s in splits:
        boot[s], split_shift = _score_split(run_dir, s, models, extras, n_resamples, eval_priors)
        shift += split_shift
    for m in models[len(rows):]:
        if all(boot[s][m["name"]] is None for s in splits):
            raise InputError(f"--extra {m['name']}={extras[m['name']]}: no predictions of the eval splits "
                             f"{splits} (a dir of <split>.npz, or one npz with a split's clips)")

    tables: dict = {"eval_splits": splits, "baseline": rows[0]["label"], "baseline_beta": rows[0]["beta"],
                    "n_resamples": n_resamples}
    tables["table1"], tables["table2"] = imbalance_tables(store, cfg["data"], rows)
    tables.update(metric_tables(models, boot, splits))
    top = max((r for r in rows if r["scheme"] == rows[0]["scheme"]), key=lambda r: r["beta"])
    tables["fig3"] = fig3_table(boot, rows[0], top, store.priors(train), store.classes, n_resamples, SEED) \
        if top is not rows[0] and top["learned"] and rows[0]["learned"] else None
    order = {m["name"]: i for i, m in enumerate(models)}
    tables["prior_shift"] = sorted(shift, key=lambda r: order[r["name"]])  # stable: split order kept
    tables["selection"], tables["verdict"], tables["p_best"] = results["selection"], results["verdict"], results["p_best"]
    tables["confidence"] = results["confidence"]
    tables["convergence"] = convergence_rows(rows)
    tables["failed"] = results.get("failed", [])
    tables["extras"] = {k: str(v) for k, v in extras.items()}

    report_dir = Path(out) if out else run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    for f in [*FIGURES, *report_dir.glob("per_class_*.csv")]:  # none left from an earlier report
        (report_dir / f).unlink(missing_ok=True)
    rule = StoppingRule(cfg["sweep"]["smoothing_window"], cfg["sweep"]["patience"], cfg["sweep"]["settle_ratio"])
    tables["figures"] = draw_figures(report_dir, tables, rows, results.get("traces"), rule)
    tables["per_class"] = [f"per_class_{s}.csv" for s in splits]
    for s, name in zip(splits, tables["per_class"]):
        write_per_class_csv(report_dir / name, store, train, s, boot[s])
    (report_dir / "tables.json").write_text(json.dumps(_json_safe(tables), indent=1, allow_nan=False))
    (report_dir / "report.md").write_text(markdown.render(tables))
    return report_dir


