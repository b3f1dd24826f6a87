"""The model's configuration: its architecture, geometry and weights, its augmentation and its
optimiser, as typed dataclasses. No torch here, so a sweep's config loads, checks and prints
without importing the model.

`ModelConfig.arch` names the model (model/factory.py builds it), in one of three forms
(`arch_kind`): `ast` (model/ast.py), a timm architecture by name (`resnet10t`), or
`package.module:function`, a user's factory of a torch.nn.Module."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PATCH", "AST_KEYS", "ModelConfig", "arch_kind", "AugmentConfig", "OptimConfig"]

PATCH = 16  # the AST's patch: 16 x 16 (frequency x time), at strides fstride x tstride
AST_KEYS = ("size", "embed_dim", "depth", "num_heads", "fstride", "tstride")  # the AST's own geometry
_FACTORY_FORM = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_TIMM_FORM = re.compile(r"[A-Za-z]\w*")


def arch_kind(arch: str) -> str | None:
    """"ast"; "factory" for `package.module:function`; "timm" for a plain name (a timm
    architecture, without a weights tag); None for anything else."""
    if arch == "ast":
        return "ast"
    if _FACTORY_FORM.fullmatch(arch):
        return "factory"
    return "timm" if _TIMM_FORM.fullmatch(arch) else None


@dataclass
class ModelConfig:
    arch: str = "ast"               # "ast" | a timm architecture (resnet10t) | package.module:function
    frames: int = 1024              # input length (10 ms frames)     } a sweep takes these
    mels: int = 128                 # mel bins                         } three from the store
    n_classes: int = 527            #                                  }
    weights: str | None = None      # local .pth/.safetensors: for ast a published AST checkpoint or a timm
                                    # DeiT; for a timm arch a file of that architecture in timm's layout;
                                    # for a factory a state dict of its module
    allow_audioset_weights: bool = False  # start an AudioSet sweep from AudioSet-trained weights anyway
    options: dict[str, object] = field(default_factory=dict)  # keyword arguments for timm.create_model
                                    # (e.g. drop_path_rate) or the factory; not for ast
    # the AST's geometry (AST_KEYS): arch "ast" only
    size: str = "tiny"              # "tiny" | "small" | "base"
    embed_dim: int | None = None    # explicit dims override the size
    depth: int | None = None
    num_heads: int | None = None
    fstride: int = 10               # patch stride along frequency (rows)
    tstride: int = 10               # patch stride along time (columns)


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
