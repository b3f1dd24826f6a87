"""The paper's tables for a finished sweep: their data (as the report's tables.json holds it) and
the plain-text Tables 3-4 that `python -m sweep.run` prints.

    table1       imbalance per partition (data.stats.imbalance_row)
    table2       what an epoch of each arm exposes, in expectation (data.stats.recipe_rows)
    table3/4     d' / mAP per model and eval split: {abs, rel, ci95}, rel and ci95 the paired
                 bootstrap difference from the baseline model (sweep.bootstrap.paired_difference)
    fig3         per-class delta-AP of one arm over the baseline on log10 training prior
    prior_shift  each model's mAP re-scored under another eval split's class prior
    convergence  the selected checkpoint per arm and seed

An arm is a recipe at a beta (sweep/trial.py; its `scheme` field holds the recipe's name);
results.json rows are arms, named by `label`.
"""
from __future__ import annotations

import warnings

import numpy as np

from data.balance import as_multilabels
from sweep.console import answer_lines
from data.stats import imbalance_row, recipe_rows
from sweep.bootstrap import paired_difference, prior_shift_metrics, prior_slope

__all__ = ["METRIC_TABLES", "title", "ordered_rows", "imbalance_tables", "metric_tables", "fig3_table", "prior_shift_rows",
           "convergence_rows", "format_results"]

# table -> (metric: key in results.json rows' eval and in sweep.bootstrap.METRICS, label, decimals shown)
METRIC_TABLES = {"table3": ("dprime", "d'", 3), "table4": ("mAP", "mAP", 4)}


def ordered_rows(rows: list[dict], schemes: list[str]) -> list[dict]:
    """results.json rows by scheme (in the sweep's order) then beta. The first is the baseline
    every change is measured from: beta = 0 (no balancing, swept with the first scheme) when it
    was swept, else the first scheme's smallest beta."""
    return sorted(rows, key=lambda r: (schemes.index(r["scheme"]) if r["beta"] > 0 else -1, r["beta"]))


def title(table: str) -> str:
    """'Table 3: d'' for 'table3'."""
    return f"Table {table.removeprefix('table')}: {METRIC_TABLES[table][1]}"


def imbalance_tables(store, data_cfg: dict, arms: list[dict]) -> tuple[list[dict], list[dict]]:
    """Table 1 (train, validation and eval splits, each {partition, role, clips, classes_present,
    imbalance_ratio, gini}, from the manifest's class counts) and Table 2 (what an epoch of the
    training labels exposes under each arm, in expectation: `recipe_rows` for results.json rows'
    {scheme (the recipe), beta, label}, label added, the per-class exposures left out)."""
    roles = [(data_cfg["train_split"], "train"), (data_cfg["valid_split"], "validation")]
    roles += [(s, "eval") for s in data_cfg["eval_splits"]]
    table1 = [{"partition": s, "role": role, **imbalance_row(store.class_counts(s), store.split_info(s)["clips"])}
              for s, role in roles]
    labels = as_multilabels(store.labels(data_cfg["train_split"]))
    table2 = [{"label": a["label"], **{k: v for k, v in recipe_rows(labels, store.n_classes, [a["scheme"]], [a["beta"]])[0]
                                       .items() if k != "exposure"}} for a in arms]
    return table1, table2


def metric_tables(models: list[dict], boot: dict[str, dict], splits: list[str]) -> dict[str, list[dict]]:
    """Tables 3 and 4: per model {name, scheme, beta, lr, learned, <split>: {abs, rel, ci95, undefined
    (resamples left out of the interval: paired_difference)} or None (no predictions, or no result: the
    arm did not learn within the cap)}. A change from a baseline that did not learn is None.

    models: [{name, scheme, beta, lr, row}] (row: the results.json row, None for an extra model), the
    first the baseline; boot: {split: {name: sweep.bootstrap.resampled_metrics or None}}, every model
    on the same resamples. abs is the results.json value (a warning if the predictions disagree),
    or the predictions' value for an extra model."""
    base = models[0]["name"]
    tables = {}
    for table, (key, _, _) in METRIC_TABLES.items():
        tables[table] = []
        for m in models:
            row = {"name": m["name"], "scheme": m["scheme"], "beta": m["beta"], "lr": m["lr"], "learned": m["learned"]}
            for s in splits:
                b = boot[s][m["name"]]
                row[s] = None if b is None or not m["learned"] else _cell(m, s, key, b, boot[s][base], models[0]["learned"])
            tables[table].append(row)
    return tables


def _cell(model: dict, split: str, key: str, b: dict, base: dict, base_learned: bool) -> dict:
    value = b["full"][key] if model["row"] is None else model["row"]["eval"][split][key]
    if not np.isclose(value, b["full"][key], rtol=0, atol=1e-6, equal_nan=True):
        warnings.warn(f"{model['name']} on {split}: results.json {key} {value} but its predictions "
                      f"give {b['full'][key]}")
    if not base_learned:
        return {"abs": float(value), "rel": None, "ci95": [None, None], "undefined": 0}
    d = paired_difference(base, b, key)
    return {"abs": float(value), "rel": d["diff"], "ci95": list(d["ci95"]), "undefined": d["undefined"]}


