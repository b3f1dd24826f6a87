"""From a finished Tune sweep to the answer: each trial's trace, the selection (paper 3.2), how
sure it is (sweep/confidence.py), each arm's picks evaluated on every evaluation split, and
the rows of results.json.

`traces(...)` reads every trial's validation trace from its checkpoints (the canonical
history: it survives worker restarts, resumed sweeps and higher caps); `summarise(...)` leaves
out trials whose training diverged, selects per arm (a scheme at a beta) and overall
(sweep/select.py), evaluates exactly the selected checkpoints (never a neighbour), one per
replicate seed, and returns what results.json holds, with the verdict. An arm whose traces never
left their starting level did not learn within the cap: it is evaluated and listed, marked as
such, and the verdict is provisional.
"""
from __future__ import annotations

import math
import os

import ray
import ray.train
import torch
from tqdm import tqdm

import numpy as np

from data.cli import Failure
from data.store import open_store
from sweep.checkpoint import RESAMPLED, checkpoint_dir, has_weights, list_checkpoints, load_resampled, load_state
from sweep.confidence import confidence, verdict
from sweep.config import Config, to_dict
from sweep.evaluate import evaluate_split, load_model
from sweep.predictions import save_predictions
from sweep.rundir import predictions_path
from sweep.scheduler import eliminated, is_eliminated
from sweep.select import ArmSelection, Selection, TrialTrace, cap_to_settle, select_overall, select_per_arm, select_trial
from sweep.trial import Arm, Trial

__all__ = ["SelectionError", "DIVERGED_LOSS", "finished", "traces", "check_selected_checkpoints",
           "evaluate_winners", "results_row", "selection_summary", "pick_samples", "selection_confidence", "standing",
           "judge", "summarise"]

DIVERGED_LOSS = 10.0  # a mean training BCE above this (or not finite) is a diverged trial


class SelectionError(Failure):
    """Selection cannot stand behind an answer (no pick, a selected checkpoint missing); the
    message names it."""


def finished(cfg: Config, trials: list[Trial], errors: dict[Trial, str], train_runs: str) -> set[Trial]:
    """The trials that finished under the config's cap (their last checkpoint says so), that
    racing stopped (sweep/scheduler.py), or that failed (`errors`: Tune's, by trial): what an
    interrupted sweep does not have to run again."""
    done, record = set(errors), eliminated(train_runs)
    for trial in trials:
        checkpoints = list_checkpoints(os.path.join(train_runs, trial.key))
        if (checkpoints and checkpoints[-1][1].finished(cfg.train.max_examples)) or is_eliminated(trial, record):
            done.add(trial)
    return done


def traces(cfg: Config, trials: list[Trial], errors: dict[Trial, str], train_runs: str
           ) -> tuple[list[TrialTrace], list[dict], list[dict]]:
    """Each trial's validation trace; the failed trials ({trial (its key), scheme, beta, lr, seed,
    error}); and the trials whose training diverged (a training loss not finite or above
    DIVERGED_LOSS: {..., train_loss}), which are not traced. Each evaluation maps to its own
    checkpoint while that still holds its weights, else to None (pruned). A trial racing stopped
    before it started has no trace and did not fail."""
    found, failed, diverged, record = [], [], [], eliminated(train_runs)
    for trial in trials:
        point = {"trial": trial.key, "scheme": trial.scheme, "beta": trial.beta, "lr": trial.lr, "seed": trial.seed}
        checkpoints = list_checkpoints(os.path.join(train_runs, trial.key))
        if trial in errors or not (checkpoints or is_eliminated(trial, record)):
            failed.append({**point, "error": errors.get(trial, "")})
        if not checkpoints:
            continue
        state = checkpoints[-1][1]
        loss = np.asarray(state.history["train_loss"], dtype=np.float64)
        bad = ~np.isfinite(loss) | (loss > DIVERGED_LOSS)
        if bad.any():
            diverged.append({**point, "train_loss": float(loss[np.argmax(bad)])})
            continue
        own = {s.examples: path for path, s in checkpoints if has_weights(path)}
        h = state.history
        found.append(TrialTrace(trial, h["examples"], h["val_dprime"], h["val_mAP"], [own.get(e) for e in h["examples"]],
                                state.start_dprime))
    return found, failed, diverged


