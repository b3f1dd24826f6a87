"""The per-trial Ray Train loop: build, restore, loop, evaluate, report, stop.

`train_func(config)` runs on every Train worker. Budgets and the validation cadence are
counted in examples. Every `train.eval_every_examples`, each rank scores its share of the
validation split and gathers every share, so all ranks compute the same metrics and take the
same decision (sweep/history.py: a settled pick, or `train.max_examples`) with no broadcast.
Rank 0 saves the checkpoint, every rank reports it (a barrier), then rank 0 records Train's
registration of it, logs to MLflow and prunes the weights selection can no longer pick
(`train.keep_checkpoints`, sweep/checkpoint.py); a trial racing has eliminated ends there. Ray
Data hands each worker its rows of the stream (clip, position, target); the worker reads their
spectrograms itself, two blocks ahead of the step on two threads (data/feed.py).

A restarted worker group restores the latest checkpoint Train registered, and the stream
restarts at the examples recorded as registered (the dataset factory in sweep/tune.py): that
checkpoint's own, or one evaluation earlier if rank 0 stopped between the registration and its
record, in which case the batches before the checkpoint's examples are passed over.
Augmentation is seeded from (seed, rank, step). With one worker a resumed trial trains on the
batches of the uninterrupted one, step for step. With W workers, Ray Data hands blocks to
whichever worker asks first, so the rows consumed by a restart are not exactly the first
`examples` of the stream: the stream resumes at that position, and rows one worker had read
ahead or not reached yet (at most the blocks in flight, about one a worker) are seen twice or
not at all in that pass.
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import ray.train
import ray.train.torch
import torch
from mlflow.tracking import MlflowClient

from data.feed import spectrogram_batches
from data.store import Store, open_store
from data.stream import split_labels
from model.factory import build_model
from model.step import make_optimizer, train_step, unwrap
from sweep.checkpoint import (checkpoint_dir, clear_failures, prune, record_failure, restore_checkpoint,
                              save_checkpoint, write_progress)
from sweep.bootstrap import bootstrap_counts
from sweep.confidence import resampled_dprime
from sweep.config import Config, from_dict
from sweep.evaluate import score_split, with_metrics
from sweep.history import TrialState, evaluated, next_evaluation, reopened, step_seed, summary_metrics
from sweep.tracking import log_history, log_metrics
from sweep.trial import Trial

__all__ = ["train_func"]


def _tensors(batch: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    """numpy -> torch without a copy. The target and position arrays are read-only views of
    Ray's object store; the tensors share them without torch's warning about it because the
    step never writes its inputs: `train_step` casts, augments and normalises out of place."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return tuple(torch.from_numpy(a) for a in batch)


@dataclass(frozen=True)
class _Worker:
    """What one Train worker trains, validates and reports with."""
    cfg: Config            # the trial's learning rate in cfg.train.optim.lr
    trial: Trial
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    store: Store
    run_path: str          # the trial's Train run directory
    valid_rows: dict[str, int]  # clip id -> its row in the validation split


def train_func(config: dict) -> None:
    """Ray Train worker entry point. config: {cfg (Config as a dict, the trial's learning rate in
    train.optim.lr), trial (sweep/trial.py Trial as a dict), tracking (MLflow {uri, run_id}, or
    None), train_run_path, started (times the trial driver started and called fit, and the worker
    began importing this module)}.
    A failure is recorded in the run directory (type and message) before it ends the worker."""
    rank = ray.train.get_context().get_world_rank()
    clear_failures(config["train_run_path"], rank)  # an earlier attempt's
    try:
        _train(config)
    except Exception as e:
        record_failure(config["train_run_path"], rank, e)
        raise


