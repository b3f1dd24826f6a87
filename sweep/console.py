"""What `python -m sweep.run` shows, as text: the header (what is about to run, and how trials
stop), the progress table (printed while the sweep runs by sweep/progress.py), and the answer.

The progress table is one 80-column table of the grid - beta, lr, examples seen, validation d'
(raw and smoothed), the current pick and the status of each trial, the best pick so far
marked - with the elapsed time and an ETA bound: the time left if every unfinished trial
trains to the cap at the rate seen so far (trials whose pick settles stop earlier).
"""
from __future__ import annotations

import math

from sweep.config import Config
from sweep.select import latest_settled_pick

__all__ = ["eta_seconds", "format_progress", "stopping_statement", "header", "answer"]


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


def format_progress(rows: list[dict], elapsed_s: float, eta_s: float | None) -> str:
    """The progress table. rows: beta, lr, seed, status, and when known examples, dprime,
    smoothed, pick (smoothed d' at the pick), pick_examples; the best pick is marked with '*';
    with several seeds a trial's beta is shown as <beta>/s<seed>."""
    done = sum(r["status"] not in ("running", "pending", "paused") for r in rows)
    eta = "ETA after the first evaluation" if eta_s is None else "ETA < 1 min" if eta_s < 60 else \
        f"ETA <= {math.ceil(eta_s / 60)} min (less if picks settle)"
    header = ("beta", "lr", "examples", "val d'", "smoothed", "pick (examples)")
    lines = [f"{_clock(elapsed_s)} elapsed, {done}/{len(rows)} trials done, {eta}",
             "{:>7} {:>7} {:>11} {:>7} {:>8} {:>19}  status".format(*header)]
    seeds = len({r["seed"] for r in rows}) > 1
    picks = [r["pick"] for r in rows if r.get("pick") is not None and math.isfinite(r["pick"])]
    best = max(picks) if picks else None

    def num(value, fmt):
        return "-" if value is None or not math.isfinite(value) else format(value, fmt)

    for r in rows:
        pick = "-" if r.get("pick") is None or not math.isfinite(r["pick"]) else \
            f"{r['pick']:.3f} ({r['pick_examples']:,})"
        mark = "*" if best is not None and r.get("pick") == best else " "
        examples = "-" if r.get("examples") is None else f"{r['examples']:,}"
        trial = f"{r['beta']:g}/s{r['seed']}" if seeds else f"{r['beta']:g}"
        lines.append(f"{trial:>7} {r['lr']:>7g} {examples:>11} {num(r.get('dprime'), '.3f'):>7} "
                     f"{num(r.get('smoothed'), '.3f'):>8} {pick:>19}{mark} {r['status']}")
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


def header(cfg: Config, config_path, fingerprint: str, uri: str, experiment: str) -> str:
    """What the sweep is about to run, in a few lines (`--print-config` shows every value)."""
    m, r = cfg.model, cfg.resources
    grid = len(cfg.sweep.betas) * len(cfg.sweep.lrs) * len(cfg.sweep.seeds)
    return "\n".join([
        f"config     {config_path}  (--print-config shows every value)",
        f"store      {cfg.data.store}  train {fingerprint}",
        f"model      AST {m.size} ({m.embed_dim or '-'} wide, {m.depth or '-'} deep), {m.frames} frames x "
        f"{m.mels} mels, {m.n_classes} classes",
        f"grid       beta {cfg.sweep.betas} x lr {cfg.sweep.lrs}"
        + (f" x seed {cfg.sweep.seeds}" if len(cfg.sweep.seeds) > 1 else "") + f" = {grid} trial{'s' * (grid != 1)}",
        f"stopping   {stopping_statement(cfg)[0]}",
        f"resources  {r.num_workers} worker(s) x {'1 GPU' if r.use_gpu else f'{r.cpus_per_worker:g} CPU'} per trial",
        f"mlflow     {uri}  experiment {experiment!r}",
    ])


def answer(summary: dict) -> str:
    """The selection in one line: stated as selected only when the verdict (results.txt, above
    it on the console) is resolved; else the best on validation, provisional while a beta's pick
    has not settled, with the cap each would need."""
    best, late = summary["selection"], summary["selection"]["not_converged"]
    resolved = summary["verdict"].startswith("resolved")
    head = "selected" if resolved else "provisional: best on validation" if late else "best on validation"
    seeds = f" over {len(best['seeds'])} seeds" if len(best["seeds"]) > 1 else ""
    line = (f"{head}: beta={best['beta']:g} lr={best['lr']:g} (smoothed validation d' {best['val_dprime']:.3f}"
            f"{seeds} after {best['examples_to_peak']:,} examples")
    if late:
        line += "; NOT CONVERGED for " + ", ".join(f"beta {r['beta']:g} (needs train.max_examples >= "
                                                   f"{r['cap_to_settle']:,})" for r in late)
    else:
        line += "; every pick settled"
    failed = len(summary["failed"]) + len(summary["diverged"])
    return line + f"; {failed} failed or diverged trial(s))"