def check_selected_checkpoints(cfg: Config, per_arm: dict[Arm, ArmSelection]) -> None:
    """Every selected evaluation still has its own checkpoint, or SelectionError naming it."""
    for arm in per_arm.values():
        for sel in arm.picks:
            if sel.checkpoint is None:
                raise SelectionError(
                    f"the checkpoint of trial {sel.trial.name(cfg.sweep.several_schemes, True)} at "
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


def evaluate_winners(cfg: Config, per_arm: dict[Arm, ArmSelection], out: dict[Arm, dict] | None = None) -> list[dict]:
    """Every seed's pick of each arm's selected learning rate on every evaluation split (Ray
    tasks); predictions saved (sweep/rundir.py `predictions_path`); the results.json rows, in the
    grid's order (`out`: the arms racing eliminated, with their elimination)."""
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
            save_predictions(predictions_path(cfg.run.run_dir, sel.trial.arm, sel.trial.seed, split), res)
        evaluated[sel.trial] = (result["examples"], {s: r["metrics"] for s, r in result["splits"].items()})
    return [results_row(per_arm[a], a.label(cfg.sweep.several_schemes), evaluated, (out or {}).get(a)) for a in arms]


def arm_status(arm: ArmSelection) -> str:
    """settled, NOT CONVERGED, or did not learn (within the cap)."""
    return "settled" if arm.converged else "did not learn" if not arm.learned else "NOT CONVERGED"


def arms_eliminated(found: list[TrialTrace], train_runs: str) -> dict[Arm, dict]:
    """The arms racing stopped whole (every learning rate), each with the elimination of its best
    learning rate ({examples, p, against, level "arm"}); an arm that lost only some learning
    rates is not among them."""
    record, out = eliminated(train_runs), {}
    by_arm: dict[Arm, list[Trial]] = {}
    for t in found:
        by_arm.setdefault(t.trial.arm, []).append(t.trial)
    for arm, trials in by_arm.items():
        hits = [is_eliminated(t, record) for t in trials]
        if all(h is not None for h in hits):
            out[arm] = max(hits, key=lambda h: (h["level"] == "arm", h["examples"]))
    return out


def _pick_row(sel: Selection) -> dict:
    """A pick in results.json: its trial (key, scheme, beta, lr, seed) and the Selection's values."""
    t = sel.trial
    return {"trial": t.key, "scheme": t.scheme, "beta": t.beta, "lr": t.lr, "seed": t.seed, "index": sel.index,
            "examples_to_peak": sel.examples_to_peak, "val_dprime": sel.val_dprime, "val_dprime_raw": sel.val_dprime_raw,
            "checkpoint": sel.checkpoint, "learned": sel.learned, "converged": sel.converged,
            "evaluations": sel.evaluations, "examples_to_map_peak": sel.examples_to_map_peak}


def results_row(arm: ArmSelection, label: str, evaluated: dict[Trial, tuple[int, dict[str, dict]]],
                elimination: dict | None = None) -> dict:
    """One arm's row of results.json: its scheme, beta, label and learning rate, its picks' mean
    (and, over seeds, sd) of the smoothed validation d', examples to the pick and mAP, AUC and
    d' per eval split, whether every seed learned and every pick settled (`status`: settled, NOT
    CONVERGED, did not learn, or eliminated, with `eliminated`: racing's {examples, p, against}),
    and per seed the pick itself (`seeds`: the pick, the examples its evaluated checkpoint had
    seen, its metrics). `evaluated`: trial -> (examples, split -> classification_metrics)."""
    seeds = []
    for sel in arm.picks:
        examples, metrics = evaluated[sel.trial]
        seeds.append({**_pick_row(sel), "examples_evaluated": examples,
                      "eval": {s: {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"]} for s, m in metrics.items()}})
    splits, keys = list(seeds[0]["eval"]), ("mAP", "AUC", "dprime")

    def over_seeds(f):
        return {s: {k: float(f([r["eval"][s][k] for r in seeds])) for k in keys} for s in splits}
    map_peaks = [r["examples_to_map_peak"] for r in seeds if r["examples_to_map_peak"] is not None]
    return {"scheme": arm.arm.scheme, "beta": arm.arm.beta, "label": label, "lr": arm.lr, "val_dprime": arm.val_dprime,
            "val_dprime_sd": float(np.std([r["val_dprime"] for r in seeds])), "learned": arm.learned,
            "converged": arm.converged, "status": "eliminated" if elimination else arm_status(arm),
            "eliminated": {k: elimination[k] for k in ("examples", "p", "against", "level")} if elimination else None,
            "examples_to_peak": int(np.mean([r["examples_to_peak"] for r in seeds])),
            "examples_to_map_peak": int(np.mean(map_peaks)) if map_peaks else None,
            "eval": over_seeds(np.mean), "eval_sd": over_seeds(np.std), "seeds": seeds}


def _cap_needed(cfg: Config, arm: ArmSelection) -> int:
    """The smallest cap at which every pick of the arm could settle, as it stands (cap_to_settle;
    twice the cap for a trace that has not learned yet), rounded up to an evaluation."""
    t = cfg.train
    need = max(cap_to_settle(p.examples_to_peak, t.eval_every_examples, cfg.sweep.rule) if p.learned
               else 2 * t.max_examples for p in arm.picks)
    return math.ceil(need / t.eval_every_examples) * t.eval_every_examples


def selection_summary(best: ArmSelection, per_arm: dict[Arm, ArmSelection], cfg: Config) -> dict:
    """results.json's `selection`: the best arm (its scheme, beta, label, learning rate, mean
    smoothed validation d' and examples to the pick over seeds), and whether the comparison is
    final (every arm learned and its pick settled) or provisional (`not_converged`: the arms whose
    picks did not, each with its status and the cap it needs; `cap_to_finish`: the cap that
    gives every one of them its chance)."""
    several = cfg.sweep.several_schemes
    late = [{"scheme": a.arm.scheme, "beta": a.arm.beta, "label": a.arm.label(several), "status": arm_status(a),
             "examples_to_peak": max(p.examples_to_peak for p in a.picks), "cap_to_settle": _cap_needed(cfg, a)}
            for key in cfg.sweep.arms if key in per_arm and not (a := per_arm[key]).converged]
    return {"scheme": best.arm.scheme, "beta": best.arm.beta, "label": best.arm.label(several), "lr": best.lr,
            "val_dprime": best.val_dprime, "examples_to_peak": int(np.mean([p.examples_to_peak for p in best.picks])),
            "seeds": [p.trial.seed for p in best.picks], "all_converged": not late,
            "status": "provisional" if late else "final", "not_converged": late,
            "cap_to_finish": max((r["cap_to_settle"] for r in late), default=None)}


def pick_samples(trace: TrialTrace, pick_index: int, window: int, train_runs: str) -> np.ndarray:
    """A trial's smoothed d' at its pick on each resample of the validation clips [resamples]: the
    mean over the pick's window of the d' per resample its checkpoints hold; SelectionError naming
    a checkpoint that has none."""
    h, rows = window // 2, []
    for j in range(pick_index - h, pick_index + h + 1):
        path = os.path.join(train_runs, trace.trial.key, checkpoint_dir(int(trace.examples[j])))
        resampled = load_resampled(path)
        if resampled is None:
            raise SelectionError(f"{path}: holds no validation d' per resample ({RESAMPLED}); the selection's "
                                 "confidence needs one for every evaluation of a pick's window")
        rows.append(resampled)
    return np.mean(rows, axis=0)


def selection_confidence(cfg: Config, found: list[TrialTrace], train_runs: str) -> dict:
    """sweep.confidence.confidence of the sweep's selection, from the d' per resample of the
    validation clips each evaluation kept (the same resamples for every trial)."""
    full, samples = {}, {}
    for t in found:
        sel = select_trial(t, cfg.sweep.rule)
        if sel is not None:
            full[t.trial] = sel.val_dprime
            samples[t.trial] = pick_samples(t, sel.index, cfg.sweep.smoothing_window, train_runs)
    return confidence(full, samples, cfg.sweep.confidence_resamples)


def standing(cfg: Config, train_runs: str) -> tuple[Arm, dict[Arm, float], bool]:
    """Where the sweep stands on its trials' traces as they are now (sweep/scheduler.py's
    RefiningGrid asks when every trial has finished): the best arm still in the race, p_best per
    contender, and whether the verdict is resolved."""
    found, _, _ = traces(cfg, cfg.sweep.trials, {}, train_runs)
    record = eliminated(train_runs)
    contenders = [t for t in found if not is_eliminated(t.trial, record)]
    per_arm = select_per_arm(contenders, cfg.sweep.rule)
    conf = selection_confidence(cfg, contenders, train_runs)
    valid_clips = open_store(cfg.data.store).split_info(cfg.data.valid_split)["clips"]
    return conf["selected"], conf["p_best"], judge(cfg, per_arm, conf, valid_clips)["verdict"]["resolved"]


def judge(cfg: Config, per_arm: dict[Arm, ArmSelection], conf: dict, valid_clips: int, lost: list[str] = ()) -> dict:
    """results.json's verdict (sweep/confidence.py Verdict as a dict) on the arms still in the
    race (`per_arm`; `lost`: the labels of those racing eliminated), p_best by arm label in the
    grid's order, and the confidence with arms named by their labels."""
    labels = {a: a.label(cfg.sweep.several_schemes) for a in per_arm}
    v = verdict(conf, labels, [a for a, s in per_arm.items() if not s.converged],
                [a for a, s in per_arm.items() if not s.learned], valid_clips, cfg.train.max_examples, list(lost))
    p_best = {labels[a]: conf["p_best"][a] for a in cfg.sweep.arms if a in conf["p_best"]}
    return {"verdict": {"resolved": v.resolved, "provisional": v.provisional, "word": v.word, "text": v.text},
            "p_best": p_best, "confidence": {**conf, "selected": labels[conf["selected"]], "p_best": p_best,
                                             "runner_up": labels[conf["runner_up"]] if conf["runner_up"] else None}}


def compute_spent(cfg: Config, found: list[TrialTrace], out: set[Trial]) -> dict:
    """Training examples the sweep spent (every trial's last evaluation), and at least what the
    stopping rule alone would have spent: a trial racing stopped (`out`) trained on until its
    current pick could settle (cap_to_settle, at most the cap; to the cap if it had not learned)."""
    t, rule = cfg.train, cfg.sweep.rule
    spent = sum(int(x.examples[-1]) for x in found if len(x.examples))
    without = 0
    for x in found:
        last = int(x.examples[-1]) if len(x.examples) else 0
        sel = select_trial(x, rule) if x.trial in out else None
        need = t.max_examples if sel is None or not sel.learned else cap_to_settle(sel.examples_to_peak,
                                                                                 t.eval_every_examples, rule)
        without += max(last, min(need, t.max_examples)) if x.trial in out else last
    return {"examples": spent, "without_racing_at_least": without,
            "saved_at_least": round(1 - spent / without, 4) if without else 0.0}


def summarise(cfg: Config, found: list[TrialTrace], failed: list[dict], diverged: list[dict],
              train_runs: str) -> dict:
    """Select among the arms still in the race, evaluate their picks and those of the arms racing
    eliminated, judge the selection, and return what results.json holds (without wall_seconds)."""
    several = cfg.sweep.several_schemes
    if not found:
        name = {t.key: t.name(several, cfg.sweep.several_seeds) for t in cfg.sweep.trials}
        reasons = [f"{name[f['trial']]}: {f['error'].splitlines()[0] if f['error'] else 'no checkpoint'}" for f in failed]
        reasons += [f"{name[d['trial']]}: diverged (train loss {d['train_loss']:.3g})" for d in diverged]
        raise SelectionError("no trial can be selected: " + "; ".join(reasons))
    rule, record = cfg.sweep.rule, eliminated(train_runs)
    out = {t.trial for t in found if is_eliminated(t.trial, record)}
    contenders = [t for t in found if t.trial not in out]
    per_arm = select_per_arm(contenders, rule)
    lost = arms_eliminated(found, train_runs)
    if not per_arm:
        raise SelectionError(f"no trial has a full {rule.window}-evaluation smoothing window: raise "
                             "train.max_examples or lower sweep.smoothing_window")
    shown = {**per_arm, **select_per_arm([t for t in found if t.trial.arm in lost], rule)}
    check_selected_checkpoints(cfg, shown)
    rows = evaluate_winners(cfg, shown, lost)
    selection = selection_summary(select_overall(per_arm), per_arm, cfg)
    conf = selection_confidence(cfg, contenders, train_runs)
    valid_clips = open_store(cfg.data.store).split_info(cfg.data.valid_split)["clips"]
    return {**judge(cfg, per_arm, conf, valid_clips, [a.label(several) for a in lost]), "selection": selection,
            "rows": rows, "failed": failed, "diverged": diverged, "eliminated": list(record.values()),
            "compute": compute_spent(cfg, found, out),
            "unselectable": [{"trial": t.trial.key, "scheme": t.trial.scheme, "beta": t.trial.beta, "lr": t.trial.lr,
                              "seed": t.trial.seed, "evaluations": len(t.dprime)}
                             for t in found if select_trial(t, rule) is None],
            "traces": [{"trial": t.trial.key, "scheme": t.trial.scheme, "beta": t.trial.beta,
                        "label": t.trial.arm.label(several), "lr": t.trial.lr, "seed": t.trial.seed,
                        "examples": t.examples.tolist(), "dprime": t.dprime.tolist(), "mAP": t.mAP.tolist(),
                        "start": t.start, "eliminated": is_eliminated(t.trial, record)} for t in found],
            "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg)}
