"""From a finished Tune sweep to the answer: each trial's trace, the selection (paper 3.2), how
sure it is (sweep/confidence.py), each arm's picks evaluated on every evaluation split, and
the rows of results.json.

`traces(...)` reads every trial's validation trace from its checkpoints (the canonical
history: it survives worker restarts and resumed sweeps); `summarise(...)` leaves out trials
whose training diverged, selects per arm (a scheme at a beta) and overall (sweep/select.py),
evaluates exactly the selected checkpoints (never a neighbour), one per replicate seed, and
returns what results.json holds, with the verdict.
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
from sweep.checkpoint import checkpoint_dir, has_weights, list_checkpoints, load_scores, load_state
from sweep.confidence import confidence, resampled_pick_dprime, verdict
from sweep.config import Config, to_dict, trial_point
from sweep.evaluate import evaluate_split, load_model, save_predictions
from sweep.select import (ArmSelection, TrialTrace, cap_to_settle, select_overall, select_per_arm, select_trial,
                          smoothed)

__all__ = ["SelectionError", "CHANCE_DPRIME", "DIVERGED_LOSS", "trial_run_path", "finished_trials", "traces",
           "check_selected_checkpoints", "predictions_path", "evaluate_winners", "results_row", "selection_summary",
           "selection_confidence", "summarise", "judge"]

CHANCE_DPRIME = 0.1   # a pick below this smoothed validation d' (macro AUC 0.528) is at chance
DIVERGED_LOSS = 10.0  # a mean training BCE above this (or not finite) is a diverged trial


class SelectionError(Failure):
    """Selection cannot stand behind an answer (no pick, a selected checkpoint missing); the
    message names it."""


def trial_run_path(train_runs: str, trial_id: str) -> str:
    """A trial's Train run directory (the Train run name is stable per trial: sweep/tune.py)."""
    return os.path.join(train_runs, f"train-{trial_id}")


def finished_trials(results, train_runs: str) -> set[tuple[str, float, float, int]]:
    """(scheme, beta, lr, seed) of the trials that finished (their last checkpoint says why they
    stopped) or failed: what an interrupted sweep does not have to run again."""
    done = set()
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(trial_run_path(train_runs, trial_id)) if trial_id else []
        if r.error or (checkpoints and checkpoints[-1][1].get("stopped")):
            done.add(trial_point(r.config))
    return done


def traces(results, train_runs: str) -> tuple[list[TrialTrace], list[dict], list[dict]]:
    """Each trial's validation trace; the failed trials ({scheme, beta, lr, seed, trial_id, error});
    and the trials whose training diverged (a training loss not finite or above DIVERGED_LOSS:
    {scheme, beta, lr, seed, trial_id, train_loss}), which are not traced. Each evaluation maps
    to its own checkpoint while that still holds its weights, else to None (pruned)."""
    found, failed, diverged = [], [], []
    for r in results:
        scheme, beta, lr, seed = trial_point(r.config)
        point = {"scheme": scheme, "beta": beta, "lr": lr, "seed": seed}
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(trial_run_path(train_runs, trial_id)) if trial_id else []
        if r.error or not checkpoints:
            failed.append({**point, "trial_id": trial_id, "error": str(r.error)})
        if not checkpoints:
            continue
        history = checkpoints[-1][1]["history"]
        loss = np.asarray(history["train_loss"], dtype=np.float64)
        bad = ~np.isfinite(loss) | (loss > DIVERGED_LOSS)
        if bad.any():
            diverged.append({**point, "trial_id": trial_id, "train_loss": float(loss[np.argmax(bad)])})
            continue
        own = {state["examples"]: path for path, state in checkpoints if has_weights(path)}
        found.append(TrialTrace(trial_id, scheme, beta, lr, seed, history["examples"], history["val_dprime"],
                                history["val_mAP"], [own.get(e) for e in history["examples"]]))
    return found, failed, diverged


