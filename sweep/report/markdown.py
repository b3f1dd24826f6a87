"""report.md: the report's tables (sweep/report/tables.py, as tables.json holds them) as Markdown."""
from __future__ import annotations

import math

from sweep.report.tables import METRIC_TABLES, title

__all__ = ["render"]


def render(t: dict) -> str:
    """The whole report.md from the tables dict (tables.json)."""
    lines = ["# Balancing sweep report", ""] + _selection(t["selection"], t["verdict"], t["confidence"]) + ["",
             f"Baseline {t['baseline']}. Changes (Δ) are paired differences from the baseline on the same "
             f"evaluation clips; [lo, hi] is the 95% bootstrap interval of that difference "
             f"({t['n_resamples']} resamples of clips)."]
    lines += _imbalance(t) + _metrics(t)
    if t.get("fig3"):
        lines += _fig3(t["fig3"], t["eval_splits"])
    lines += _prior_shift(t["prior_shift"]) + _convergence(t["convergence"])
    if t.get("failed"):
        lines += ["", "## Failed trials", ""] + [f"- {r['scheme']} β = {r['beta']:g}, lr = {r['lr']:g}, seed "
                                                 f"{r['seed']}: {r['error']}" for r in t["failed"]]
    lines += ["", "Per-class AP and AUC of every model, with training priors: "
              + ", ".join(f"[{f}]({f})" for f in t["per_class"]), ""]
    lines += [f"![{f}]({f})\n" for f in t["figures"]]
    return "\n".join(lines)


def _selection(sel: dict, verdict: dict, conf: dict) -> list[str]:
    """The answer first: the best arm, the verdict on it with p_best per arm (provisional while
    an arm did not learn or did not settle), and whether the comparison is final."""
    head = "Selected" if verdict["resolved"] else "Best on validation (provisional)" if verdict["provisional"] \
        else "Best on validation"
    seeds = f" (the mean over {len(sel['seeds'])} seeds)" if len(sel["seeds"]) > 1 else ""
    which = "Provisional p_best" if verdict["provisional"] else "p_best"
    lines = [f"**{head}: {sel['label']}** (lr {sel['lr']:g}), smoothed validation d' {sel['val_dprime']:.3f}"
             f"{seeds} at its pick after {sel['examples_to_peak']:,} examples.", "",
             f"**Verdict: {verdict['word']}: {verdict['text']}**", "",
             f"{which}, the probability that an arm is best on validation (paired bootstrap over the validation "
             f"clips, {conf['resamples']:,} resamples" + (f", and over {conf['seeds']} seeds" if conf["seeds"] > 1 else "")
             + "): " + ", ".join(f"{label}: {p:.2f}" for label, p in conf["p_best"].items()) + "."]
    if not sel["not_converged"]:
        return lines + ["", "Every arm learned and its pick settled: the comparison is final."]
    late = ", ".join(f"{r['label']} ({r['status']}; raise `train.max_examples` to at least {r['cap_to_settle']:,})"
                     for r in sel["not_converged"])
    return lines + ["", f"**Provisional**: {late}. An arm still improving at the cap, or one that has not started "
                    "learning, may overtake the selection; p_best and the comparison are not final until every "
                    "arm learns and its pick settles. An arm that did not learn shows no result in the tables: "
                    "its numbers are not an effect of balancing."]


