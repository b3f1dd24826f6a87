"""One training step and batch prediction for the AST, in plain PyTorch (no Ray).

train_step: raw log-mel [batch, frames, mels] -> augment (MixUp, SpecAugment) -> normalise
-> forward (bf16 autocast on CUDA, fp32 on CPU) -> BCE with logits -> backward, accumulated
over micro-batches -> Adam step, with the learning rate of `lr_at(step)`.
predict: batches of raw log-mel -> sigmoid scores for evaluation.

The caller may wrap the model in DistributedDataParallel: gradients then synchronise only on
the last micro-batch, and `predict` runs the unwrapped module (it may run on one rank only).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model.ast import normalise
from model.augment import augment
from model.config import AugmentConfig, OptimConfig

__all__ = ["unwrap", "OptimConfig", "make_optimizer", "lr_at", "train_step", "predict"]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


_COMPILED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()   # modules _compile_once compiled


def _compile_once(model: nn.Module) -> None:
    """torch.compile the module's call in place, once per module, with the public
    nn.Module.compile: the module stays the same object, so its state_dict keys stay those of
    an uncompiled model (a torch.compile(model) wrapper would prefix them with `_orig_mod.`).
    The modules already compiled are remembered in a weak set (no reference kept)."""
    if model not in _COMPILED:
        model.compile()
        _COMPILED.add(model)


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    """Adam over all parameters (no groups, no exclusions); the fused kernel on CUDA."""
    if cfg.lr is None:
        raise ValueError("OptimConfig.lr is not set")
    params = list(model.parameters())
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                            fused=True if params[0].is_cuda else None)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): cfg.lr * (step + 1) / warmup_steps
    during warm-up, reaching cfg.lr at step warmup_steps - 1, then constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def _autocast(x: torch.Tensor):
    """bf16 autocast on CUDA; a no-op context (fp32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if x.is_cuda else contextlib.nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               step: int, cfg: OptimConfig, aug: AugmentConfig,
               generator: torch.Generator | None = None) -> float:
    """One optimizer step on a batch. x raw log-mel [batch, frames, mels] (float16/32, on the
    model's device), y multi-hot targets [batch, classes]. The gradient is that of the mean
    BCE over the whole batch whatever cfg.micro_batch is (each micro-batch's mean loss is
    weighted by its share of the batch). Returns that mean loss (one host sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    x, y = augment(x.float(), y.float(), aug, generator)
    x = normalise(x)
    if cfg.compile:
        _compile_once(model)
    batch = x.shape[0]
    size = cfg.micro_batch or batch
    starts = range(0, batch, size)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    for i, s in enumerate(starts):
        xs, ys = x[s:s + size], y[s:s + size]
        last = i == len(starts) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync:
            with _autocast(xs):
                logits = model(xs)
            loss = F.binary_cross_entropy_with_logits(logits.float(), ys) * (len(xs) / batch)
            loss.backward()
        total += loss.detach()
    optimizer.step()
    return total.item()


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Scores of `model` over batches of (x raw log-mel [b, frames, mels], y targets [b, classes]),
    tensors or numpy. Returns (sigmoid(logits) float32 [N, classes], targets float32 [N, classes]).
    Runs in eval mode (the previous mode is restored) on the module unwrapped from DDP."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    scores, targets = [], []
    try:
        for x, y in batches:
            x = normalise(torch.as_tensor(x).to(device, torch.float32, non_blocking=True))
            with _autocast(x):
                logits = net(x)
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float32))
    finally:
        net.train(was_training)
    if not scores:
        raise ValueError("predict: no batches")
    return np.concatenate(scores), np.concatenate(targets)
