"""From a finished Tune sweep to the answer: each trial's trace, the selection (paper 3.2), how
sure it is (sweep/confidence.py), each beta's picks evaluated on every evaluation split, and
the rows of results.json.

`traces(...)` reads every trial's validation trace from its checkpoints (the canonical
history: it survives worker restarts and resumed sweeps); `summarise(...)` leaves out trials
whose training diverged, selects per beta and overall (sweep/select.py), evaluates exactly the
selected checkpoints (never a neighbour), one per replicate seed, and returns what
results.json holds, with the verdict.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import ray
import ray.train
import torch
from tqdm import tqdm

import numpy as np

from data.cli import Failure
from data.store import open_store
from sweep.bootstrap import bootstrap_counts
from sweep.checkpoint import checkpoint_dir, has_weights, list_checkpoints, load_model, load_scores, load_state
from sweep.confidence import confidence, resampled_pick_dprime, verdict
from sweep.config import Config, to_dict
from sweep.evaluate import evaluate_split, save_predictions
from sweep.select import (BetaSelection, TrialTrace, cap_to_settle, select_overall, select_per_beta,
                          select_trial, smoothed)

__all__ = ["SelectionError", "CHANCE_DPRIME", "DIVERGED_LOSS", "trial_run_path", "finished_trials", "traces",
           "check_selected_checkpoints", "evaluate_winners", "results_row", "selection_summary",
           "selection_confidence", "summarise"]

CHANCE_DPRIME = 0.1   # a pick below this smoothed validation d' (macro AUC 0.528) is at chance
DIVERGED_LOSS = 10.0  # a mean training BCE above this (or not finite) is a diverged trial


class SelectionError(Failure):
    """Selection cannot stand behind an answer (no pick, a selected checkpoint missing); the
    message names it."""


def trial_run_path(train_runs: str, trial_id: str) -> str:
    """A trial's Train run directory (the Train run name is stable per trial: sweep/tune.py)."""
    return os.path.join(train_runs, f"train-{trial_id}")


def finished_trials(results, train_runs: str) -> set[tuple[float, float]]:
    """(beta, lr) of the trials that finished (their last checkpoint says why they stopped) or
    failed: what an interrupted sweep does not have to run again."""
    done = set()
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(trial_run_path(train_runs, trial_id)) if trial_id else []
        if r.error or (checkpoints and checkpoints[-1][1].get("stopped")):
            done.add((float(r.config["beta"]), float(r.config["lr"])))
    return done


def traces(results, train_runs: str) -> tuple[list[TrialTrace], list[dict], list[dict]]:
    """Each trial's validation trace; the failed trials ({beta, lr, seed, trial_id, error}); and
    the trials whose training diverged (a training loss not finite or above DIVERGED_LOSS: {beta,
    lr, seed, trial_id, train_loss}), which are not traced. Each evaluation maps to its own
    checkpoint while that still holds its weights, else to None (pruned)."""
    found, failed, diverged = [], [], []
    for r in results:
        beta, lr, seed = float(r.config["beta"]), float(r.config["lr"]), int(r.config["seed"])
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(trial_run_path(train_runs, trial_id)) if trial_id else []
        if r.error or not checkpoints:
            failed.append({"beta": beta, "lr": lr, "seed": seed, "trial_id": trial_id, "error": str(r.error)})
        if not checkpoints:
            continue
        history = checkpoints[-1][1]["history"]
        loss = np.asarray(history["train_loss"], dtype=np.float64)
        bad = ~np.isfinite(loss) | (loss > DIVERGED_LOSS)
        if bad.any():
            diverged.append({"beta": beta, "lr": lr, "seed": seed, "trial_id": trial_id,
                             "train_loss": float(loss[np.argmax(bad)])})
            continue
        own = {state["examples"]: path for path, state in checkpoints if has_weights(path)}
        found.append(TrialTrace(trial_id, beta, lr, seed, history["examples"], history["val_dprime"],
                                history["val_mAP"], [own.get(e) for e in history["examples"]]))
    return found, failed, diverged


def check_selected_checkpoints(per_beta: dict[float, BetaSelection]) -> None:
    """Every selected evaluation still has its own checkpoint, or SelectionError naming it."""
    for beta, bsel in sorted(per_beta.items()):
        for sel in bsel.picks:
            if sel.checkpoint is None:
                raise SelectionError(
                    f"the checkpoint of trial {sel.trial_id} (beta={beta:g}, lr={sel.lr:g}, seed {sel.seed}) at "
                    f"{sel.examples_to_peak:,} examples (evaluation {sel.index + 1}), selected on smoothed "
                    "validation d', was not kept; no other checkpoint is substituted")


