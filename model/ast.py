"""Audio Spectrogram Transformer (AST) on timm's distilled ViT.

Papers:
  'AST: Audio Spectrogram Transformer' - https://arxiv.org/abs/2104.01778 (Gong, Chung, Glass, 2021)
  'Training data-efficient image transformers & distillation through attention' (DeiT)
    - https://arxiv.org/abs/2012.12877 (Touvron et al., 2021)

The model is timm's `VisionTransformerDistilled` (cls + dist tokens) with a 1-channel,
overlapping 16x16 patch embedding (strides fstride x tstride) over a log-mel spectrogram,
frequency as the row axis, and AST's head: LayerNorm + Linear on the mean of the two final
tokens. Input [batch, frames, mels] normalised log-mel (see `normalise`) -> logits
[batch, classes].

Weights: `checkpoint_filter_fn` maps a published AST AudioSet checkpoint (keys `module.v.*`,
`module.mlp_head.*`) or a timm ImageNet DeiT file (3-channel stem, square grid, 1000-class
heads) to this model's keys and shapes, following AST's recipe: RGB stem summed to one
channel, position grid centre-cut where it shrinks and bilinearly interpolated where it
grows (time first, then frequency), cls/dist position vectors kept. `create_ast` reads a
file (model/weights.py: .pth/.pt, tensors only, or .safetensors), maps it with
`checkpoint_filter_fn` and loads it strictly, as timm's `load_checkpoint` does; a file that
cannot be read is an error naming it. Nothing is downloaded. (model/factory.py builds the AST
or any other `model.arch`.)
"""
from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models import adapt_input_conv, clean_state_dict
from timm.models.deit import VisionTransformerDistilled

from data.cli import InputError
from model.config import PATCH, ModelConfig
from model.weights import AUDIOSET_CLASSES, read_state_dict

__all__ = ["AST", "create_ast", "load_ast_checkpoint", "is_audioset_checkpoint", "checkpoint_filter_fn",
           "normalise", "normalisation_stats", "NORM_MEAN", "NORM_STD"]

_logger = logging.getLogger(__name__)

NORM_MEAN = -4.2677393  # AudioSet log-mel statistics of the AST recipe
NORM_STD = 4.5689974
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}  # embed, depth, heads
# published AST AudioSet files (128 mels x 1024 frames): pos_embed length -> stride
PUBLISHED_STRIDES = {1214: 10, 852: 12, 659: 14, 514: 16}
HEAD_PREFIX = "mlp_head."


def normalise(x: torch.Tensor, mean: float = NORM_MEAN, std: float = NORM_STD) -> torch.Tensor:
    """AST normalisation of raw log-mel: (x - mean) / (2 * std); the factor 2 is AST's."""
    return (x - mean) / (2 * std)


def normalisation_stats(batches: Iterable) -> tuple[float, float]:
    """Pooled mean and std (population) over every value of an iterable of raw log-mel
    arrays or tensors (any shape, e.g. [batch, frames, mels]); float64 accumulation.
    AST's own script averages per-batch stds instead; the pooled std is the exact one."""
    n, s, ss = 0, 0.0, 0.0
    for b in batches:
        a = (b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)).astype(np.float64)
        n, s, ss = n + a.size, s + a.sum(), ss + np.square(a).sum()
    if n == 0:
        raise ValueError("normalisation_stats: no values in the batches")
    mean = s / n
    return float(mean), float(np.sqrt(max(ss / n - mean * mean, 0.0)))


