"""The paper's tables and figures for a finished sweep, with confidence intervals.

    python -m sweep.report --run-dir runs/demo

Reads <run_dir>/results.json and the saved predictions; writes <run_dir>/report/:
  tables.json  table1 (imbalance per partition), table2 (per beta), table3 (d') and table4
               (mAP) per beta and eval split as {abs, rel, ci95} (rel: change from beta = 0,
               ci95: paired bootstrap interval of that change), fig3 (per-class delta-AP of the
               largest vs the smallest beta regressed on log10 training prior), prior_shift
               (each winner's mAP re-scored under the other eval split's prior)
  report.md    the same, readable
  *.png        Fig. 1-2 (mAP and d' vs beta, aligned at beta = 0, with CI bars), Fig. 3,
               validation traces (raw and smoothed) per trial, examples to peak per beta
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.balance import class_counts, gini, imbalance_ratio, oversampled_stats  # noqa: E402
from data.store import open_store  # noqa: E402
from sweep.metrics import classification_metrics  # noqa: E402
from sweep.select import moving_average  # noqa: E402
from sweep.stats import paired_bootstrap, prior_shift_metrics, prior_slope  # noqa: E402

__all__ = ["build_report", "main"]

METRICS = {"table3": ("dprime", "d'"), "table4": ("mAP", "mAP")}


def _predictions(run_dir: Path, beta: float, split: str) -> dict:
    with np.load(run_dir / "predictions" / f"beta={beta:g}" / f"{split}.npz") as f:
        return {k: f[k] for k in f.files}


def _imbalance_tables(store, cfg: dict, betas: list[float]) -> tuple[list, list]:
    splits = [cfg["data"]["train_split"], cfg["data"]["valid_split"], *cfg["data"]["eval_splits"]]
    table1 = []
    for s in splits:
        c = store.class_counts(s)
        table1.append({"partition": s, "clips": int(store.split_info(s)["clips"]),
                       "imbalance_ratio": imbalance_ratio(c[c > 0]), "gini": gini(c[c > 0])})
    labels = store.labels(cfg["data"]["train_split"])
    table2 = [oversampled_stats(labels, b, store.n_classes) for b in betas]
    return table1, table2


def _metric_tables(run_dir: Path, rows: list[dict], splits: list[str], n_resamples: int) -> dict:
    base = next((r for r in rows if r["beta"] == 0), rows[0])
    tables = {name: [] for name in METRICS}
    for r in rows:
        cells = {name: {} for name in METRICS}
        for s in splits:
            a, b = _predictions(run_dir, base["beta"], s), _predictions(run_dir, r["beta"], s)
            assert (a["clip_ids"] == b["clip_ids"]).all(), f"{s}: predictions of different clips"
            for name, (key, _) in METRICS.items():
                boot = paired_bootstrap(a["targets"], a["scores"], b["scores"], key, n_resamples=n_resamples)
                cells[name][s] = {"abs": r["eval"][s]["AUC" if key == "mAUC" else key],
                                  "rel": float(boot["diff"]), "ci95": [float(x) for x in boot["ci95"]]}
        for name in METRICS:
            tables[name].append({"beta": r["beta"], "lr": r["lr"], **cells[name]})
    return tables


def _fig3(run_dir: Path, rows: list[dict], splits: list[str], train_prior: np.ndarray) -> dict:
    lo, hi = min(rows, key=lambda r: r["beta"]), max(rows, key=lambda r: r["beta"])
    out = {"betas": [lo["beta"], hi["beta"]]}
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4), squeeze=False)
    for ax, s in zip(axes[0], splits):
        a, b = _predictions(run_dir, lo["beta"], s), _predictions(run_dir, hi["beta"], s)
        delta = classification_metrics(b["targets"], b["scores"])["ap"] - \
            classification_metrics(a["targets"], a["scores"])["ap"]
        reg = prior_slope(delta, train_prior)
        out[s] = {k: (list(map(float, v)) if isinstance(v, (tuple, list, np.ndarray)) else float(v))
                  for k, v in reg.items()}
        x = np.log10(train_prior)
        ok = np.isfinite(delta)
        ax.scatter(x[ok], delta[ok], s=12, alpha=0.7)
        grid = np.linspace(x[ok].min(), x[ok].max(), 50)
        ax.plot(grid, reg["intercept"] + reg["slope"] * grid, color="C3",
                label=f"slope {reg['slope']:.3f} (p={reg['p']:.2g})")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set(title=s, xlabel="log10 training prior", ylabel=f"AP(beta={hi['beta']:g}) - AP(beta={lo['beta']:g})")
        ax.legend()
    fig.suptitle("Fig. 3: per-class change in AP against training prior")
    fig.tight_layout()
    fig.savefig(run_dir / "report" / "fig3_delta_ap_vs_prior.png", dpi=110)
    plt.close(fig)
    return out


def _fig12(report_dir: Path, tables: dict, splits: list[str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, (_, label)) in zip(axes, METRICS.items()):
        for s in splits:
            betas = [r["beta"] for r in tables[name]]
            rel = np.array([r[s]["rel"] for r in tables[name]])
            ci = np.array([r[s]["ci95"] for r in tables[name]])
            ax.errorbar(betas, rel, yerr=[rel - ci[:, 0], ci[:, 1] - rel], marker="o", capsize=3, label=s)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set(xlabel="beta (oversampling exponent)", ylabel=f"{label} change from beta = 0",
               title=f"{label} vs beta (95% paired bootstrap CI)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "fig1_2_metrics_vs_beta.png", dpi=110)
    plt.close(fig)


def _fig_traces(report_dir: Path, traces: list[dict], rows: list[dict], window: int) -> None:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for i, t in enumerate(sorted(traces, key=lambda t: (t["beta"], t["lr"]))):
        x, y = np.asarray(t["examples"]), np.asarray(t["dprime"])
        ax.plot(x, y, color=f"C{i}", alpha=0.3, lw=0.8)
        ax.plot(x, moving_average(y, window), color=f"C{i}", label=f"beta={t['beta']:g} lr={t['lr']:g}")
    ax.set(xlabel="examples seen", ylabel="validation d'", title=f"validation d' (faint: raw; line: {window}-point centred mean)")
    ax.legend(fontsize=7)
    ax2.bar([f"{r['beta']:g}" for r in rows], [r["examples_to_peak"] for r in rows])
    ax2.set(xlabel="beta", ylabel="examples to the selected checkpoint", title="examples to peak (validation d')")
    fig.tight_layout()
    fig.savefig(report_dir / "validation_traces.png", dpi=110)
    plt.close(fig)


def _prior_shift(run_dir: Path, rows: list[dict], splits: list[str]) -> list[dict]:
    priors = {s: _predictions(run_dir, rows[0]["beta"], s)["targets"].mean(0) for s in splits}
    out = []
    for r in rows:
        for s in splits:
            p = _predictions(run_dir, r["beta"], s)
            for target in splits:
                if target != s:
                    m = prior_shift_metrics(p["targets"], p["scores"], priors[target])
                    out.append({"beta": r["beta"], "split": s, "under_prior_of": target,
                                "mAP": float(m["mAP"]), "mAP_own_prior": r["eval"][s]["mAP"]})
    return out


def _markdown(t: dict) -> str:
    lines = ["# Balancing sweep report", "", "## Table 1: imbalance per partition", "",
             "| partition | clips | imbalance ratio | Gini |", "|---|---|---|---|"]
    lines += [f"| {r['partition']} | {r['clips']:,} | {r['imbalance_ratio']:.1f} | {r['gini']:.3f} |" for r in t["table1"]]
    lines += ["", "## Table 2: the oversampled training set", "",
              "| beta | ratio | Gini | epoch length | max repeat |", "|---|---|---|---|---|"]
    lines += [f"| {r['beta']:g} | {r['imbalance_ratio']:.1f} | {r['gini']:.3f} | {r['epoch_length']:,} | {r['max_repeat']:,} |"
              for r in t["table2"]]
    for name, (_, label) in METRICS.items():
        splits = t["eval_splits"]
        lines += ["", f"## {name.title()}: {label} per beta (change from beta = 0, 95% paired bootstrap CI)", "",
                  "| beta | lr | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
        for r in t[name]:
            cells = [f"{r[s]['abs']:.3f} ({r[s]['rel']:+.3f} [{r[s]['ci95'][0]:+.3f}, {r[s]['ci95'][1]:+.3f}])" for s in splits]
            lines.append(f"| {r['beta']:g} | {r['lr']:g} | " + " | ".join(cells) + " |")
    lines += ["", "## Fig. 3: per-class delta-AP vs log10 training prior", ""]
    for s in t["eval_splits"]:
        f = t["fig3"][s]
        lines.append(f"- {s}: slope {f['slope']:.4f} (95% CI {f['slope_ci95'][0]:.4f} to {f['slope_ci95'][1]:.4f}), "
                     f"r = {f['r']:.3f}, p = {f['p']:.3g}")
    lines += ["", "## Prior shift: each winner's mAP under the other split's class prior", "",
              "| beta | scored on | under the prior of | mAP | mAP (own prior) |", "|---|---|---|---|---|"]
    lines += [f"| {r['beta']:g} | {r['split']} | {r['under_prior_of']} | {r['mAP']:.3f} | {r['mAP_own_prior']:.3f} |"
              for r in t["prior_shift"]]
    lines += ["", "![Fig. 1-2](fig1_2_metrics_vs_beta.png)", "", "![Fig. 3](fig3_delta_ap_vs_prior.png)", "",
              "![validation traces](validation_traces.png)", ""]
    return "\n".join(lines)


def build_report(run_dir: str | Path, n_resamples: int = 1000) -> Path:
    """Write <run_dir>/report/ from results.json and the predictions; returns the folder."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    cfg, rows, splits = results["config"], results["rows"], results["eval_splits"]
    report_dir = run_dir / "report"
    report_dir.mkdir(exist_ok=True)
    store = open_store(cfg["data"]["store"])
    train = cfg["data"]["train_split"]
    train_prior = class_counts(store.labels(train), store.n_classes) / store.split_info(train)["clips"]
    table1, table2 = _imbalance_tables(store, cfg, [r["beta"] for r in rows])
    tables = {"eval_splits": splits, "table1": table1, "table2": table2,
              **_metric_tables(run_dir, rows, splits, n_resamples)}
    tables["fig3"] = _fig3(run_dir, rows, splits, train_prior)
    tables["prior_shift"] = _prior_shift(run_dir, rows, splits)
    _fig12(report_dir, tables, splits)
    _fig_traces(report_dir, results.get("traces", []), rows, cfg["sweep"]["smoothing_window"])
    (report_dir / "tables.json").write_text(json.dumps(tables, indent=1))
    (report_dir / "report.md").write_text(_markdown(tables))
    return report_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweep.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a finished sweep's run directory")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    a = p.parse_args(argv)
    out = build_report(a.run_dir, a.resamples)
    print(f"report written to {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
