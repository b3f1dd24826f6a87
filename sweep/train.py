"""The per-trial Ray Train loop: stream the oversampled data, train, validate, checkpoint, stop.

`train_func(config)` runs on every Train worker. Budgets and the validation cadence are
counted in examples. Every `eval_every_examples`, each rank scores its share of the validation
split, rank 0 gathers the scores, computes the metrics and saves a checkpoint, and every rank
calls `ray.train.report` (a barrier). A trial stops when
its pick is settled (sweep/select.py: `patience` full-window evaluations after the best
smoothed d') or at `train.max_examples`, whichever comes first; the checkpoint records which
(`stopped`: "settled" or "cap"). Weights that selection can no longer pick are pruned as the
trial goes (`train.keep_checkpoints`, sweep/checkpoint.py).

A restarted worker group resumes from the latest checkpoint: the stream is rebuilt from the
examples already seen (the dataset factory in sweep/tune.py), and the augmentation of every
step is seeded from (seed, rank, step), so the redone steps repeat exactly.
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
from ray.data.collate_fn import NumpyBatchCollateFn

from data.store import open_store
from model.ast import create_ast
from model.step import make_optimizer, train_step
from sweep.checkpoint import prune, restore_checkpoint, save_checkpoint
from sweep.config import Config, from_dict
from sweep.evaluate import score_split, with_metrics
from sweep.select import StoppingRule, pick, settled, smoothed

__all__ = ["train_func", "summary_metrics", "step_seed", "HISTORY_KEYS"]

HISTORY_KEYS = ("examples", "train_loss", "val_mAP", "val_AUC", "val_dprime")


class _Collate(NumpyBatchCollateFn):
    """Stream rows -> (mel [b, T, F] float16, target [b, K] float32); string ids dropped.

    The arrays are read-only views of Ray's object store; the tensors share them without a
    copy (and without torch's warning about it) because the step never writes its inputs:
    `train_step` casts, augments and normalises out of place."""

    def __call__(self, batch):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(batch["mel"]), torch.from_numpy(batch["target"])


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of one optimizer step on one rank: a function of these alone, so a
    worker restarted from a checkpoint redoes its steps exactly (same stream, same masks and
    MixUp draws) and re-reports the same validation numbers."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def summary_metrics(state: dict, rule: StoppingRule) -> dict:
    """What a trial reports to Tune: progress, the latest evaluation, the latest full-window
    smoothed d', the smoothed d' at the current pick (NaN until a window is full) and whether
    that pick is settled. The first four keys are the columns of Tune's console table."""
    h = state["history"]
    s = smoothed(h["val_dprime"], rule.window)
    i = pick(h["val_dprime"], rule.window)
    defined = s[~np.isnan(s)]
    last = {k: (h[k][-1] if h[k] else float("nan")) for k in HISTORY_KEYS if k != "examples"}
    return {"examples": state["examples"], "val_dprime": last.pop("val_dprime"),
            "val_dprime_smoothed": float(defined[-1]) if defined.size else float("nan"),
            "val_dprime_pick": float(s[i]) if i is not None else float("nan"),
            "step": state["step"], "evals": len(h["examples"]), **last,
            "examples_to_pick": int(h["examples"][i]) if i is not None else -1,
            "converged": bool(h["examples"]) and settled(h["val_dprime"], h["examples"], rule),
            "stopped": state.get("stopped") or ""}


class _RoutineTrainLogs(logging.Filter):
    """Drops Ray Train's INFO line for every report and every checkpoint: the sweep's console
    shows Tune's table instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Reporting training result", "Checkpoint successfully created"))


def _quiet_routine_logs() -> None:
    for logger in (logging.getLogger(), logging.getLogger("ray")):
        for handler in logger.handlers:
            handler.addFilter(_RoutineTrainLogs())


def _log_history(client, run_id: str, history: dict, window: int) -> None:
    """Log the evaluations MLflow does not have yet (all after a restart's gap, else the last),
    and each full-window smoothed d' at its centre's step once its window is complete."""
    from sweep.tracking import log_metrics
    logged = client.get_metric_history(run_id, "val_dprime")
    last = max((m.step for m in logged), default=-1)
    s, h = smoothed(history["val_dprime"], window), window // 2
    for i, examples in enumerate(history["examples"]):
        if examples > last:
            log_metrics(client, run_id, {k: history[k][i] for k in HISTORY_KEYS if k != "examples"}, examples)
            if i >= h and np.isfinite(s[i - h]):
                log_metrics(client, run_id, {"val_dprime_smoothed": s[i - h]}, history["examples"][i - h])


@dataclass
class _Trial:
    """One worker's training state and the objects it needs."""
    cfg: Config
    config: dict
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: dict

    @classmethod
    def start(cls, config: dict) -> "_Trial":
        """Build the model and optimizer; restore them from Train's latest checkpoint, if any."""
        cfg: Config = from_dict(Config, config["cfg"])
        ctx = ray.train.get_context()
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        torch.manual_seed(cfg.train.seed)
        device = ray.train.torch.get_device()
        model = ray.train.torch.prepare_model(create_ast(cfg.model))
        optimizer = make_optimizer(model, replace(cfg.train.optim, lr=config["lr"]))
        state = {"examples": 0, "step": 0, "history": {k: [] for k in HISTORY_KEYS},
                 "beta": config["beta"], "lr": config["lr"], "stopped": None}
        trial = cls(cfg, config, ctx.get_world_rank(), ctx.get_world_size(), device, model, optimizer, state)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                trial.state = {"stopped": None, **restore_checkpoint(d, model, optimizer, device)}
            trial.log()  # evaluations lost between a report and its MLflow log
        return trial

    @property
    def optim(self):
        return replace(self.cfg.train.optim, lr=self.config["lr"])

    def step(self, mel: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> float:
        x = mel.to(self.device, non_blocking=True)
        y = target.to(self.device, non_blocking=True)
        generator.manual_seed(step_seed(self.cfg.train.seed, self.rank, self.state["step"]))
        loss = train_step(self.model, self.optimizer, x, y, self.state["step"], self.optim,
                          self.cfg.train.augment, generator)
        self.state["step"] += 1
        self.state["examples"] += len(x) * self.world
        return loss

    def _score_validation(self) -> dict | None:
        """Every rank scores its share of the validation split (no GPU idles); rank 0 gathers
        the shares and returns their metrics, the other ranks None."""
        part = score_split(self.model, open_store(self.cfg.data.store), self.cfg.data.valid_split,
                           self.cfg.train.eval_batch_size, self.device, self.rank, self.world)
        parts = [part]
        if self.world > 1:
            parts = [None] * self.world
            torch.distributed.all_gather_object(parts, part)
        return with_metrics(parts)["metrics"] if self.rank == 0 else None

    def _evaluate(self, val: dict, losses: list[float], end: bool) -> None:
        """Append validation metrics to the history (rank 0); decide stopping (`end`: the
        stream is exhausted)."""
        h = self.state["history"]
        h["examples"].append(self.state["examples"])
        h["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        h["val_mAP"].append(val["mAP"])
        h["val_AUC"].append(val["mAUC"])
        h["val_dprime"].append(val["dprime"])
        if not self.cfg.sweep.train_to_cap and settled(h["val_dprime"], h["examples"], self.cfg.sweep.rule):
            self.state["stopped"] = "settled"
        elif end or self.state["examples"] >= self.cfg.train.max_examples:
            self.state["stopped"] = "cap"

    def validate_and_report(self, losses: list[float], end: bool = False) -> bool:
        """Validate, checkpoint and report (a barrier on every rank); True when the trial is done."""
        window = self.cfg.sweep.smoothing_window
        val = self._score_validation()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                self._evaluate(val, losses, end)
                save_checkpoint(tmp, self.model, self.optimizer, self.state, self.cfg.model)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            self.state["stopped"] = self._from_rank_0(self.state["stopped"])
            ray.train.report(summary_metrics(self.state, self.cfg.sweep.rule), checkpoint=checkpoint)
        if self.rank == 0:  # after the checkpoint is persisted: a restart never repeats a step
            self.log()
            if self.cfg.train.keep_checkpoints:
                prune(self.config["train_run_path"], window, self.cfg.train.keep_checkpoints)
        return self.state["stopped"] is not None

    def _from_rank_0(self, stopped: str | None) -> str | None:
        """Rank 0's stopping decision, on every rank (they must leave the loop together)."""
        if self.world == 1:
            return stopped
        codes = [None, "settled", "cap"]
        t = torch.tensor([codes.index(stopped)], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return codes[int(t.item())]

    def log_startup(self, started: dict[str, float]) -> None:
        """Where a (re)started trial's start-up went, in seconds, as MLflow metrics
        `startup.<phase>_s`: tracking and sampler audit in the trial driver (driver), Train's
        controller and worker group (workers), model build and restore (model), the stream's
        planning and first read (first_batch)."""
        t = self.config.get("tracking")
        if not t or self.rank != 0 or not {"driver", "fit"} <= started.keys():
            return
        from mlflow.tracking import MlflowClient
        from sweep.tracking import log_metrics
        now = time.time()
        phases = {"driver": started["fit"] - started["driver"], "workers": started["worker"] - started["fit"],
                  "model": started["model"] - started["worker"], "first_batch": now - started["model"],
                  "total": now - started["driver"]}
        log_metrics(MlflowClient(t["uri"]), t["run_id"],
                    {f"startup.{k}_s": round(v, 2) for k, v in phases.items()}, self.state["examples"])

    def log(self) -> None:
        t = self.config.get("tracking")
        if t and self.rank == 0:
            from mlflow.tracking import MlflowClient
            _log_history(MlflowClient(t["uri"]), t["run_id"], self.state["history"],
                         self.cfg.sweep.smoothing_window)


def train_func(config: dict) -> None:
    """Ray Train worker entry point. config: {cfg (Config as a dict), beta, lr, tracking,
    train_run_path}."""
    started = {**config.get("started", {}), "worker": time.time()}
    _quiet_routine_logs()
    trial = _Trial.start(config)
    started["model"] = time.time()
    if trial.state["stopped"]:  # restarted after the last evaluation: nothing left to do
        ray.train.report(summary_metrics(trial.state, trial.cfg.sweep.rule))
        return
    every = trial.cfg.train.eval_every_examples
    next_eval = (trial.state["examples"] // every + 1) * every
    per_worker = max(1, trial.cfg.train.batch_size // trial.world)
    generator = torch.Generator(device=trial.device)  # re-seeded every step (step_seed)
    losses: list[float] = []
    trial.model.train()
    shard = ray.train.get_dataset_shard("train")
    for mel, target in shard.iter_torch_batches(batch_size=per_worker, collate_fn=_Collate()):
        if started:
            trial.log_startup(started)
            started = None
        losses.append(trial.step(mel, target, generator))
        examples = trial.state["examples"]
        if examples >= next_eval or examples >= trial.cfg.train.max_examples:
            if trial.validate_and_report(losses):
                return
            losses, next_eval = [], next_eval + every
    if losses:  # the stream ended between two evaluations
        trial.validate_and_report(losses, end=True)
