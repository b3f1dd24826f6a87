"""The per-trial Ray Train loop: stream the oversampled data, train, validate, checkpoint.

`train_func(config)` runs on every Train worker. The training budget and the validation
cadence are counted in examples. Every `eval_every_examples`, rank 0 scores the validation
split, computes d' (raw and trailing-smoothed) and saves a checkpoint; every rank calls
`ray.train.report` (a barrier). A restarted worker group resumes from the latest checkpoint:
the stream is rebuilt from the examples already seen (the dataset factory in sweep/tune.py
reads them from the checkpoints when the worker group starts), so no example is trained on
twice and every rank still gets an equal share.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import replace

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from data.store import open_store
from model.ast import create_ast
from model.step import make_optimizer, train_step, unwrap
from sweep.config import Config, from_dict
from sweep.evaluate import evaluate_split, load_state, save_checkpoint

__all__ = ["train_func", "summary_metrics", "step_seed", "HISTORY_KEYS"]

HISTORY_KEYS = ("examples", "train_loss", "val_mAP", "val_AUC", "val_dprime", "val_dprime_ma")


class _Collate(NumpyBatchCollateFn):
    """Stream rows -> (mel [b, T, F] float16, target [b, K] float32); string ids dropped.

    The arrays are read-only views of Ray's object store; the tensors share them without a
    copy (and without torch's warning about it) because the step never writes its inputs:
    `train_step` casts, augments and normalises out of place."""

    def __call__(self, batch):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(batch["mel"]), torch.from_numpy(batch["target"])


def _tracking(config: dict):
    t = config.get("tracking")
    if not t or ray.train.get_context().get_world_rank() != 0:
        return None, None
    from mlflow.tracking import MlflowClient
    return MlflowClient(t["uri"]), t["run_id"]


def _log_history(client, run_id: str, history: dict) -> None:
    """Log the evaluations MLflow does not have yet (all after a restart's gap, else the last)."""
    from sweep.tracking import log_metrics
    logged = client.get_metric_history(run_id, "val_dprime")
    last = max((m.step for m in logged), default=-1)
    for i, examples in enumerate(history["examples"]):
        if examples > last:
            log_metrics(client, run_id, {k: history[k][i] for k in HISTORY_KEYS if k != "examples"}, examples)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of one optimizer step on one rank: a function of these alone, so a
    worker restarted from a checkpoint redoes its steps exactly (same stream, same masks and
    MixUp draws) and re-reports the same validation numbers."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def summary_metrics(state: dict) -> dict:
    """What a trial reports: progress and the latest evaluation of its history."""
    h = state["history"]
    return {"examples": state["examples"], "step": state["step"], "evals": len(h["examples"]),
            **{k: h[k][-1] for k in HISTORY_KEYS if k != "examples"}}


def train_func(config: dict) -> None:
    """Ray Train worker entry point. config: {cfg (Config as a dict), beta, lr, tracking}."""
    cfg: Config = from_dict(Config, config["cfg"])
    beta, lr = config["beta"], config["lr"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    store = open_store(cfg.data.store)
    model = ray.train.torch.prepare_model(create_ast(cfg.model))
    optim_cfg = replace(cfg.train.optim, lr=lr)
    optimizer = make_optimizer(model, optim_cfg)
    state = {"examples": 0, "step": 0, "history": {k: [] for k in HISTORY_KEYS}, "beta": beta, "lr": lr}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_state(d)
            model_state = torch.load(os.path.join(d, "model.pt"), map_location=device)
            unwrap(model).load_state_dict(model_state)
            optimizer.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), map_location=device))
    client, run_id = _tracking(config)
    if client is not None and checkpoint:
        _log_history(client, run_id, state["history"])  # evaluations lost between report and log
    generator = torch.Generator(device=device)  # re-seeded every step (step_seed)
    every, budget = cfg.train.eval_every_examples, cfg.train.examples
    next_eval = (state["examples"] // every + 1) * every
    per_worker = max(1, cfg.train.batch_size // world)
    losses: list[float] = []

    def validate_and_report() -> None:
        nonlocal next_eval
        h = state["history"]
        metrics = {"examples": state["examples"], "step": state["step"], "evals": len(h["examples"]) + 1}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                val = evaluate_split(model, store, cfg.data.valid_split, cfg.train.eval_batch_size, device)["metrics"]
                h["examples"].append(state["examples"])
                h["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
                h["val_mAP"].append(val["mAP"])
                h["val_AUC"].append(val["mAUC"])
                h["val_dprime"].append(val["dprime"])
                # causal mean of the last `smoothing_window` evaluations: what Tune and ASHA see
                # live; selection recomputes the paper's centred average on the whole trace
                h["val_dprime_ma"].append(float(np.mean(h["val_dprime"][-cfg.sweep.smoothing_window:])))
                metrics = summary_metrics(state)
                save_checkpoint(tmp, model, optimizer, state, cfg.model)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if client is not None:  # after the checkpoint is persisted: a restart never repeats a step
            _log_history(client, run_id, state["history"])
        losses.clear()
        next_eval += every

    if state["examples"] >= budget:  # restarted after the last evaluation: nothing left to do
        ray.train.report(summary_metrics(state))
        return
    shard = ray.train.get_dataset_shard("train")
    model.train()
    for mel, target in shard.iter_torch_batches(batch_size=per_worker, collate_fn=_Collate()):
        x = mel.to(device, non_blocking=True)
        y = target.to(device, non_blocking=True)
        generator.manual_seed(step_seed(cfg.train.seed, rank, state["step"]))
        losses.append(train_step(model, optimizer, x, y, state["step"], optim_cfg, cfg.train.augment, generator))
        state["step"] += 1
        state["examples"] += len(x) * world
        if state["examples"] >= next_eval or state["examples"] >= budget:
            validate_and_report()
        if state["examples"] >= budget:
            break
    if losses:  # the stream ended between two evaluations
        validate_and_report()
