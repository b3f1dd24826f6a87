"""What `python -m sweep.run` shows, as text: the header (what is about to run, and how trials
stop), the progress table (printed while the sweep runs by sweep/progress.py), and the answer.

The progress table is one 80-column table of the grid - beta, lr, examples seen, validation d'
(raw and smoothed), the current pick and the status of each trial, the best pick so far
marked - with the elapsed time and an ETA bound: the time left if every unfinished trial
trains to the cap at the rate seen so far (trials whose pick settles stop earlier).
"""
from __future__ import annotations

import math
from dataclasses import replace

from model.config import ModelConfig, arch_kind
from sweep.config import Config
from sweep.racing import EXPECTED_COMPUTE
from sweep.select import latest_settled_pick

__all__ = ["eta_seconds", "format_progress", "stopping_statement", "racing_statement", "model_line", "header",
           "answer_lines"]


def eta_seconds(remaining: list[float], rate: float | None, pending: int, startup_s: float,
                concurrency: int) -> float | None:
    """Upper bound on the seconds left: `remaining` examples of the started trials and `pending`
    trials still to start (each a start-up plus the cap, in `remaining` too), at `rate`
    examples/s per trial, `concurrency` trials at a time. None before any rate is known."""
    if rate is None or rate <= 0:
        return None
    return (sum(remaining) / rate + pending * startup_s) / max(1, concurrency)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _si(x: float) -> str:
    """46k, 1.2M: an example count in 3 significant digits."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:g}"


def format_progress(rows: list[dict], elapsed_s: float, eta_s: float | None) -> str:
    """The progress table. rows: trial (its arm's label, ` s<seed>` with several seeds), lr,
    status, and when known examples, dprime, smoothed, pick (smoothed d' at the pick),
    pick_examples; the best pick is marked with '*' (said under the table)."""
    done = sum(r["status"] not in ("running", "pending", "paused") for r in rows)
    eta = "ETA after the first evaluation" if eta_s is None else "ETA < 1 min" if eta_s < 60 else \
        f"ETA <= {math.ceil(eta_s / 60)} min (less if picks settle)"
    width = max([7] + [len(r["trial"]) for r in rows])
    lines = [f"{_clock(elapsed_s)} elapsed, {done}/{len(rows)} trials done, {eta}",
             f"{'arm':>{width}} {'lr':>7} {'examples':>11} {'val d':>7}' {'smoothed':>8} {'pick@examples':>14}  status"]
    picks = [r["pick"] for r in rows if r.get("pick") is not None and math.isfinite(r["pick"])]
    best = max(picks) if picks else None

    def num(value, fmt):
        return "-" if value is None or not math.isfinite(value) else format(value, fmt)

    for r in rows:
        pick = "-" if r.get("pick") is None or not math.isfinite(r["pick"]) else \
            f"{r['pick']:.3f}@{_si(r['pick_examples'])}"
        mark = "*" if best is not None and r.get("pick") == best else " "
        examples = "-" if r.get("examples") is None else f"{r['examples']:,}"
        lines.append(f"{r['trial']:>{width}} {r['lr']:>7g} {examples:>11} {num(r.get('dprime'), '.3f'):>8} "
                     f"{num(r.get('smoothed'), '.3f'):>8} {pick:>14}{mark} {r['status']}")
    if best is not None:
        lines.append("* the best pick so far (smoothed validation d' at the pick @ examples there)")
    return "\n".join(lines)


def stopping_statement(cfg: Config) -> tuple[str, str | None]:
    """How trials stop, in one line, and a warning when the cap leaves few picks that can
    settle (None otherwise): the latest evaluation whose pick can still settle before
    `train.max_examples` (sweep/select.py `latest_settled_pick`)."""
    rule, t = cfg.sweep.rule, cfg.train
    settles = (f"a pick settles after {rule.patience} full-window evaluations without a better one "
               f"and {rule.ratio:g}x its examples ({rule.window}-evaluation window)")
    latest = latest_settled_pick(t.max_examples, t.eval_every_examples, rule)
    cadence = f"evaluations every {t.eval_every_examples:,} examples, cap {t.max_examples:,}"
    if cfg.sweep.train_to_cap:
        line = f"every trial trains to the cap (sweep.train_to_cap); {settles}; {cadence}"
    else:
        line = f"{settles}; {cadence}"
    if latest == 0:
        return line + "; no pick can settle", (
            f"no pick can settle within train.max_examples={t.max_examples:,} at one evaluation every "
            f"{t.eval_every_examples:,}: every trial will be NOT CONVERGED; raise the cap or evaluate more often")
    line += f": picks after {latest:,} examples ({latest / t.max_examples:.0%} of the cap) cannot settle"
    evals = latest // t.eval_every_examples
    if evals < 2 * rule.window or latest < 0.4 * t.max_examples:
        return line, (f"only picks in the first {evals} evaluations ({latest:,} examples) can settle within "
                      f"train.max_examples={t.max_examples:,}: a trial still improving there will be NOT "
                      "CONVERGED; raise the cap or evaluate more often (train.eval_every_examples)")
    return line, None


def model_line(m: ModelConfig) -> str:
    """The model in one line: its architecture, parameter count (the model built without its
    weights), input and classes, and the weights it starts from."""
    from model.factory import build_model, parameter_count  # torch: only what shows a model needs it
    model, kind = build_model(replace(m, weights=None)), arch_kind(m.arch)
    name = (f"AST {m.size} ({model.embed_dim} wide, {len(model.blocks)} deep)" if kind == "ast"
            else f"{m.arch} (timm, 1 input channel)" if kind == "timm" else f"{m.arch} (your factory)")
    if m.options:
        name += " " + ", ".join(f"{k}={v}" for k, v in m.options.items())
    return (f"{name}, {parameter_count(model):,} parameters, {m.frames} frames x {m.mels} mels, {m.n_classes} classes"
            + (f", from {m.weights}" if m.weights else ""))


def racing_statement(cfg: Config) -> str:
    """Racing and refinement as configured, in one line, with the compute they are expected to
    save (sweep/racing.py EXPECTED_COMPUTE: simulated paper-scale sweeps)."""
    s = cfg.sweep
    if s.train_to_cap or not s.racing:
        return "off: every trial trains until its pick settles" + (" (to the cap: sweep.train_to_cap)" if s.train_to_cap else "")
    refine = (f"; the beta grid refines down to {s.beta_step:g}, up to {s.max_arms} arms" if s.beta_step
              else "; the beta grid as given (sweep.beta_step refines it)")
    return (f"on: an arm or learning rate whose chance of being best is below {s.racing_p:g} stops{refine}; in simulated "
            f"paper-scale sweeps about {EXPECTED_COMPUTE:.2f}x the stopping rule's compute (bench/sweep_sim.py)")


def header(cfg: Config, config_path, fingerprint: str, uri: str, experiment: str) -> str:
    """What the sweep is about to run, in a few lines (`--print-config` shows every value)."""
    from sweep.tracking import shown  # (MLflow is not needed to print results)
    r = cfg.resources
    grid = len(cfg.sweep.trials)
    return "\n".join([
        f"config     {config_path}  (--print-config shows every value)",
        f"store      {cfg.data.store}  train {fingerprint}",
        f"model      {model_line(cfg.model)}",
        "grid       " + (f"{len(cfg.sweep.arms)} arms (recipe {cfg.sweep.schemes} x beta {cfg.sweep.betas}, "
                            "beta 0 once)" if len(cfg.sweep.schemes) > 1 else f"beta {cfg.sweep.betas}")
        + f" x lr {cfg.sweep.lrs}" + (f" x seed {cfg.sweep.seeds}" if len(cfg.sweep.seeds) > 1 else "")
        + f" = {grid} trial{'s' * (grid != 1)}",
        f"stopping   {stopping_statement(cfg)[0]}",
        f"racing     {racing_statement(cfg)}",
        f"resources  {r.num_workers} worker(s) x {'1 GPU' if r.use_gpu else f'{r.cpus_per_worker:g} CPU'} per trial",
        f"mlflow     {shown(uri)}  experiment {experiment!r}",
    ])


def answer_lines(summary: dict) -> list[str]:
    """p_best (provisional while the verdict is), the verdict, and the best arm on validation:
    how results.txt and the console end."""
    v, best = summary["verdict"], summary["selection"]
    p_best = ", ".join(f"{label} {p:.2f}" for label, p in summary["p_best"].items())
    provisional = " - PROVISIONAL, an arm is unsettled" if v["provisional"] else ""
    lines = [f"p_best (probability of being best on validation{provisional}): {p_best}",
             f"verdict: {v['word']}: {v['text']}"]
    head = ("no answer (no arm learned): highest on validation" if not any(r["learned"] for r in summary["rows"])
            else "selected" if v["resolved"] else "provisional: best on validation" if v["provisional"]
            else "best on validation")
    seeds = f" over {len(best['seeds'])} seeds" if len(best["seeds"]) > 1 else ""
    line = (f"{head}: {best['label']} lr={best['lr']:g} (smoothed validation d' {best['val_dprime']:.3f}{seeds} at its "
            f"pick after {best['examples_to_peak']:,} examples")
    late = best["not_converged"]
    if late:
        line += "; " + ", ".join(f"{r['label']} {r['status']} (needs train.max_examples >= {r['cap_to_settle']:,})"
                                 for r in late)
    else:
        line += "; every pick settled"
    failed = len(summary["failed"]) + len(summary["diverged"])
    return lines + [line + f"; {failed} failed or diverged trial(s))"]
