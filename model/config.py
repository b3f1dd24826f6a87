"""The model's configuration: the AST's geometry and weights, its augmentation and its
optimiser, as typed dataclasses. No torch here, so a sweep's config loads, checks and prints
without importing the model."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PATCH", "ASTConfig", "AugmentConfig", "OptimConfig"]

PATCH = 16  # the AST's patch: 16 x 16 (frequency x time), at strides fstride x tstride


@dataclass
class ASTConfig:
    size: str = "tiny"              # "tiny" | "small" | "base"
    embed_dim: int | None = None    # explicit dims override the size
    depth: int | None = None
    num_heads: int | None = None
    frames: int = 1024              # input length (10 ms frames)
    mels: int = 128                 # mel bins
    fstride: int = 10               # patch stride along frequency (rows)
    tstride: int = 10               # patch stride along time (columns)
    n_classes: int = 527
    weights: str | None = None      # local path: published AST checkpoint or timm ImageNet DeiT .pth/.safetensors
    allow_audioset_weights: bool = False  # start an AudioSet sweep from an AST AudioSet checkpoint anyway


@dataclass
class AugmentConfig:
    specaugment: bool = True
    freqm: int = 48        # max frequency-mask width at 128 mel bins; scaled with mels / 128
    timem: int = 192       # max time-mask width at 1024 frames; scaled with frames / 1024
    mixup: bool = True
    mixup_alpha: float = 10.0


@dataclass
class OptimConfig:
    lr: float | None = None        # Adam's learning rate (a sweep sets each trial's, from sweep.lrs)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays; paper: plain Adam; AST (0.95, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0          # linear warm-up length in optimizer steps (0: none, as the paper)
    micro_batch: int | None = None  # gradient accumulation: split each batch into micro-batches of this size
    compile: bool = False          # torch.compile the model in place on its first train_step