def _evaluate_checkpoint(checkpoint: str, store_dir: str, splits: list[str], batch_size: int) -> dict:
    """One winner on every evaluation split (a Ray task: on a GPU node when trials use GPUs):
    {"examples": examples seen by the checkpoint evaluated, "splits": {split: evaluation}}."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with ray.train.Checkpoint(checkpoint).as_directory() as d:  # local, or fetched from s3://
        model, examples = load_model(d, device), load_state(d)["examples"]
    store = open_store(store_dir)
    return {"examples": examples, "splits": {s: evaluate_split(model, store, s, batch_size, device) for s in splits}}


def predictions_path(run_dir: str | Path, beta: float, seed: int, split: str) -> Path:
    """Where a beta's pick in one seed saves its scores on an evaluation split."""
    return Path(run_dir) / "predictions" / f"beta={beta:g}" / f"seed={seed}" / f"{split}.npz"


def evaluate_winners(cfg: Config, per_beta: dict[float, BetaSelection]) -> list[dict]:
    """Every seed's pick of each beta's selected learning rate on every evaluation split (Ray
    tasks); predictions saved (`predictions_path`); the results.json rows, by beta."""
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.resources.use_gpu else 0)(_evaluate_checkpoint)
    picks = [sel for b in sorted(per_beta) for sel in per_beta[b].picks]
    futures = {task.remote(sel.checkpoint, cfg.data.store, cfg.data.eval_splits, cfg.train.eval_batch_size): i
               for i, sel in enumerate(picks)}
    done = {}
    with tqdm(total=len(futures), desc="evaluating the selected checkpoints", unit="pick") as bar:
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[futures[ready[0]]] = ray.get(ready[0])
            bar.update()
    evaluated = {}
    for i, sel in enumerate(picks):
        result = done[i]
        if result["examples"] != sel.examples_to_peak:
            raise SelectionError(f"{sel.checkpoint}: holds {result['examples']:,} examples, selection "
                                 f"picked {sel.examples_to_peak:,}")
        for split, res in result["splits"].items():
            save_predictions(predictions_path(cfg.run.run_dir, sel.beta, sel.seed, split), res)
        evaluated[(sel.beta, sel.seed)] = (result["examples"], {s: r["metrics"] for s, r in result["splits"].items()})
    return [results_row(per_beta[b], {sel.seed: evaluated[(b, sel.seed)] for sel in per_beta[b].picks})
            for b in sorted(per_beta)]


