"""The report's figures as PNG, drawn with matplotlib's object-oriented API (a `Figure` on an Agg
canvas: no pyplot, no global backend).

    fig1_2_metrics_vs_beta   mAP and d' vs beta (a line per scheme), change from the baseline, 95% CI bars
    fig3_delta_ap_vs_prior   per-class delta-AP against log10 training prior, with the fitted line
    validation_traces        raw and smoothed validation d' per trial, selected checkpoints starred,
                             where each trial stopped and why (settled, the cap, or racing)
    examples_to_peak         training examples to each arm's selected checkpoint
    p_best                   the probability that each arm is best on validation, and the verdict

An arm is a scheme at a beta; it is named by its label (`beta=0.5`, `psla beta=0.5`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from sweep.select import StoppingRule, settled, smoothed
from sweep.report.tables import METRIC_TABLES

__all__ = ["FIGURES", "draw_figures", "metrics_vs_beta", "delta_ap_vs_prior", "validation_traces",
           "examples_to_peak", "p_best"]

FIGURES = ("fig1_2_metrics_vs_beta.png", "fig3_delta_ap_vs_prior.png", "validation_traces.png",
           "examples_to_peak.png", "p_best.png")
DPI = 110


def draw_figures(out_dir: Path, tables: dict, rows: list[dict], traces: list[dict] | None, rule: StoppingRule
                 ) -> list[str]:
    """Every figure that applies, written to out_dir; returns their file names. tables: the
    report's tables (tables.json); rows: results.json rows, the baseline first
    (tables.ordered_rows); traces: results.json traces; rule: the sweep's stopping rule.
    Figs. 1-3 and p_best need two arms, the traces need traces."""
    made = []
    if sum(r["learned"] for r in rows) > 1 and rows[0]["learned"]:  # changes from a baseline that learned
        metrics_vs_beta(out_dir / FIGURES[0], tables, tables["eval_splits"], tables["baseline"])
        made.append(FIGURES[0])
    if tables["fig3"]:
        delta_ap_vs_prior(out_dir / FIGURES[1], tables["fig3"], tables["eval_splits"])
        made.append(FIGURES[1])
    if traces:
        validation_traces(out_dir / FIGURES[2], traces, rows, rule)
        made.append(FIGURES[2])
    examples_to_peak(out_dir / FIGURES[3], rows)
    made.append(FIGURES[3])
    if len(rows) > 1:
        p_best(out_dir / FIGURES[4], tables["p_best"], tables["verdict"], tables["selection"])
        made.append(FIGURES[4])
    return made


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _si(x: float, _pos=None) -> str:
    """1.5M, 20k, ...: 3 significant digits with an SI suffix."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def metrics_vs_beta(path: Path, tables: dict, splits: list[str], base: str) -> None:
    """Fig. 1 (mAP) and Fig. 2 (d') vs beta: change from the baseline (the arm named `base`) per
    eval split (colour) and scheme (line style), each line starting at the baseline, with 95%
    paired bootstrap CI bars. An arm that did not learn within the cap has no point (it has no
    result); the title names it."""
    fig = _figure((12, 4.6))
    axes = fig.subplots(1, 2)
    arms = [r for r in tables["table4"] if r["beta"] is not None]
    schemes = list(dict.fromkeys(r["scheme"] for r in arms if r["name"] != base))
    betas = sorted({r["beta"] for r in arms})
    span, n_lines = (max(betas) - min(betas)) or 1.0, len(splits) * len(schemes)
    for ax, table, fig_no in zip(axes, ("table4", "table3"), (1, 2)):
        label = METRIC_TABLES[table][1]
        rows = [r for r in tables[table] if r["beta"] is not None]
        base_row = next(r for r in rows if r["name"] == base)
        for k, (s, scheme) in enumerate((s, scheme) for s in splits for scheme in schemes):
            line = [base_row, *sorted((r for r in rows if r["scheme"] == scheme and r is not base_row
                                       and r.get(s) is not None), key=lambda r: r["beta"])]
            x = np.array([r["beta"] for r in line]) + (k - (n_lines - 1) / 2) * 0.012 * span  # CI bars apart
            rel, ci = np.array([r[s]["rel"] for r in line]), np.array([r[s]["ci95"] for r in line])
            j = schemes.index(scheme)
            ax.errorbar(x, rel, yerr=[rel - ci[:, 0], ci[:, 1] - rel], marker="os^D"[j % 4], ms=5, capsize=3,
                        lw=1.5, ls=("-", "--", ":", "-.")[j % 4], color=f"C{splits.index(s) % 10}",
                        label=(s if len(schemes) == 1 else f"{s}, {scheme}")
                        + f" ({label} at {base}: {base_row[s]['abs']:.3f})")
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(betas)
        ax.set_xticklabels([f"{b:g}" for b in betas])
        unlearned = [r["name"] for r in rows if not r["learned"]]
        ax.set(xlabel="β (oversampling exponent; 0 = natural, 1 = fully balanced)",
               ylabel=f"Δ{label} vs {base}",
               title=f"Fig. {fig_no}: {label} vs β (bars: 95% paired bootstrap CI)"
               + (f"\nno result: {', '.join(unlearned)} did not learn within the cap" if unlearned else ""))
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def delta_ap_vs_prior(path: Path, fig3: dict, splits: list[str]) -> None:
    """Fig. 3, one panel per eval split: per-class AP change against log10 training prior, with
    the least-squares line and its slope's bootstrap CI (tables' fig3)."""
    x_all = np.array(fig3["log10_prior"], dtype=float)
    fig = _figure((5.4 * len(splits), 4.4))
    axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)
    lo, hi = fig3["models"]
    for j, (ax, s) in enumerate(zip(axes[0], splits)):
        d = np.array([np.nan if v is None else v for v in fig3[s]["delta_ap"]], dtype=float)
        ok = np.isfinite(d) & np.isfinite(x_all)
        x = x_all[ok]
        ax.scatter(x, d[ok], s=14, alpha=0.7, color="C0", label=f"classes ({ok.sum()})")
        f = fig3[s]
        if "slope" in f:  # regressed: at least 3 classes
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(grid, f["intercept"] + f["slope"] * grid, color="C3", lw=1.8,
                    label=f"slope {f['slope']:+.3f} [{f['slope_ci95'][0]:+.3f}, {f['slope_ci95'][1]:+.3f}]\n"
                          f"r = {f['r']:.2f}, p = {f['p']:.2g}")
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set(title=f"{s}", xlabel="log10 training prior (fraction of training clips labelled)")
        if j == 0:
            ax.set_ylabel(f"ΔAP per class: AP({hi}) − AP({lo})")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Fig. 3: per-class change in AP ({hi} vs {lo}) against training prior; "
                 "slope with 95% bootstrap CI over classes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def validation_traces(path: Path, traces: list[dict], rows: list[dict], rule: StoppingRule) -> None:
    """One panel per arm (in the rows' order), one colour per learning rate: raw validation d'
    (faint) and its centred moving average (solid); a star at each seed's selected checkpoint;
    where each trial stopped, and why: a dot once its pick settled, a bar at the cap, a cross
    where racing eliminated it."""
    window = rule.window
    arms = list(dict.fromkeys([r["label"] for r in rows] + [t["label"] for t in traces]))
    lrs = sorted({t["lr"] for t in traces})
    ncol = min(4, len(arms))
    nrow = math.ceil(len(arms) / ncol)
    fig = _figure((3.6 * ncol + 0.6, 3.0 * nrow + 0.9))
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    picks = {s["trial"]: s for r in rows for s in r["seeds"]}
    status = {r["label"]: r["status"] for r in rows}
    for ax, arm in zip(axes.flat, arms):
        for t in (t for t in traces if t["label"] == arm):
            _trace(ax, t, f"C{lrs.index(t['lr']) % 10}", picks.get(t["trial"]), rule)
        ax.set_title(arm + ("" if status.get(arm, "settled") == "settled" else f" ({status[arm]})"), fontsize=10,
                     color="k" if status.get(arm, "settled") == "settled" else "C3")
        ax.grid(alpha=0.25)
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
    for ax in axes.flat[len(arms):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(arms)]):
        if i + ncol >= len(arms):  # nothing below it: show its x axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training examples seen")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation d'")
    handles = [Line2D([], [], color=f"C{i % 10}", lw=1.6, label=f"lr = {lr:g}") for i, lr in enumerate(lrs)]
    handles += [Line2D([], [], color="0.4", alpha=0.35, lw=0.8, label="raw"),
                Line2D([], [], color="0.4", lw=1.6, label=f"{window}-point centred mean (full windows)"),
                Line2D([], [], color="0.4", marker="*", ms=11, mec="k", ls="", label="selected checkpoint")]
    handles += [Line2D([], [], color="0.4", marker=m, ms=8, ls="", label=f"stopped: {why}") for why, m in STOPS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Validation d' per trial", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if nrow == 1 else 0.04, 1, 1))
    fig.savefig(path, dpi=DPI)


STOPS = {"settled": "o", "cap": "|", "eliminated": "x"}  # why a trial stopped -> its marker


def _trace(ax, t: dict, color: str, pick: dict | None, rule: StoppingRule) -> None:
    """One trial: raw and smoothed d', a star at its pick if it is a selected one, and a marker
    (STOPS) at its last evaluation saying why it stopped."""
    x, y = np.asarray(t["examples"], dtype=float), np.asarray(t["dprime"], dtype=float)
    if not len(x):
        return
    ax.plot(x, y, color=color, alpha=0.35, lw=0.8)
    smooth = smoothed(y, rule.window)
    ax.plot(x, smooth, color=color, lw=1.6)
    if pick and pick["examples_to_peak"] in x:
        i = int(np.flatnonzero(x == pick["examples_to_peak"])[0])
        ax.plot(x[i], smooth[i], marker="*", ms=13, color=color, mec="k", zorder=5)
    why = "eliminated" if t.get("eliminated") else "settled" if settled(y, x, rule, t.get("start")) else "cap"
    ax.plot(x[-1], y[-1], marker=STOPS[why], ms=9, mew=2, color=color, zorder=6)


def examples_to_peak(path: Path, rows: list[dict]) -> None:
    """Bars: training examples to each arm's selected checkpoint (the mean over seeds), labelled
    with its lr."""
    fig = _figure((1.2 * len(rows) + 3, 3.8))
    ax = fig.subplots()
    values = [r["examples_to_peak"] for r in rows]
    bars = ax.bar([r["label"] for r in rows], values, color="C0", width=0.6)
    for bar, r in zip(bars, rows):
        ax.annotate(f"{_si(r['examples_to_peak'])}\nlr {r['lr']:g}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.yaxis.set_major_formatter(FuncFormatter(_si))
    ax.set_ylim(0, max(values) * 1.25 if max(values) > 0 else 1)
    ax.set(xlabel="arm (β: the oversampling exponent)", ylabel="training examples seen",
           title="Examples to the selected checkpoint (peak smoothed validation d')")
    ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def p_best(path: Path, probabilities: dict[str, float], verdict: dict, selection: dict) -> None:
    """Bars: the probability that each arm is best on validation (bootstrap over validation
    clips, and seeds), the 0.95 a resolved verdict needs marked, the verdict as the title. While
    the verdict is provisional (an arm did not learn or did not settle) the bars are hatched, the
    0.95 line is left out and the title says why: more training can still move them."""
    fig = _figure((1.1 * len(probabilities) + 3, 3.6))
    ax = fig.subplots()
    provisional = verdict["provisional"]
    bars = ax.bar(list(probabilities), list(probabilities.values()), color="0.75" if provisional else "C2",
                  hatch="//" if provisional else None, edgecolor="0.4", width=0.6)
    for bar, v in zip(bars, probabilities.values()):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, 1.12)
    ax.set(xlabel="arm (β: the oversampling exponent)", ylabel="provisional p_best" if provisional else "p_best")
    if provisional:
        late = ", ".join(f"{r['label']} {r['status']}" for r in selection["not_converged"])
        ax.set_title(f"PROVISIONAL: {late}\n(no 0.95 line: p_best can move until every arm settles)", fontsize=9)
    else:
        ax.axhline(0.95, color="0.3", ls="--", lw=0.8)
        ax.set_title(verdict["word"] + " (dashed: 0.95 to be resolved)", fontsize=10)
    ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
