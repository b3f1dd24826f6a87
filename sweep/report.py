"""The paper's tables and figures for a finished sweep, with confidence intervals.

    python -m sweep.report --run-dir runs/demo
    python -m sweep.report --run-dir runs/demo --extra AST=runs/ast_preds   # + an external model

Reads <run_dir>/results.json and the saved predictions (<run_dir>/predictions/beta=<b>/<split>.npz);
writes <run_dir>/report/:
  tables.json  table1 (imbalance per partition), table2 (the oversampled training set per beta),
               table3 (d') and table4 (mAP) per model and eval split as {abs, rel, ci95} (rel: change
               from the baseline, beta = 0 or else the smallest beta; ci95: 95% paired bootstrap
               interval of that change over evaluation clips), fig3 (per-class delta-AP of the largest
               vs the smallest beta regressed on log10 training prior, with the per-class data),
               prior_shift (each model's mAP re-scored under every other eval split's class prior),
               convergence (examples to the selected checkpoint per beta)
  report.md    the same, readable
  per_class_<split>.csv  one row per class: mid, name, training clips and prior, positives in
               the split, then AP and AUC of every model (sweep rows and extras) on that split
  *.png        fig1_2_metrics_vs_beta (mAP and d' vs beta, aligned at the baseline, CI bars),
               fig3_delta_ap_vs_prior, validation_traces (raw and smoothed, per trial),
               examples_to_peak
--extra NAME=PATH adds a model evaluated outside the sweep (python -m sweep.evaluate --checkpoint
... --out DIR) as an extra row of tables 3/4 and the prior-shift table: PATH is a directory
holding <split>.npz per eval split, or one .npz (matched to the eval split with its clip ids).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from data.balance import gini, imbalance_ratio, oversampled_stats  # noqa: E402
from data.store import open_store  # noqa: E402
from sweep.metrics import WORK_ELEMENTS, Ranking, macro_metrics  # noqa: E402
from sweep.select import moving_average  # noqa: E402
from sweep.stats import prior_shift_metrics, prior_slope  # noqa: E402

__all__ = ["build_report", "main", "FIGURES"]

# table name -> (metric key in macro_metrics, key in results.json rows, label)
METRICS = {"table3": ("dprime", "dprime", "d'"), "table4": ("mAP", "mAP", "mAP")}
FIGURES = ("fig1_2_metrics_vs_beta.png", "fig3_delta_ap_vs_prior.png", "validation_traces.png",
           "examples_to_peak.png")
SEED = 0  # bootstrap seed: the same clip resamples as sweep.stats.paired_bootstrap(seed=0)


# --- predictions ------------------------------------------------------------------------------
def _load_npz(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"predictions not found: {path}")
    with np.load(path) as f:
        missing = {"scores", "targets", "clip_ids"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {sorted(missing)}")
        return {"scores": f["scores"], "targets": f["targets"], "clip_ids": f["clip_ids"].astype(str),
                "path": str(path)}


def _align(pred: dict, ref: dict, what: str) -> dict:
    """pred reordered to ref's clip order; an error naming `what` if the clip sets or labels differ."""
    if pred["clip_ids"].shape == ref["clip_ids"].shape and (pred["clip_ids"] == ref["clip_ids"]).all():
        order = slice(None)
    else:
        pos = {c: i for i, c in enumerate(pred["clip_ids"])}
        if len(pos) != len(ref["clip_ids"]) or any(c not in pos for c in ref["clip_ids"]):
            raise ValueError(f"{what} ({pred['path']}): not the clips of {ref['path']}")
        order = np.array([pos[c] for c in ref["clip_ids"]])
    out = {**pred, "scores": pred["scores"][order], "targets": pred["targets"][order],
           "clip_ids": ref["clip_ids"]}
    if out["targets"].shape != ref["targets"].shape or not (out["targets"] == ref["targets"]).all():
        raise ValueError(f"{what} ({pred['path']}): targets differ from {ref['path']}")
    return out