def results_row(bsel: BetaSelection, evaluated: dict[int, tuple[int, dict[str, dict]]]) -> dict:
    """One beta's row of results.json: its learning rate, its picks' mean (and, over seeds, sd) of
    the smoothed validation d', examples to the pick and mAP, AUC and d' per eval split, whether
    every pick settled, and per seed the pick itself (`seeds`: the Selection, the examples its
    evaluated checkpoint had seen, its metrics). `evaluated`: seed -> (examples, split ->
    classification_metrics)."""
    seeds = []
    for sel in bsel.picks:
        examples, metrics = evaluated[sel.seed]
        seeds.append({**asdict(sel), "examples_evaluated": examples,
                      "eval": {s: {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"]} for s, m in metrics.items()}})
    splits, keys = list(seeds[0]["eval"]), ("mAP", "AUC", "dprime")

    def over_seeds(f):
        return {s: {k: float(f([r["eval"][s][k] for r in seeds])) for k in keys} for s in splits}
    map_peaks = [r["examples_to_map_peak"] for r in seeds if r["examples_to_map_peak"] is not None]
    return {"beta": bsel.beta, "lr": bsel.lr, "val_dprime": bsel.val_dprime,
            "val_dprime_sd": float(np.std([r["val_dprime"] for r in seeds])), "converged": bsel.converged,
            "examples_to_peak": int(np.mean([r["examples_to_peak"] for r in seeds])),
            "examples_to_map_peak": int(np.mean(map_peaks)) if map_peaks else None,
            "eval": over_seeds(np.mean), "eval_sd": over_seeds(np.std), "seeds": seeds}


def selection_summary(best: BetaSelection, per_beta: dict[float, BetaSelection], cfg: Config) -> dict:
    """results.json's `selection`: the best beta (its learning rate, mean smoothed validation d'
    and examples to the pick over seeds), and whether the comparison is final (every beta's
    pick settled) or provisional (`not_converged`: the betas whose picks did not, with the cap
    the latest would need at least)."""
    late = [{"beta": b, "examples_to_peak": max(p.examples_to_peak for p in s.picks),
             "cap_to_settle": max(cap_to_settle(p.examples_to_peak, cfg.train.eval_every_examples, cfg.sweep.rule)
                                  for p in s.picks)}
            for b, s in sorted(per_beta.items()) if not s.converged]
    return {"beta": best.beta, "lr": best.lr, "val_dprime": best.val_dprime,
            "examples_to_peak": int(np.mean([p.examples_to_peak for p in best.picks])),
            "seeds": [p.seed for p in best.picks], "all_converged": not late,
            "status": "provisional" if late else "final", "not_converged": late}


def selection_confidence(cfg: Config, found: list[TrialTrace], train_runs: str) -> dict:
    """sweep.confidence.confidence of the sweep's selection, from the validation scores each
    trial kept for its pick's window (the same resamples of the validation clips for all)."""
    store = open_store(cfg.data.store)
    targets = store.labels(cfg.data.valid_split).multi_hot(store.n_classes)
    counts = bootstrap_counts(len(targets), cfg.sweep.confidence_resamples, seed=0)
    w, h = cfg.sweep.smoothing_window, cfg.sweep.smoothing_window // 2
    trials = []
    for t in found:
        sel = select_trial(t, cfg.sweep.rule)
        if sel is None:
            continue
        window = []
        for j in range(sel.index - h, sel.index + h + 1):
            path = os.path.join(trial_run_path(train_runs, t.trial_id), checkpoint_dir(int(t.examples[j])))
            scores = load_scores(path)
            if scores is None:
                raise SelectionError(f"{path}: the validation scores of trial {t.trial_id} (beta={t.beta:g}) at "
                                     "its pick's window were not kept; the selection's confidence needs them")
            window.append(scores)
        trials.append({"beta": t.beta, "lr": t.lr, "seed": t.seed, "full": float(smoothed(t.dprime, w)[sel.index]),
                       "samples": resampled_pick_dprime(targets, np.stack(window), counts)})
    return confidence(trials, cfg.sweep.confidence_resamples)


def summarise(cfg: Config, found: list[TrialTrace], failed: list[dict], diverged: list[dict],
              train_runs: str) -> dict:
    """Select, evaluate the winners, judge the selection, and return what results.json holds
    (without wall_seconds)."""
    if not found:
        reasons = [f"beta={f['beta']:g} lr={f['lr']:g}: {f['error'].splitlines()[0] if f['error'] else 'no checkpoint'}"
                   for f in failed] + [f"beta={d['beta']:g} lr={d['lr']:g}: diverged (train loss {d['train_loss']:.3g})"
                                       for d in diverged]
        raise SelectionError("no trial can be selected: " + "; ".join(reasons))
    rule = cfg.sweep.rule
    per_beta = select_per_beta(found, rule)
    if not per_beta:
        raise SelectionError(f"no trial has a full {rule.window}-evaluation smoothing window: raise "
                             "train.max_examples or lower sweep.smoothing_window")
    check_selected_checkpoints(per_beta)
    rows = evaluate_winners(cfg, per_beta)
    selection = selection_summary(select_overall(per_beta), per_beta, cfg)
    conf = selection_confidence(cfg, found, train_runs)
    valid_clips = open_store(cfg.data.store).split_info(cfg.data.valid_split)["clips"]
    judged = verdict(conf, [r["beta"] for r in selection["not_converged"]], valid_clips)
    if selection["val_dprime"] < CHANCE_DPRIME:
        judged = (f"unresolved: no trial rose above chance (the best smoothed validation d' is "
                  f"{selection['val_dprime']:.3f} < {CHANCE_DPRIME}): check the learning rates (sweep.lrs)")
    return {"verdict": judged, "p_best": {f"{b:g}": p for b, p in conf["p_best"].items()},
            "selection": selection, "confidence": {**conf, "p_best": {f"{b:g}": p for b, p in conf["p_best"].items()}},
            "rows": rows, "failed": failed, "diverged": diverged,
            "unselectable": [{"trial_id": t.trial_id, "beta": t.beta, "lr": t.lr, "seed": t.seed,
                              "evaluations": len(t.dprime)} for t in found if select_trial(t, rule) is None],
            "traces": [{"trial_id": t.trial_id, "beta": t.beta, "lr": t.lr, "seed": t.seed,
                        "examples": t.examples.tolist(), "dprime": t.dprime.tolist(), "mAP": t.mAP.tolist()}
                       for t in found],
            "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg)}
