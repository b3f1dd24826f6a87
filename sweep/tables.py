"""The paper's tables for a finished sweep: their data (as the report's tables.json holds it) and
the plain-text Tables 3-4 that `python -m sweep.run` prints.

    table1       imbalance per partition (data.stats.imbalance_row)
    table2       the training set oversampled per beta (data.stats.oversampled_rows)
    table3/4     d' / mAP per model and eval split: {abs, rel, ci95}, rel and ci95 the paired
                 bootstrap difference from the baseline model (sweep.stats.paired_difference)
    fig3         per-class delta-AP of the largest vs the smallest beta on log10 training prior
    prior_shift  each model's mAP re-scored under another eval split's class prior
    convergence  the selected checkpoint per beta
"""
from __future__ import annotations

import warnings

import numpy as np

from data.stats import imbalance_row, oversampled_rows
from sweep.stats import paired_difference, prior_shift_metrics, prior_slope

__all__ = ["METRIC_TABLES", "title", "imbalance_tables", "metric_tables", "fig3_table", "prior_shift_rows",
           "convergence_rows", "format_results"]

# table -> (metric: key in results.json rows' eval and in sweep.stats.METRICS, label, decimals shown)
METRIC_TABLES = {"table3": ("dprime", "d'", 3), "table4": ("mAP", "mAP", 4)}


def title(table: str) -> str:
    """'Table 3: d'' for 'table3'."""
    return f"Table {table.removeprefix('table')}: {METRIC_TABLES[table][1]}"


def imbalance_tables(store, data_cfg: dict, betas: list[float]) -> tuple[list[dict], list[dict]]:
    """Table 1 (train, validation and eval splits, each {partition, role, clips, classes_present,
    imbalance_ratio, gini}, from the manifest's class counts) and Table 2 (the training labels
    oversampled at each beta)."""
    roles = [(data_cfg["train_split"], "train"), (data_cfg["valid_split"], "validation")]
    roles += [(s, "eval") for s in data_cfg["eval_splits"]]
    table1 = [{"partition": s, "role": role, **imbalance_row(store.class_counts(s), store.split_info(s)["clips"])}
              for s, role in roles]
    return table1, oversampled_rows(store.labels(data_cfg["train_split"]), store.n_classes, betas)


def metric_tables(models: list[dict], boot: dict[str, dict], splits: list[str]) -> dict[str, list[dict]]:
    """Tables 3 and 4: per model {name, beta, lr, <split>: {abs, rel, ci95} or None (no predictions)}.

    models: [{name, beta, lr, row}] (row: the results.json row, None for an extra model), the
    first the baseline; boot: {split: {name: sweep.stats.resampled_metrics or None}}, every model
    on the same resamples. abs is the results.json value (a warning if the predictions disagree),
    or the predictions' value for an extra model."""
    base = models[0]["name"]
    tables = {}
    for table, (key, _, _) in METRIC_TABLES.items():
        tables[table] = []
        for m in models:
            row = {"name": m["name"], "beta": m["beta"], "lr": m["lr"]}
            for s in splits:
                b = boot[s][m["name"]]
                row[s] = None if b is None else _cell(m, s, key, b, boot[s][base])
            tables[table].append(row)
    return tables


def _cell(model: dict, split: str, key: str, b: dict, base: dict) -> dict:
    value = b["full"][key] if model["row"] is None else model["row"]["eval"][split][key]
    if not np.isclose(value, b["full"][key], rtol=0, atol=1e-6, equal_nan=True):
        warnings.warn(f"{model['name']} on {split}: results.json {key} {value} but its predictions "
                      f"give {b['full'][key]}")
    d = paired_difference(base, b, key)
    return {"abs": float(value), "rel": d["diff"], "ci95": list(d["ci95"])}