def _f(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def _imbalance(t: dict) -> list[str]:
    lines = ["", "## Table 1: imbalance per partition", "",
             "| partition | role | clips | classes | imbalance ratio | Gini |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['partition']} | {r['role']} | {r['clips']:,} | {r['classes_present']} | "
              f"{r['imbalance_ratio']:.1f} | {r['gini']:.3f} |" for r in t["table1"]]
    lines += ["", "## Table 2: the training set as each arm draws it (expected exposure an epoch)", "",
              "| arm | draw | imbalance ratio | Gini | epoch length (draws) | most draws of one clip |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['draw']} | {r['imbalance_ratio']:.1f} | {r['gini']:.3f} | {r['epoch_length']:,} | "
              f"{r['max_clip_exposure']:,.4g} |" for r in t["table2"]]
    return lines


def _metrics(t: dict) -> list[str]:
    """Tables 3 and 4: 'abs (Δ [lo, hi])' per eval split, '-' where a model has no predictions."""
    splits, lines = t["eval_splits"], []
    for table, (_, _, d) in METRIC_TABLES.items():
        lines += ["", f"## {title(table)} per arm: absolute, Δ vs {t['baseline']} [95% CI]", "",
                  "| model | lr | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
        for r in t[table]:
            cells = [f"{_f(c['abs'], f'.{d}f')} ({_f(c['rel'], f'+.{d}f')} [{_f(c['ci95'][0], f'+.{d}f')}, "
                     f"{_f(c['ci95'][1], f'+.{d}f')}])" if c else "-" if r["learned"] else "no result (did not learn)"
                     for c in (r.get(s) for s in splits)]
            lines.append(f"| {r['name']} | {_f(r['lr'], 'g')} | " + " | ".join(cells) + " |")
        undefined = max((c["undefined"] for r in t[table] for c in (r.get(s) for s in splits) if c), default=0)
        if undefined:
            lines += ["", f"In up to {undefined} of the {t['n_resamples']:,} resamples a model's macro AUC was 1 "
                      "(d' infinite) or a class lacked positives or negatives: those resamples are left out of "
                      "the intervals."]
    return lines


def _fig3(f3: dict, splits: list[str]) -> list[str]:
    lines = ["", f"## Fig. 3: per-class ΔAP ({f3['models'][1]} vs {f3['models'][0]}) "
                 "regressed on log10 training prior", ""]
    for s in splits:
        f = f3[s]
        if "slope" not in f:
            lines.append(f"- {s}: not regressed: only {f['n_classes']} class(es) with a ΔAP (3 needed)")
            continue
        lines.append(f"- {s}: slope {f['slope']:+.4f} per decade of prior (95% CI {f['slope_ci95'][0]:+.4f} "
                     f"to {f['slope_ci95'][1]:+.4f}), intercept {f['intercept']:+.4f}, r = {f['r']:.3f}, "
                     f"p = {f['p']:.3g}, {f['n_classes']} classes")
    return lines


def _prior_shift(rows: list[dict]) -> list[str]:
    if not rows:
        return ["", "## Prior shift", "", "Re-scoring under another evaluation split's class prior needs two "
                "evaluation splits (`data.eval_splits`); this sweep has one."]
    lines = ["", "## Prior shift: mAP re-scored under another eval split's class prior (d' unchanged)", "",
             "| model | scored on | under the prior of | mAP | mAP (own prior) | min effective sample size |",
             "|---|---|---|---|---|---|"]
    return lines + [f"| {r['name']} | {r['split']} | {r['under_prior_of']} | {_f(r['mAP'])} | "
                    f"{_f(r['mAP_own_prior'])} | {_f(r['ess_min'], '.1f')} |" for r in rows]


def _convergence(rows: list[dict]) -> list[str]:
    lines = ["", "## Convergence: the selected checkpoint per arm and seed", "",
             "A pick is converged (settled) when the trace has clearly left its starting level (it learned) and "
             "later evaluations with full smoothing windows came after it without a better one; NOT CONVERGED "
             "means the cap on examples came first; did not learn, that the trace never left its start; "
             "eliminated, that racing stopped it once it was confidently not the best, even where it could "
             "still go (its chance of being best is given).", "",
             "The mAP pick is where the smoothed validation mAP peaks (the paper's convergence figures, "
             "33M vs 104M examples, are for mAP); selection stays on d'.", "",
             "| arm | lr | seed | examples to the d' pick | examples to the mAP pick | validation d' (smoothed) | "
             "validation d' (raw) | converged |",
             "|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['label']} | {r['lr']:g} | {r['seed']} | {r['examples_to_peak']:,} | "
                    f"{_f(r.get('examples_to_map_peak'), ',')} | {_f(r['val_dprime'])} | {_f(r['val_dprime_raw'])} | "
                    f"{_status(r)} |" for r in rows]


def _status(r: dict) -> str:
    """A pick's status in the convergence table."""
    if r.get("eliminated"):
        return f"eliminated at {r['eliminated']['examples']:,} (p_best {r['eliminated']['p']:.3f})"
    return "yes" if r.get("converged") else "**NOT CONVERGED**" if r.get("learned") else "**did not learn**"