class ASTPatchEmbed(PatchEmbed):
    """timm PatchEmbed with a stride other than the patch size (AST's overlapping patches).
    Sees [batch, 1, mels, frames]; grid = floor((size - 16) / stride) + 1 per axis."""

    def __init__(self, *args, stride: tuple[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        old = self.proj
        self.proj = nn.Conv2d(old.in_channels, old.out_channels, self.patch_size, stride=stride,
                              bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
        self.grid_size = tuple((s - p) // st + 1 for s, p, st in zip(self.img_size, self.patch_size, stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]


class AST(VisionTransformerDistilled):
    """AST: [batch, frames, mels] normalised log-mel -> logits [batch, n_classes]."""

    def __init__(self, frames: int, mels: int, fstride: int, tstride: int, n_classes: int,
                 embed_dim: int, depth: int, num_heads: int):
        if min(frames, mels) < PATCH:
            raise InputError(f"AST needs at least {PATCH} frames and mels, got {frames} x {mels}")
        if embed_dim % num_heads:
            raise InputError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        super().__init__(img_size=(mels, frames), patch_size=PATCH, in_chans=1, num_classes=0,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         embed_layer=partial(ASTPatchEmbed, stride=(fstride, tstride)))
        self.n_classes = n_classes
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim, eps=1e-5), nn.Linear(embed_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2).unsqueeze(1)                       # [B, 1, mels, frames]
        x = self.forward_features(x)                              # [B, 2 + patches, D]
        x = self.forward_head(x, pre_logits=True)                 # mean(cls, dist) [B, D]
        # the classifier in fp32 even under autocast: bf16 logits (8 bits of mantissa) tie
        # many scores, which moves AP and AUC
        with torch.autocast(x.device.type, enabled=False):
            return self.mlp_head(x.float())                       # [B, K] float32


def _fit_axis(grid: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """grid [1, h, w, D] (h, w patches): centre-cut `axis` (1 rows = freq, 2 cols = time)
    to `size` if it shrinks, bilinear (antialias off, align_corners False) if it grows."""
    old = grid.shape[axis]
    if size <= old:
        start = old // 2 - size // 2
        return grid.narrow(axis, start, size)
    new_hw = [grid.shape[1], grid.shape[2]]
    new_hw[axis - 1] = size
    flat = resample_abs_pos_embed(grid.flatten(1, 2), new_hw, old_size=grid.shape[1:3], num_prefix_tokens=0,
                                  interpolation="bilinear", antialias=False)
    return flat.reshape(1, *new_hw, -1)


def _adapt_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """pos [1, 2 + h*w, D] on an (h freq, w time) grid -> [1, 2 + H*W, D]; time first, then frequency."""
    prefix, grid = pos[:, :2], pos[:, 2:].reshape(1, *old_grid, -1)
    grid = _fit_axis(_fit_axis(grid, new_grid[1], axis=2), new_grid[0], axis=1)
    return torch.cat([prefix, grid.reshape(1, new_grid[0] * new_grid[1], -1)], dim=1)


def _published_grid(stride: int) -> tuple[int, int]:
    """(freq, time) patch grid of a published AST file: 128 mels x 1024 frames."""
    return (128 - PATCH) // stride + 1, (1024 - PATCH) // stride + 1


def _source_grid(pos: torch.Tensor, model: AST, imagenet: bool) -> tuple[int, int]:
    """(freq, time) grid of a checkpoint's pos_embed [1, 2 + n, D]: square for ImageNet
    weights; for AST weights the published 128 x 1024 grid if n + 2 is a published length
    (the model must use that stride), else the model's frequency rows (same mels and fstride
    assumed) by n / rows."""
    n, rows = pos.shape[1] - 2, model.patch_embed.grid_size[0]
    side = int(round(n ** 0.5))
    if imagenet and side * side == n:
        return side, side
    if not imagenet and n + 2 in PUBLISHED_STRIDES:
        stride = PUBLISHED_STRIDES[n + 2]
        if model.patch_embed.proj.stride != (stride, stride):
            raise InputError(f"pos_embed {tuple(pos.shape)} is a stride-{stride} AST checkpoint; "
                             f"the model's stride is {model.patch_embed.proj.stride}")
        return _published_grid(stride)
    if not imagenet and n % rows == 0:
        return rows, n // rows
    raise InputError(f"shape mismatch for 'pos_embed': checkpoint {tuple(pos.shape)}, model "
                     f"{tuple(model.pos_embed.shape)} (grid {model.patch_embed.grid_size}; check mels/fstride)")


def checkpoint_filter_fn(state_dict: dict, model: AST, source_grid: tuple[int, int] | None = None) -> dict:
    """AST AudioSet or timm DeiT ImageNet weights -> this model's keys and shapes (pure).

    Unwraps 'model'/'state_dict' containers and `module.` prefixes, drops the 1000-class
    `head`/`head_dist`, adapts the stem and position grid, and fills the classifier
    (`mlp_head.*`) from `model` where the source has none or its class count differs.
    Any other missing, unexpected or mis-shaped key raises ValueError naming it.
    `source_grid` (freq, time) of the checkpoint's patches; inferred by `_source_grid` if None."""
    for container in ("model", "state_dict"):
        if isinstance(state_dict.get(container), dict):
            state_dict = state_dict[container]
    sd = clean_state_dict(state_dict)
    imagenet = "v.pos_embed" not in sd
    if not imagenet:       # AST: module.v.* backbone, module.mlp_head.{0,1}.*
        sd = {k.removeprefix("v."): v for k, v in sd.items()}
    elif not ("dist_token" in sd and "pos_embed" in sd):
        raise InputError("unknown checkpoint layout: expected AST keys (module.v.pos_embed) "
                         "or a timm distilled DeiT (dist_token, pos_embed)")
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k not in target:
            raise InputError(f"unexpected key {k!r} {tuple(v.shape)} in the checkpoint")
        want = target[k].shape
        if k == "patch_embed.proj.weight" and v.ndim == 4 and v.shape[1] != want[1]:
            v = adapt_input_conv(want[1], v)            # RGB stem summed to 1 channel
        elif k == "pos_embed" and v.shape != want:
            grid = source_grid or _source_grid(v, model, imagenet)
            v = _adapt_pos_embed(v, grid, model.patch_embed.grid_size)
        if v.shape != want:
            if k.startswith(HEAD_PREFIX):
                _logger.info("re-initialising %s: checkpoint %s, model %s", k, tuple(v.shape), tuple(want))
                v = target[k]
            else:
                raise InputError(f"shape mismatch for {k!r}: checkpoint {tuple(v.shape)}, model {tuple(want)}")
        out[k] = v
    for k in target.keys() - out.keys():
        if not k.startswith(HEAD_PREFIX):
            raise InputError(f"missing key {k!r} {tuple(target[k].shape)} in the checkpoint")
        out[k] = target[k]
    return out


def _dims(cfg: ModelConfig) -> tuple[int, int, int]:
    if cfg.size not in SIZES:
        raise InputError(f"unknown AST size {cfg.size!r}; expected one of {sorted(SIZES)}")
    embed, depth, heads = SIZES[cfg.size]
    return cfg.embed_dim or embed, cfg.depth or depth, cfg.num_heads or heads


def is_audioset_checkpoint(path: str | Path) -> bool:
    """Whether a weights file is a published-layout AST checkpoint with AudioSet's 527-class
    classifier: a model trained on AudioSet (balanced, by the AST recipe)."""
    sd = read_state_dict(path)
    head = sd.get("mlp_head.1.weight")
    return "v.pos_embed" in sd and head is not None and head.shape[0] == AUDIOSET_CLASSES


def _load(model: AST, state_dict: dict, source_grid: tuple[int, int] | None = None) -> AST:
    model.load_state_dict(checkpoint_filter_fn(state_dict, model, source_grid), strict=True)
    return model


def create_ast(cfg: ModelConfig) -> AST:
    """Build the AST of `cfg`; load `cfg.weights` (AST or DeiT layout, told apart by keys).
    An AST checkpoint must share the model's strides and mel count; frames may differ."""
    embed, depth, heads = _dims(cfg)
    model = AST(cfg.frames, cfg.mels, cfg.fstride, cfg.tstride, cfg.n_classes, embed, depth, heads)
    if cfg.weights:
        _load(model, read_state_dict(cfg.weights))
    return model


def load_ast_checkpoint(path: str | Path, n_classes: int | None = None, frames: int | None = None,
                        mels: int = 128) -> AST:
    """A published AST checkpoint (DataParallel keys module.v.*, module.mlp_head.0/1.*) -> AST.

    Dims come from the tensors (heads = embed_dim // 64, as in DeiT); the stride from the
    pos_embed length of the 128 x 1024 published files (1214 -> 10, 852 -> 12, 659 -> 14,
    514 -> 16) or else from the file name (`..._<fstride>_<tstride>...`). `frames` defaults
    to 1024 (the published input); another count adapts the time axis of the position grid.
    `mels` is the file's (and the model's) mel count. `n_classes` other than the file's
    re-initialises the classifier Linear."""
    sd = read_state_dict(path)
    if "v.pos_embed" not in sd:
        raise InputError(f"{path}: not an AST checkpoint (no module.v.pos_embed key)")
    pos, stem = sd["v.pos_embed"], sd["v.patch_embed.proj.weight"]
    match = re.search(r"_(\d+)_(\d+)(?:_|\.)", Path(path).name)
    if mels == 128 and pos.shape[1] in PUBLISHED_STRIDES:
        fstride = tstride = PUBLISHED_STRIDES[pos.shape[1]]
    elif match:
        fstride, tstride = int(match[1]), int(match[2])
    else:
        raise InputError(f"{path}: cannot infer the patch stride from pos_embed {tuple(pos.shape)}; "
                         "name the file like audioset_<fstride>_<tstride>_....pth")
    rows, n = (mels - PATCH) // fstride + 1, pos.shape[1] - 2
    if n % rows:
        raise InputError(f"{path}: pos_embed {tuple(pos.shape)} does not fit {rows} frequency rows "
                         f"(mels {mels}, fstride {fstride})")
    embed = stem.shape[0]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("v.blocks."))
    cfg = ModelConfig(embed_dim=embed, depth=depth, num_heads=max(1, embed // 64), frames=frames or 1024,
                    mels=mels, fstride=fstride, tstride=tstride,
                    n_classes=n_classes or sd["mlp_head.1.weight"].shape[0])
    return _load(create_ast(cfg), sd, source_grid=(rows, n // rows))