def fig3_table(boot: dict[str, dict], lo: str, hi: str, betas: list[float], train_prior: np.ndarray,
               classes: list[str], n_resamples: int, seed: int = 0) -> dict:
    """Fig. 3: per eval split, the per-class AP change of model `hi` over model `lo` (betas: theirs)
    regressed on log10 training prior (sweep.stats.prior_slope, >= 1000 resamples of classes):
    {betas, classes, log10_prior, <split>: {slope, intercept, r, p, slope_ci95, n_classes, delta_ap}}."""
    log_prior = np.log10(np.where(train_prior > 0, train_prior, np.nan))
    out = {"betas": list(betas), "classes": classes, "log10_prior": log_prior.tolist()}
    for s, models in boot.items():
        delta = models[hi]["ap"] - models[lo]["ap"]
        reg = prior_slope(delta, train_prior, n_resamples=max(n_resamples, 1000), seed=seed)
        out[s] = {**reg, "slope_ci95": list(reg["slope_ci95"]),
                  "n_classes": int((np.isfinite(delta) & (train_prior > 0)).sum()), "delta_ap": delta.tolist()}
    return out


def prior_shift_rows(models: list[dict], preds: dict[str, dict | None], boot: dict[str, dict | None],
                     split: str, priors: dict[str, np.ndarray]) -> list[dict]:
    """Each model's predictions of `split` (preds/boot by name, None: none) re-scored under the
    class prior of every other split in `priors` ({split: prior [classes]}), model by model."""
    rows = []
    for m in models:
        p = preds[m["name"]]
        for other, prior in priors.items():
            if p is None or other == split:
                continue
            r = prior_shift_metrics(p["targets"], p["scores"], prior)
            rows.append({"name": m["name"], "beta": m["beta"], "split": split, "under_prior_of": other,
                         "mAP": r["mAP"], "mAP_own_prior": boot[m["name"]]["full"]["mAP"], "dprime": r["dprime"],
                         "ess_min": float(np.nanmin(r["ess"])) if np.isfinite(r["ess"]).any() else None})
    return rows


def convergence_rows(rows: list[dict]) -> list[dict]:
    """The selected checkpoint per beta, from results.json rows."""
    keys = ("beta", "lr", "trial_id", "examples_to_peak", "examples_to_map_peak", "val_dprime", "val_dprime_raw",
            "converged", "evaluations")
    return [{k: r.get(k) for k in keys} for r in rows]


def format_results(rows: list[dict], splits: list[str]) -> str:
    """The paper's Tables 3 (d', 3 decimals) and 4 (mAP, 4 decimals) as plain text from results.json
    rows: per beta, absolute and relative to beta = 0; a beta whose pick is not settled is marked."""
    base = next((r for r in rows if r["beta"] == 0), None)
    out = []
    for table, (key, _, digits) in METRIC_TABLES.items():
        out += [f"{title(table)} (absolute, change vs beta = 0)",
                f"{'beta':>6} {'lr':>9}" + "".join(f"{s:>26}" for s in splits)]
        out += [_text_row(r, base, splits, key, digits) for r in rows] + [""]
    late = [r for r in rows if not r["converged"]]
    if late:
        picks = ", ".join(f"beta={r['beta']:g} (picked at {r['examples_to_peak']:,} examples, evaluation "
                          f"{r['evaluations']} was the last)" for r in late)
        out.append(f"NOT CONVERGED: {picks}: the cap (train.max_examples) came before the pick was settled; raise it")
    return "\n".join(out)


def _text_row(r: dict, base: dict | None, splits: list[str], key: str, digits: int) -> str:
    """One beta of format_results: 'value (change)' per split, change 'n/a' without beta = 0."""
    def cell(s: str) -> str:
        v = r["eval"][s][key]
        rel = f"{v - base['eval'][s][key]:+.{digits}f}" if base else "n/a"
        return f"{v:>16.{digits}f} ({rel})"
    mark = "" if r["converged"] else "  NOT CONVERGED"
    return f"{r['beta']:>6g} {r['lr']:>9.2g}" + "".join(cell(s) for s in splits) + mark