def check_selected_checkpoints(per_arm: dict[tuple[str, float], ArmSelection]) -> None:
    """Every selected evaluation still has its own checkpoint, or SelectionError naming it."""
    for arm in per_arm.values():
        for sel in arm.picks:
            if sel.checkpoint is None:
                raise SelectionError(
                    f"the checkpoint of trial {sel.trial_id} ({sel.scheme} beta={sel.beta:g}, lr={sel.lr:g}, seed "
                    f"{sel.seed}) at "
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


def _gather(futures: dict, desc: str, unit: str) -> dict:
    """The results of Ray futures {future: key} as {key: result}, collected as they finish
    under a progress bar."""
    done = {}
    with tqdm(total=len(futures), desc=desc, unit=unit) as bar:
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[futures[ready[0]]] = ray.get(ready[0])
            bar.update()
    return done


def predictions_path(run_dir: str | Path, scheme: str, beta: float, seed: int, split: str) -> Path:
    """Where an arm's pick in one seed saves its scores on an evaluation split."""
    return Path(run_dir) / "predictions" / f"{scheme}-beta={beta:g}" / f"seed={seed}" / f"{split}.npz"


def evaluate_winners(cfg: Config, per_arm: dict[tuple[str, float], ArmSelection]) -> list[dict]:
    """Every seed's pick of each arm's selected learning rate on every evaluation split (Ray
    tasks); predictions saved (`predictions_path`); the results.json rows, in the grid's order."""
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.resources.use_gpu else 0)(_evaluate_checkpoint)
    arms = [a for a in cfg.sweep.arms if a in per_arm]
    picks = [sel for a in arms for sel in per_arm[a].picks]
    futures = {task.remote(sel.checkpoint, cfg.data.store, cfg.data.eval_splits, cfg.train.eval_batch_size): i
               for i, sel in enumerate(picks)}
    done = _gather(futures, "evaluating the selected checkpoints", "pick")
    evaluated = {}
    for i, sel in enumerate(picks):
        result = done[i]
        if result["examples"] != sel.examples_to_peak:
            raise SelectionError(f"{sel.checkpoint}: holds {result['examples']:,} examples, selection "
                                 f"picked {sel.examples_to_peak:,}")
        for split, res in result["splits"].items():
            save_predictions(predictions_path(cfg.run.run_dir, sel.scheme, sel.beta, sel.seed, split), res)
        evaluated[(sel.scheme, sel.beta, sel.seed)] = (result["examples"],
                                                       {s: r["metrics"] for s, r in result["splits"].items()})
    return [results_row(per_arm[a], cfg.sweep.label(*a), {sel.seed: evaluated[(*a, sel.seed)] for sel in per_arm[a].picks})
            for a in arms]