def fig3_table(boot: dict[str, dict], lo: dict, hi: dict, train_prior: np.ndarray, classes: list[str],
               n_resamples: int, seed: int = 0) -> dict:
    """Fig. 3: per eval split, the per-class AP change of arm `hi` over arm `lo` (results.json
    rows) regressed on log10 training prior (sweep.bootstrap.prior_slope, >= 1000 resamples of
    classes): {models (their labels), betas, classes, log10_prior, <split>: {n_classes, delta_ap,
    and with at least 3 classes to regress: slope, intercept, r, p, slope_ci95}}."""
    log_prior = np.log10(np.where(train_prior > 0, train_prior, np.nan))
    out = {"models": [lo["label"], hi["label"]], "betas": [lo["beta"], hi["beta"]], "classes": classes,
           "log10_prior": log_prior.tolist()}
    for s, models in boot.items():
        delta = models[hi["label"]]["ap"] - models[lo["label"]]["ap"]
        n = int((np.isfinite(delta) & (train_prior > 0)).sum())
        out[s] = {"n_classes": n, "delta_ap": delta.tolist()}
        if n >= 3:  # a line through fewer is no regression; the split is shown without one
            reg = prior_slope(delta, train_prior, n_resamples=max(n_resamples, 1000), seed=seed)
            out[s].update(reg, slope_ci95=list(reg["slope_ci95"]))
    return out


def prior_shift_rows(models: list[dict], preds: dict[str, list[dict] | None], boot: dict[str, dict | None],
                     split: str, priors: dict[str, np.ndarray]) -> list[dict]:
    """Each model's predictions of `split` (preds: one per seed, by name; None: none) re-scored
    under the class prior of every other split in `priors` ({split: prior [classes]}), model by
    model: the mAP the mean over seeds, the effective sample size the smallest."""
    rows = []
    for m in models:
        p = preds[m["name"]]
        for other, prior in priors.items():
            if p is None or other == split:
                continue
            shifted = [prior_shift_metrics(q["targets"], q["scores"], prior) for q in p]
            ess = [float(np.nanmin(r["ess"])) for r in shifted if np.isfinite(r["ess"]).any()]
            rows.append({"name": m["name"], "scheme": m["scheme"], "beta": m["beta"], "split": split, "under_prior_of": other,
                         "mAP": float(np.mean([r["mAP"] for r in shifted])),
                         "mAP_own_prior": boot[m["name"]]["full"]["mAP"], "dprime": shifted[0]["dprime"],
                         "ess_min": min(ess) if ess else None})
    return rows


def convergence_rows(rows: list[dict]) -> list[dict]:
    """The selected checkpoint of each arm, in each seed, from results.json rows."""
    keys = ("lr", "seed", "trial", "examples_to_peak", "examples_to_map_peak", "val_dprime", "val_dprime_raw",
            "learned", "converged", "evaluations")
    return [{"label": r["label"], "scheme": r["scheme"], "beta": r["beta"], "eliminated": r.get("eliminated"),
             **{k: s.get(k) for k in keys}} for r in rows for s in r["seeds"]]


def format_results(summary: dict) -> str:
    """results.txt: the paper's Tables 3 (d', 3 decimals) and 4 (mAP, 4 decimals) as plain text
    from results.json: per arm, absolute (the mean over seeds, +- their sd with several) and
    relative to the baseline (`ordered_rows`); an arm whose pick is not settled is marked, one
    that did not learn within the cap shows no result; then p_best (marked provisional while
    the verdict is), the verdict and the best arm on validation."""
    rows, splits = ordered_rows(summary["rows"], summary["config"]["sweep"]["schemes"]), summary["eval_splits"]
    base, seeds = rows[0], max(len(r["seeds"]) for r in rows)
    width = max(len(r["label"]) for r in rows)
    out = []
    for table, (key, _, digits) in METRIC_TABLES.items():
        out += [f"{title(table)} (absolute, change vs {base['label']})"
                + (f", mean +- sd over {seeds} seeds" if seeds > 1 else ""),
                f"{'arm':<{width}} {'lr':>9}" + "".join(f"{s:>26}" for s in splits)]
        out += [_text_row(r, base, splits, key, digits, seeds > 1, width) for r in rows] + [""]
    late = [(r, s) for r in rows for s in r["seeds"] if not s["converged"] and r.get("status") != "eliminated"]
    if late:
        picks = ", ".join(r["label"] + (f" seed {s['seed']}" if seeds > 1 else "")
                          + (f" (picked at {s['examples_to_peak']:,} examples, evaluation {s['evaluations']} was the last)"
                             if s["learned"] else f" (did not learn in {s['evaluations']} evaluations)")
                          for r, s in late)
        out += [f"NOT CONVERGED: {picks}: the cap (train.max_examples) came before the pick was settled; raise it", ""]
    spent = summary.get("compute")
    if spent and spent["without_racing_at_least"] > spent["examples"]:
        out += [f"compute: {spent['examples']:,} examples trained; the stopping rule alone would have trained at least "
                f"{spent['without_racing_at_least']:,} (racing saved at least {spent['saved_at_least']:.0%})", ""]
    return "\n".join(out + answer_lines(summary)) + "\n"


def _text_row(r: dict, base: dict, splits: list[str], key: str, digits: int, spread: bool, width: int) -> str:
    """One arm of format_results: 'value (change from the baseline)' per split; no value for an
    arm that did not learn, no change from a baseline that did not."""
    def cell(s: str) -> str:
        if not r["learned"]:
            return f"{'no result':>26}"
        v = r["eval"][s][key]
        sd = f"+-{r['eval_sd'][s][key]:.{digits}f}" if spread else ""
        change = f"{v - base['eval'][s][key]:+.{digits}f}" if base["learned"] else "n/a"
        return f"{f'{v:.{digits}f}{sd}':>16} ({change})"
    mark = "" if r["converged"] else "  NOT CONVERGED" if r["learned"] else "  did not learn within the cap"
    if r.get("eliminated"):
        e = r["eliminated"]
        mark = f"  eliminated at {e['examples']:,} (p_best {e['p']:.3f} vs {e['against']})"
    return f"{r['label']:<{width}} {r['lr']:>9.2g}" + "".join(cell(s) for s in splits) + mark