def _train(config: dict) -> None:
    """Build, restore (or measure the start), loop, evaluate, report, stop."""
    started = {**config["started"], "worker": time.time()}
    _quiet_train_logs()
    w = _build(config)
    cfg, rule, every, cap = w.cfg, w.cfg.sweep.rule, w.cfg.train.eval_every_examples, w.cfg.train.max_examples
    tracking = config["tracking"] if w.rank == 0 else None
    state, losses = reopened(_restored(w) or TrialState(w.trial), cap)
    _log_history(tracking, state.history, rule.window)  # evaluations lost between a report and its log
    if state.stopped:  # restarted after the last evaluation: nothing left to do
        ray.train.report(summary_metrics(state, rule))
        return
    if state.start is None:
        m = _score_valid(w)["metrics"]
        state = replace(state, start={k: float(m[k]) for k in ("mAP", "mAUC", "dprime")})
    started["model"] = time.time()

    generator = torch.Generator(device=w.device)  # re-seeded every step (step_seed)
    resume_at, due = state.examples, next_evaluation(state.examples, every)
    w.model.train()
    batches = spectrogram_batches(ray.train.get_dataset_shard("train").iter_batches(batch_size=None, batch_format="numpy"),
                                  split_labels(w.store, cfg.data.train_split)[1], (w.store.frames, w.store.mels),
                                  max(1, cfg.train.batch_size // w.world))
    for mel, target, position in map(_tensors, batches):
        if int(position.max()) < resume_at:  # before the restored checkpoint (module docstring)
            continue
        if started:
            _log_startup(tracking, started, state.examples)
            started = None
        generator.manual_seed(step_seed(w.trial.seed, w.rank, state.step))
        losses.append(train_step(w.model, w.optimizer, mel.to(w.device, non_blocking=True),
                                 target.to(w.device, non_blocking=True), state.step, cfg.train.optim,
                                 cfg.train.augment, generator))
        state = replace(state, step=state.step + 1, examples=state.examples + len(mel) * w.world)
        if state.examples >= due or state.examples >= cap:
            state = _evaluate(w, state, losses, end=False)
            _log_history(tracking, state.history, rule.window)
            if state.stopped or _eliminated(w):
                return
            losses, due = [], next_evaluation(state.examples, every)
    if losses:  # the stream ended between two evaluations
        state = _evaluate(w, state, losses, end=True)
        _log_history(tracking, state.history, rule.window)


def _eliminated(w: _Worker) -> bool:
    """Racing has eliminated this trial (sweep/scheduler.py's record, read at each evaluation):
    the trial ends itself, so that its driver process can run the next one (Tune ends a trial
    it stops only when drivers are not reused). Every rank stops if any has read it so."""
    import posixpath
    from sweep.scheduler import eliminated, is_eliminated
    out = is_eliminated(w.trial, eliminated(posixpath.dirname(w.run_path.rstrip("/")))) is not None
    if w.world > 1 and torch.distributed.is_initialized():
        flag = torch.tensor([float(out)], device=w.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        out = bool(flag.item())
    return out


def _build(config: dict) -> _Worker:
    """The worker's model (seeded by the trial: every rank starts from the same weights),
    optimizer and store."""
    cfg: Config = from_dict(Config, config["cfg"])
    trial = Trial(**config["trial"])
    ctx = ray.train.get_context()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(trial.seed)
    model = ray.train.torch.prepare_model(build_model(cfg.model))
    store = open_store(cfg.data.store)
    valid_rows = {c: i for i, c in enumerate(store.clip_ids(cfg.data.valid_split))}
    return _Worker(cfg, trial, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), model,
                   make_optimizer(model, cfg.train.optim), store, config["train_run_path"], valid_rows)


def _quiet_train_logs() -> None:
    """Ray Train's loggers in this worker at WARNING: no INFO line for every report and checkpoint
    (the sweep's console has its own table; `--verbose` shows the workers' logs)."""
    for name in ["ray.train", *logging.root.manager.loggerDict]:
        if name == "ray.train" or name.startswith("ray.train."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _restored(w: _Worker) -> TrialState | None:
    """The state of Train's latest registered checkpoint, its weights and optimizer state loaded
    into the worker's model and optimizer; None on a first start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return TrialState.from_json(restore_checkpoint(d, unwrap(w.model), w.optimizer, w.device))


def _score_valid(w: _Worker) -> dict:
    """The validation split scored (every rank scores its share and gathers all: the same
    metrics everywhere): with_metrics' {scores, targets, clip_ids, metrics}."""
    cfg = w.cfg
    part = score_split(w.model, w.store, cfg.data.valid_split, cfg.train.eval_batch_size, w.device, w.rank, w.world)
    parts = [part]
    if w.world > 1:
        parts = [None] * w.world
        torch.distributed.all_gather_object(parts, part)
    return with_metrics(parts)


def _evaluate(w: _Worker, state: TrialState, losses: list[float], end: bool) -> TrialState:
    """Validate, decide, checkpoint and report; returns the new state."""
    cfg = w.cfg
    scored = _score_valid(w)
    state = evaluated(state, scored["metrics"], losses, cfg.sweep.rule, cfg.train.max_examples,
                      cfg.train.eval_every_examples, cfg.sweep.train_to_cap, end)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            save_checkpoint(tmp, unwrap(w.model), w.optimizer, state, cfg.model, _resampled(w, scored))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(summary_metrics(state, cfg.sweep.rule), checkpoint=checkpoint,
                         checkpoint_dir_name=checkpoint_dir(state.examples))
    if w.rank == 0:
        # returns once Train has registered the checkpoint: a restart resumes from it
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        write_progress(w.run_path, state.examples)
        if cfg.train.keep_checkpoints:
            prune(w.run_path, state.history, cfg.sweep.smoothing_window, cfg.train.keep_checkpoints)
    return state


def _resampled(w: _Worker, scored: dict) -> np.ndarray:
    """The evaluation's d' on each bootstrap resample of the validation clips [resamples]: the
    same resamples (bootstrap_counts, seed 0, over the split's rows) in every trial, so racing and
    the selection's confidence compare trials pair by pair."""
    order = np.argsort([w.valid_rows[c] for c in scored["clip_ids"]])  # the split's row order
    counts = bootstrap_counts(len(w.valid_rows), w.cfg.sweep.confidence_resamples, seed=0)
    return resampled_dprime(scored["targets"][order], scored["scores"][order], counts)


def _log_history(tracking: dict | None, history: dict, window: int) -> None:
    """Rank 0: the evaluations MLflow does not have yet (sweep.tracking.log_history)."""
    if tracking:
        log_history(MlflowClient(tracking["uri"]), tracking["run_id"], history, window)


def _log_startup(tracking: dict | None, started: dict[str, float], examples: int) -> None:
    """Rank 0: where a (re)started trial's start-up went, in seconds, as MLflow metrics
    `startup.<phase>_s`: tracking and sampler audit in the trial driver (driver), Train's
    controller and worker group (workers), the import of the model code in the worker (import),
    model build and restore (model), the stream's planning and first read (first_batch). A
    trial driver's own start is not in them: a sweep's trials reuse the drivers' processes
    (`resources.reuse_actors`)."""
    if not tracking:
        return
    now = time.time()
    phases = {"driver": started["fit"] - started["driver"], "workers": started["import"] - started["fit"],
              "import": started["worker"] - started["import"], "model": started["model"] - started["worker"],
              "first_batch": now - started["model"], "total": now - started["driver"]}
    log_metrics(MlflowClient(tracking["uri"]), tracking["run_id"],
                {f"startup.{k}_s": round(v, 2) for k, v in phases.items()}, examples)