def results_row(arm: ArmSelection, label: str, evaluated: dict[int, tuple[int, dict[str, dict]]]) -> dict:
    """One arm's row of results.json: its scheme, beta, label and learning rate, its picks' mean
    (and, over seeds, sd) of the smoothed validation d', examples to the pick and mAP, AUC and
    d' per eval split, whether every pick settled, and per seed the pick itself (`seeds`: the
    Selection, the examples its evaluated checkpoint had seen, its metrics). `evaluated`:
    seed -> (examples, split -> classification_metrics)."""
    seeds = []
    for sel in arm.picks:
        examples, metrics = evaluated[sel.seed]
        seeds.append({**asdict(sel), "examples_evaluated": examples,
                      "eval": {s: {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"]} for s, m in metrics.items()}})
    splits, keys = list(seeds[0]["eval"]), ("mAP", "AUC", "dprime")

    def over_seeds(f):
        return {s: {k: float(f([r["eval"][s][k] for r in seeds])) for k in keys} for s in splits}
    map_peaks = [r["examples_to_map_peak"] for r in seeds if r["examples_to_map_peak"] is not None]
    return {"scheme": arm.scheme, "beta": arm.beta, "label": label, "lr": arm.lr, "val_dprime": arm.val_dprime,
            "val_dprime_sd": float(np.std([r["val_dprime"] for r in seeds])), "converged": arm.converged,
            "examples_to_peak": int(np.mean([r["examples_to_peak"] for r in seeds])),
            "examples_to_map_peak": int(np.mean(map_peaks)) if map_peaks else None,
            "eval": over_seeds(np.mean), "eval_sd": over_seeds(np.std), "seeds": seeds}


def selection_summary(best: ArmSelection, per_arm: dict[tuple[str, float], ArmSelection], cfg: Config) -> dict:
    """results.json's `selection`: the best arm (its scheme, beta, label, learning rate, mean
    smoothed validation d' and examples to the pick over seeds), and whether the comparison is
    final (every arm's pick settled) or provisional (`not_converged`: the arms whose picks did
    not, with the cap the latest would need at least)."""
    late = [{"scheme": a.scheme, "beta": a.beta, "label": cfg.sweep.label(*key),
             "examples_to_peak": max(p.examples_to_peak for p in a.picks),
             "cap_to_settle": max(cap_to_settle(p.examples_to_peak, cfg.train.eval_every_examples, cfg.sweep.rule)
                                  for p in a.picks)}
            for key in cfg.sweep.arms if key in per_arm and not (a := per_arm[key]).converged]
    return {"scheme": best.scheme, "beta": best.beta, "label": cfg.sweep.label(best.scheme, best.beta), "lr": best.lr,
            "val_dprime": best.val_dprime, "examples_to_peak": int(np.mean([p.examples_to_peak for p in best.picks])),
            "seeds": [p.seed for p in best.picks], "all_converged": not late,
            "status": "provisional" if late else "final", "not_converged": late}


def selection_confidence(cfg: Config, found: list[TrialTrace], train_runs: str) -> dict:
    """sweep.confidence.confidence of the sweep's selection, from the validation scores each
    trial kept for its pick's window (the same resamples of the validation clips for all); one
    Ray task a trial, spread over the cluster's CPUs."""
    store = open_store(cfg.data.store)
    valid = store.labels(cfg.data.valid_split).multi_hot(store.n_classes)
    targets, counts = ray.put(valid), ray.put(bootstrap_counts(len(valid), cfg.sweep.confidence_resamples, seed=0))
    task = ray.remote(num_cpus=1)(resampled_pick_dprime)
    w, h = cfg.sweep.smoothing_window, cfg.sweep.smoothing_window // 2
    trials, futures = [], {}
    for t in found:
        sel = select_trial(t, cfg.sweep.rule)
        if sel is None:
            continue
        window = []
        for j in range(sel.index - h, sel.index + h + 1):
            path = os.path.join(trial_run_path(train_runs, t.trial_id), checkpoint_dir(int(t.examples[j])))
            scores = load_scores(path)
            if scores is None:
                raise SelectionError(f"{path}: the validation scores of trial {t.trial_id} ({cfg.sweep.label(t.scheme, t.beta)}) "
                                     "at its pick's window were not kept; the selection's confidence needs them")
            window.append(scores)
        futures[task.remote(targets, np.stack(window), counts)] = len(trials)
        trials.append({"arm": cfg.sweep.label(t.scheme, t.beta), "beta": t.beta, "lr": t.lr, "seed": t.seed,
                       "full": float(smoothed(t.dprime, w)[sel.index])})
    for i, samples in _gather(futures, "resampling the validation clips", "trial").items():
        trials[i]["samples"] = samples
    return confidence(trials, cfg.sweep.confidence_resamples)


def summarise(cfg: Config, found: list[TrialTrace], failed: list[dict], diverged: list[dict],
              train_runs: str) -> dict:
    """Select, evaluate the winners, judge the selection, and return what results.json holds
    (without wall_seconds)."""
    if not found:
        reasons = [f"{cfg.sweep.label(f['scheme'], f['beta'])} lr={f['lr']:g}: "
                   f"{f['error'].splitlines()[0] if f['error'] else 'no checkpoint'}" for f in failed]
        reasons += [f"{cfg.sweep.label(d['scheme'], d['beta'])} lr={d['lr']:g}: diverged (train loss {d['train_loss']:.3g})"
                    for d in diverged]
        raise SelectionError("no trial can be selected: " + "; ".join(reasons))
    rule = cfg.sweep.rule
    per_arm = select_per_arm(found, rule)
    if not per_arm:
        raise SelectionError(f"no trial has a full {rule.window}-evaluation smoothing window: raise "
                             "train.max_examples or lower sweep.smoothing_window")
    check_selected_checkpoints(per_arm)
    rows = evaluate_winners(cfg, per_arm)
    selection = selection_summary(select_overall(per_arm), per_arm, cfg)
    conf = selection_confidence(cfg, found, train_runs)
    valid_clips = open_store(cfg.data.store).split_info(cfg.data.valid_split)["clips"]
    return {"verdict": judge(selection, conf, valid_clips), "p_best": conf["p_best"], "selection": selection,
            "confidence": conf, "rows": rows, "failed": failed, "diverged": diverged,
            "unselectable": [{"trial_id": t.trial_id, "scheme": t.scheme, "beta": t.beta, "lr": t.lr, "seed": t.seed,
                              "evaluations": len(t.dprime)} for t in found if select_trial(t, rule) is None],
            "traces": [{"trial_id": t.trial_id, "scheme": t.scheme, "beta": t.beta, "label": cfg.sweep.label(t.scheme, t.beta),
                        "lr": t.lr, "seed": t.seed, "examples": t.examples.tolist(), "dprime": t.dprime.tolist(),
                        "mAP": t.mAP.tolist()} for t in found],
            "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg)}


def judge(selection: dict, conf: dict, valid_clips: int) -> str:
    """The verdict (sweep.confidence.verdict), or, when even the best pick is at chance
    (CHANCE_DPRIME), that no trial learned: nothing is selected from a tie at chance."""
    if selection["val_dprime"] < CHANCE_DPRIME:
        return (f"unresolved: no trial rose above chance (the best smoothed validation d' is "
                f"{selection['val_dprime']:.3f} < {CHANCE_DPRIME}): check the learning rates (sweep.lrs)")
    return verdict(conf, [r["label"] for r in selection["not_converged"]], valid_clips)