def _extra_for_split(path: Path, split: str, ref: dict) -> dict | None:
    """An extra model's predictions of `split`: DIR/<split>.npz, or the one npz if it holds the
    clips of ref (the sweep's predictions of that split); None if it has none for the split."""
    if path.is_dir():
        f = path / f"{split}.npz"
        return _load_npz(f) if f.is_file() else None
    pred = _load_npz(path)
    return pred if set(pred["clip_ids"]) == set(ref["clip_ids"]) else None


# --- statistics -------------------------------------------------------------------------------
def _resampled(targets: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> dict:
    """macro_metrics of one model on the full set and on each bootstrap resample (counts
    [resamples, clips]). Per pair of models this is sweep.stats.paired_bootstrap, but each model's
    resamples are scored once, not once per pair and metric."""
    r = Ranking(targets, scores)
    ap, auc = r.ap_auc()
    full = macro_metrics(ap, auc)
    n_res, n = counts.shape
    out = {key: np.empty(n_res) for key, _, _ in METRICS.values()}
    step = max(1, WORK_ELEMENTS // (n * r.block_classes))
    for lo in range(0, n_res, step):
        m = macro_metrics(*r.ap_auc(counts[lo:lo + step, :, None]))
        for key in out:
            out[key][lo:lo + step] = m[key]
    return {"full": {k: float(full[k]) for k in out}, "ap": ap, "auc": auc, "samples": out}


def _cell(abs_value: float, model: dict, base: dict, key: str) -> dict:
    with np.errstate(invalid="ignore"):
        diff = model["samples"][key] - base["samples"][key]
        lo, hi = np.nanpercentile(diff, [2.5, 97.5]) if np.isfinite(diff).any() else (np.nan, np.nan)
    return {"abs": float(abs_value), "rel": model["full"][key] - base["full"][key], "ci95": [float(lo), float(hi)]}


def _imbalance_tables(store, cfg: dict, betas: list[float]) -> tuple[list, list]:
    d = cfg["data"]
    roles = [(d["train_split"], "train"), (d["valid_split"], "validation")] + [(s, "eval") for s in d["eval_splits"]]
    table1 = []
    for s, role in roles:
        c = store.class_counts(s)
        table1.append({"partition": s, "role": role, "clips": int(store.split_info(s)["clips"]),
                       "classes_present": int((c > 0).sum()),
                       "imbalance_ratio": imbalance_ratio(c[c > 0]), "gini": gini(c[c > 0])})
    labels = store.labels(d["train_split"])
    table2 = [oversampled_stats(labels, b, store.n_classes) for b in betas]
    return table1, table2


# --- figures ----------------------------------------------------------------------------------
def _si(x: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _fig12(path: Path, tables: dict, splits: list[str], base_beta: float) -> None:
    """Fig. 1 (mAP) and Fig. 2 (d') vs beta: change from the baseline per eval split, i.e. each
    split's curve offset to 0 at the baseline, with 95% paired bootstrap CI bars."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    rows = [r for r in tables["table4"] if r["beta"] is not None]
    betas = np.array([r["beta"] for r in rows])
    span = (betas.max() - betas.min()) or 1.0
    for ax, name, fig_no in zip(axes, ("table4", "table3"), (1, 2)):
        label = METRICS[name][2]
        rows = [r for r in tables[name] if r["beta"] is not None]
        for i, s in enumerate(splits):
            rel = np.array([r[s]["rel"] for r in rows])
            ci = np.array([r[s]["ci95"] for r in rows])
            dodge = (i - (len(splits) - 1) / 2) * 0.012 * span  # keep the CI bars apart
            base_abs = next(r[s]["abs"] for r in rows if r["beta"] == base_beta)
            ax.errorbar(betas + dodge, rel, yerr=[rel - ci[:, 0], ci[:, 1] - rel], marker="o", ms=5,
                        capsize=3, lw=1.5, label=f"{s} ({label} at β={base_beta:g}: {base_abs:.3f})")
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(betas)
        ax.set_xticklabels([f"{b:g}" for b in betas])
        ax.set(xlabel="β (oversampling exponent; 0 = natural, 1 = fully balanced)",
               ylabel=f"Δ{label} vs β = {base_beta:g}",
               title=f"Fig. {fig_no}: {label} vs β (bars: 95% paired bootstrap CI)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig3(path: Path, fig3: dict, splits: list[str]) -> None:
    x_all = np.array(fig3["log10_prior"], dtype=float)
    fig, axes = plt.subplots(1, len(splits), figsize=(5.4 * len(splits), 4.4), squeeze=False, sharey=True)
    lo_b, hi_b = fig3["betas"]
    for j, (ax, s) in enumerate(zip(axes[0], splits)):
        d = np.array([np.nan if v is None else v for v in fig3[s]["delta_ap"]], dtype=float)
        ok = np.isfinite(d) & np.isfinite(x_all)
        x = x_all[ok]
        ax.scatter(x, d[ok], s=14, alpha=0.7, color="C0", label=f"classes ({ok.sum()})")
        f = fig3[s]
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(grid, f["intercept"] + f["slope"] * grid, color="C3", lw=1.8,
                label=f"slope {f['slope']:+.3f} [{f['slope_ci95'][0]:+.3f}, {f['slope_ci95'][1]:+.3f}]\n"
                      f"r = {f['r']:.2f}, p = {f['p']:.2g}")
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set(title=f"{s}", xlabel="log10 training prior (fraction of training clips labelled)")
        if j == 0:
            ax.set_ylabel(f"ΔAP per class: AP(β={hi_b:g}) − AP(β={lo_b:g})")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Fig. 3: per-class change in AP (β = {hi_b:g} vs {lo_b:g}) against training prior; "
                 "slope with 95% bootstrap CI over classes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_traces(path: Path, traces: list[dict], rows: list[dict], window: int) -> None:
    """One panel per beta, one colour per learning rate: raw validation d' (faint) and its centred
    moving average (solid); a star at each beta's selected checkpoint."""
    betas = sorted({t["beta"] for t in traces})
    lrs = sorted({t["lr"] for t in traces})
    ncol = min(4, len(betas))
    nrow = math.ceil(len(betas) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + 0.6, 3.0 * nrow + 0.9), squeeze=False,
                             sharex=True, sharey=True)
    winners = {r["beta"]: r for r in rows}
    for ax, b in zip(axes.flat, betas):
        for t in (t for t in traces if t["beta"] == b):
            x, y = np.asarray(t["examples"], dtype=float), np.asarray(t["dprime"], dtype=float)
            c = f"C{lrs.index(t['lr']) % 10}"
            ax.plot(x, y, color=c, alpha=0.35, lw=0.8)
            smooth = moving_average(y, window)
            ax.plot(x, smooth, color=c, lw=1.6)
            w = winners.get(b)
            if w and w.get("trial_id") == t["trial_id"] and w["examples_to_peak"] in x:
                i = int(np.flatnonzero(x == w["examples_to_peak"])[0])
                ax.plot(x[i], smooth[i], marker="*", ms=13, color=c, mec="k", zorder=5)
        ax.set_title(f"β = {b:g}", fontsize=10)
        ax.grid(alpha=0.25)
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
    for ax in axes.flat[len(betas):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(betas)]):
        if i + ncol >= len(betas):  # nothing below it: show its x axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training examples seen")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation d'")
    handles = [Line2D([], [], color=f"C{i % 10}", lw=1.6, label=f"lr = {lr:g}") for i, lr in enumerate(lrs)]
    handles += [Line2D([], [], color="0.4", alpha=0.35, lw=0.8, label="raw"),
                Line2D([], [], color="0.4", lw=1.6, label=f"{window}-point centred mean"),
                Line2D([], [], color="0.4", marker="*", ms=11, mec="k", ls="", label="selected checkpoint")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Validation d' per trial", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if nrow == 1 else 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_peak(path: Path, rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.8))
    names = [f"{r['beta']:g}" for r in rows]
    values = [r["examples_to_peak"] for r in rows]
    bars = ax.bar(names, values, color="C0", width=0.6)
    for bar, r in zip(bars, rows):
        ax.annotate(f"{_si(r['examples_to_peak'])}\nlr {r['lr']:g}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_ylim(0, max(values) * 1.25 if max(values) > 0 else 1)
    ax.set(xlabel="β (oversampling exponent)", ylabel="training examples seen",
           title="Examples to the selected checkpoint (peak smoothed validation d')")
    ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- per-class CSV ----------------------------------------------------------------------------
def _per_class_csv(path: Path, store, train: str, split: str, boot: dict) -> None:
    """Per-class AP and AUC of every model on one split, beside the class's priors ('' = no
    positives or negatives in the split: undefined)."""
    train_clips = store.class_counts(train)
    prior = train_clips / store.split_info(train)["clips"]
    scored = {name: b for name, b in boot.items() if b is not None}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "name", "train_clips", "train_prior", f"{split}_positives",
                    *(f"AP {n}" for n in scored), *(f"AUC {n}" for n in scored)])
        for k, (mid, name, n, positives) in enumerate(zip(store.mids, store.classes, train_clips,
                                                          store.class_counts(split))):
            values = [b["ap"][k] for b in scored.values()] + [b["auc"][k] for b in scored.values()]
            w.writerow([k, mid, name, int(n), f"{prior[k]:.6g}", int(positives),
                        *("" if not np.isfinite(v) else f"{v:.6f}" for v in values)])


# --- markdown ---------------------------------------------------------------------------------
def _f(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def _model(r: dict) -> str:
    return r["name"] if r["beta"] is None else f"β = {r['beta']:g}"


def _markdown(t: dict) -> str:
    splits, base = t["eval_splits"], t["baseline_beta"]
    lines = ["# Balancing sweep report", "",
             f"Baseline β = {base:g}. Changes (Δ) are paired differences from the baseline on the same "
             f"evaluation clips; [lo, hi] is the 95% bootstrap interval of that difference "
             f"({t['n_resamples']} resamples of clips).", "",
             "## Table 1: imbalance per partition", "",
             "| partition | role | clips | classes | imbalance ratio | Gini |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['partition']} | {r['role']} | {r['clips']:,} | {r['classes_present']} | "
              f"{r['imbalance_ratio']:.1f} | {r['gini']:.3f} |" for r in t["table1"]]
    lines += ["", "## Table 2: the oversampled training set per β", "",
              "| β | imbalance ratio | Gini | epoch length (clips) | max repeat |", "|---|---|---|---|---|"]
    lines += [f"| {r['beta']:g} | {r['imbalance_ratio']:.1f} | {r['gini']:.3f} | {r['epoch_length']:,} | "
              f"{r['max_repeat']:,} |" for r in t["table2"]]
    for name, title in (("table3", "Table 3: d'"), ("table4", "Table 4: mAP")):
        lines += ["", f"## {title} per β: absolute, Δ vs β = {base:g} [95% CI]", "",
                  "| model | lr | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
        for r in t[name]:
            cells = [f"{_f(c['abs'])} ({_f(c['rel'], '+.3f')} [{_f(c['ci95'][0], '+.3f')}, "
                     f"{_f(c['ci95'][1], '+.3f')}])" if c else "-" for c in (r.get(s) for s in splits)]
            lines.append(f"| {_model(r)} | {_f(r['lr'], 'g')} | " + " | ".join(cells) + " |")
    if t.get("fig3"):
        f3 = t["fig3"]
        lines += ["", f"## Fig. 3: per-class ΔAP (β = {f3['betas'][1]:g} vs {f3['betas'][0]:g}) "
                      "regressed on log10 training prior", ""]
        for s in splits:
            f = f3[s]
            lines.append(f"- {s}: slope {f['slope']:+.4f} per decade of prior (95% CI {f['slope_ci95'][0]:+.4f} "
                         f"to {f['slope_ci95'][1]:+.4f}), intercept {f['intercept']:+.4f}, r = {f['r']:.3f}, "
                         f"p = {f['p']:.3g}, {f['n_classes']} classes")
    lines += ["", "## Prior shift: mAP re-scored under another eval split's class prior (d' unchanged)", "",
              "| model | scored on | under the prior of | mAP | mAP (own prior) | min effective sample size |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {_model(r)} | {r['split']} | {r['under_prior_of']} | {_f(r['mAP'])} | "
              f"{_f(r['mAP_own_prior'])} | {_f(r['ess_min'], '.1f')} |" for r in t["prior_shift"]]
    lines += ["", "## Convergence: the selected checkpoint per β", "",
              "| β | lr | examples to peak | validation d' (smoothed) | validation d' (raw) |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['beta']:g} | {r['lr']:g} | {r['examples_to_peak']:,} | {_f(r['val_dprime'])} | "
              f"{_f(r['val_dprime_raw'])} |" for r in t["convergence"]]
    if t.get("failed"):
        lines += ["", "## Failed trials", ""] + [f"- β = {r['beta']:g}, lr = {r['lr']:g}: {r['error']}"
                                                 for r in t["failed"]]
    lines += ["", "Per-class AP and AUC of every model, with training priors: "
              + ", ".join(f"[{f}]({f})" for f in t["per_class"]), ""]
    lines += [f"![{f}]({f})\n" for f in t["figures"]]
    return "\n".join(lines)


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
def build_report(run_dir: str | Path, n_resamples: int = 1000, extras: dict[str, str | Path] | None = None) -> Path:
    """Write <run_dir>/report/ from results.json and the predictions; returns the folder.
    extras: {name: predictions dir or npz} of models evaluated outside the sweep."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg, splits = results["config"], results["eval_splits"]
    rows = sorted(results["rows"], key=lambda r: r["beta"])
    if not rows:
        raise ValueError(f"{run_dir / 'results.json'}: no rows (every trial failed?)")
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    for f in [*FIGURES, *report_dir.glob("per_class_*.csv")]:  # none left from an earlier report
        (report_dir / f).unlink(missing_ok=True)
    store = open_store(cfg["data"]["store"])
    train = cfg["data"]["train_split"]
    train_prior = store.class_counts(train) / store.split_info(train)["clips"]
    base = rows[0]  # beta = 0 if the sweep has it, else the smallest beta
    models = [{"name": f"beta={r['beta']:g}", "beta": r["beta"], "lr": r["lr"], "row": r} for r in rows]
    names = {m["name"] for m in models}
    for name in extras or {}:
        if name in names:
            raise ValueError(f"--extra {name}: the name is taken by a sweep row")
        models.append({"name": name, "beta": None, "lr": None, "row": None})

    tables: dict = {"eval_splits": splits, "baseline_beta": base["beta"], "n_resamples": n_resamples}
    tables["table1"], tables["table2"] = _imbalance_tables(store, cfg, [r["beta"] for r in rows])
    cells = {name: {m["name"]: {} for m in models} for name in METRICS}
    prior = {s: store.class_counts(s) / store.split_info(s)["clips"] for s in splits}
    fig3 = {"betas": [rows[0]["beta"], rows[-1]["beta"]], "classes": store.classes,
            "log10_prior": np.log10(np.where(train_prior > 0, train_prior, np.nan)).tolist()} \
        if len(rows) > 1 else None
    shift = []
    for s in splits:  # one split at a time: every model's predictions of one split in memory
        ref = _load_npz(run_dir / "predictions" / f"beta={base['beta']:g}" / f"{s}.npz")
        preds = {m["name"]: ref if m is models[0] else
                 _load_npz(run_dir / "predictions" / f"beta={m['beta']:g}" / f"{s}.npz") if m["row"] is not None
                 else _extra_for_split(Path(extras[m["name"]]), s, ref) for m in models}
        preds = {k: None if v is None else _align(v, ref, f"{k} on {s}") for k, v in preds.items()}
        n = len(ref["clip_ids"])
        counts = np.random.default_rng(SEED).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
        boot = {k: None if v is None else _resampled(v["targets"], v["scores"], counts) for k, v in preds.items()}
        for m in models:
            b = boot[m["name"]]
            for name, (key, row_key, _) in METRICS.items():
                if b is None:
                    cells[name][m["name"]][s] = None
                    continue
                abs_value = b["full"][key] if m["row"] is None else m["row"]["eval"][s][row_key]
                if not np.isclose(abs_value, b["full"][key], rtol=0, atol=1e-6, equal_nan=True):
                    warnings.warn(f"{m['name']} on {s}: results.json {row_key} {abs_value} but its predictions "
                                  f"give {b['full'][key]}")
                cells[name][m["name"]][s] = _cell(abs_value, b, boot[models[0]["name"]], key)
        for m in models:
            p = preds[m["name"]]
            for t in splits:
                if p is None or t == s:
                    continue
                r = prior_shift_metrics(p["targets"], p["scores"], prior[t])
                shift.append({"name": m["name"], "beta": m["beta"], "split": s, "under_prior_of": t,
                              "mAP": r["mAP"], "mAP_own_prior": boot[m["name"]]["full"]["mAP"],
                              "dprime": r["dprime"], "ess_min": float(np.nanmin(r["ess"])) if
                              np.isfinite(r["ess"]).any() else None})
        _per_class_csv(report_dir / f"per_class_{s}.csv", store, train, s, boot)
        if fig3 is not None:
            delta = boot[models[len(rows) - 1]["name"]]["ap"] - boot[models[0]["name"]]["ap"]
            reg = prior_slope(delta, train_prior, n_resamples=max(n_resamples, 1000), seed=SEED)
            fig3[s] = {**reg, "slope_ci95": list(reg["slope_ci95"]),
                       "n_classes": int((np.isfinite(delta) & (train_prior > 0)).sum()), "delta_ap": delta.tolist()}
        del preds, boot
    for m in models:
        if m["row"] is None and all(cells["table4"][m["name"]][s] is None for s in splits):
            raise ValueError(f"--extra {m['name']}={extras[m['name']]}: no predictions of the eval splits "
                             f"{splits} (a dir of <split>.npz, or one npz with a split's clips)")
    for name in METRICS:
        tables[name] = [{"name": m["name"], "beta": m["beta"], "lr": m["lr"], **cells[name][m["name"]]}
                        for m in models]
    tables["fig3"] = fig3
    order = {m["name"]: i for i, m in enumerate(models)}
    tables["prior_shift"] = sorted(shift, key=lambda r: order[r["name"]])  # stable: split order kept
    tables["convergence"] = [{k: r.get(k) for k in ("beta", "lr", "trial_id", "examples_to_peak", "val_dprime",
                                                    "val_dprime_raw")} for r in rows]
    tables["failed"] = results.get("failed", [])
    tables["extras"] = {k: str(v) for k, v in (extras or {}).items()}
    figures = []
    if len(rows) > 1:
        _fig12(report_dir / FIGURES[0], tables, splits, base["beta"])
        _fig3(report_dir / FIGURES[1], fig3, splits)
        figures += FIGURES[:2]
    if results.get("traces"):
        _fig_traces(report_dir / FIGURES[2], results["traces"], rows, cfg["sweep"]["smoothing_window"])
        figures.append(FIGURES[2])
    _fig_peak(report_dir / FIGURES[3], rows)
    figures.append(FIGURES[3])
    tables["figures"] = figures
    tables["per_class"] = [f"per_class_{s}.csv" for s in splits]
    (report_dir / "tables.json").write_text(json.dumps(_json_safe(tables), indent=1, allow_nan=False))
    (report_dir / "report.md").write_text(_markdown(tables))
    return report_dir


def _parse_extra(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--extra {item!r}: expected NAME=PATH")
        if not Path(path).exists():
            raise argparse.ArgumentTypeError(f"--extra {item!r}: {path} does not exist")
        out[name] = path
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a finished sweep's run directory")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                   help="an extra model's predictions (a dir of <split>.npz, or one .npz), e.g. "
                        "AST=runs/ast_preds; repeatable")
    a = p.parse_args(argv)
    try:
        extras = _parse_extra(a.extra)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    out = build_report(a.run_dir, a.resamples, extras)
    print(f"report written to {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
