"""Any `model.arch` built for log-mel spectrograms: [batch, frames, mels] -> logits [batch, classes].

The three kinds of arch (model/config.py `arch_kind`):
- `ast`: the AST (model/ast.py `create_ast`); weights in the published AST or timm DeiT layout.
- a timm architecture by name (`resnet10t`, `mobilenetv3_small_050`, `vit_tiny_patch16_224`):
  `timm.create_model(name, in_chans=1, num_classes=n_classes, **options)`, with
  `img_size=(frames, mels)` where the architecture has a fixed input size (ViT, DeiT, Swin, ...),
  wrapped by `SpectrogramImage`. `model.weights`: a file of that architecture in timm's own
  layout (what timm saves and publishes, e.g. ImageNet weights), loaded by timm's pretrained path
  (`pretrained_cfg_overlay=dict(file=...)`): the RGB stem summed to one channel, a ViT's position
  grid resampled, the classifier kept when its class count is the store's, re-initialised
  otherwise. Every other tensor of the model must be in the file, and nothing else.
- `package.module:function`: `function(frames=, mels=, n_classes=, **options)` returns a
  torch.nn.Module that takes [batch, frames, mels] and returns logits [batch, n_classes].
  `model.weights`: a state dict of that module, loaded strictly. The module must be importable
  wherever the model is built (every Ray worker, and `sweep.evaluate`).

Every non-AST model is run once on a batch of 2 when it is built, so logits of the wrong shape,
or an input too small for the architecture, are found at once. Errors - an unknown timm name, a
factory that cannot be imported, called or run, weights that cannot be read or do not fit - are
ValueErrors (FileNotFoundError for a missing file) naming the arch or the file.
"""
from __future__ import annotations

import difflib
import importlib

import torch
import torch.nn as nn

from data.cli import InputError
from model.ast import create_ast, is_audioset_checkpoint
from model.config import AST_KEYS, ModelConfig, arch_kind
from model.weights import audioset_classifier, read_state_dict

__all__ = ["SpectrogramImage", "build_model", "parameter_count", "audioset_trained"]

# keyword arguments the store and model.weights set, never model.options
_RESERVED = {"timm": ("in_chans", "num_classes", "img_size", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                      "checkpoint_path"),
             "factory": ("frames", "mels", "n_classes")}


class SpectrogramImage(nn.Module):
    """A timm image model on log-mel: [batch, frames, mels] -> the 1-channel image
    [batch, 1, frames, mels] (time as rows, mel bins as columns) -> logits [batch, classes].
    timm's `forward_head` (pooling, classifier) runs in fp32 even under autocast, as the AST's
    head does: bf16 logits tie many scores, which moves AP and AUC."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.forward_features(x.unsqueeze(1))
        with torch.autocast(x.device.type, enabled=False):
            return self.net.forward_head(x.float())                # [B, K] float32


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.arch` for cfg.frames x cfg.mels log-mel and cfg.n_classes, with
    cfg.weights loaded (see the module docstring), in training mode."""
    kind = arch_kind(cfg.arch)
    if kind == "ast":
        if cfg.options:
            raise InputError(f"model.options {cfg.options}: the AST takes none (its geometry is model."
                             + ", model.".join(AST_KEYS) + ")")
        return create_ast(cfg)
    if kind == "timm":
        model = _timm_model(cfg)
    elif kind == "factory":
        model = _factory_model(cfg)
    else:
        raise InputError(f"model.arch {cfg.arch!r}: not 'ast', a timm architecture (e.g. resnet10t) or "
                         "package.module:function")
    _check_logits(model, cfg)
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def audioset_trained(cfg: ModelConfig) -> bool:
    """Whether cfg.weights were trained on AudioSet: for the AST a published AST AudioSet
    checkpoint, for any other arch a file with a 527-output classifier."""
    if arch_kind(cfg.arch) == "ast":
        return is_audioset_checkpoint(cfg.weights)
    return audioset_classifier(read_state_dict(cfg.weights)) is not None


def _options(cfg: ModelConfig, kind: str) -> dict:
    """model.options as keyword arguments, none of them one the build sets itself."""
    taken = sorted(set(cfg.options) & set(_RESERVED[kind]))
    if taken:
        raise InputError(f"model.options.{taken[0]}: set from the store and model.weights, not an option")
    return dict(cfg.options)


def _first_line(e: BaseException) -> str:
    """An exception's message in one line (torch's load errors: their first problem), cut to 300
    characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _timm_model(cfg: ModelConfig) -> SpectrogramImage:
    """timm's `cfg.arch` for one channel and the store's classes, with cfg.weights (timm's
    layout) loaded by timm, wrapped for [batch, frames, mels]."""
    import timm
    from timm.models import get_pretrained_cfg
    if not timm.is_model(cfg.arch):
        close = difflib.get_close_matches(cfg.arch, timm.list_models(), n=3)
        raise InputError(f"model.arch {cfg.arch!r}: not 'ast', package.module:function or a timm architecture"
                         + (f" (timm has {', '.join(close)})" if close else ""))
    kwargs = {**_options(cfg, "timm"), "in_chans": 1, "num_classes": cfg.n_classes}
    pretrained = get_pretrained_cfg(cfg.arch)
    if pretrained is not None and pretrained.fixed_input_size:
        kwargs["img_size"] = (cfg.frames, cfg.mels)
    try:
        net = timm.create_model(cfg.arch, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise InputError(f"model.arch {cfg.arch!r}: timm cannot build it with {kwargs} ({_first_line(e)})") from e
    if cfg.weights:
        net = _timm_with_weights(cfg, kwargs, net, pretrained)
    return SpectrogramImage(net)


def _timm_with_weights(cfg: ModelConfig, kwargs: dict, bare: nn.Module, pretrained) -> nn.Module:
    """`cfg.arch` built again by timm's pretrained path from cfg.weights, once the file's tensors
    are known to be those of `bare` (the same model without weights), classifier aside."""
    import timm
    sd = read_state_dict(cfg.weights)
    heads = pretrained.classifier if pretrained is not None else None
    heads = tuple(f"{h}." for h in ([heads] if isinstance(heads, str) else heads or ()))
    want = {k for k in bare.state_dict() if not k.startswith(heads)}
    have = {k for k in sd if not k.startswith(heads)}
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        problems = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                    for names, what in ((missing, "of its tensors missing"), (unexpected, "tensors it does not have"))
                    if names]
        raise InputError(f"{cfg.weights}: not {cfg.arch} weights in timm's layout: " + "; ".join(problems))
    rows = next((sd[h + "weight"].shape[0] for h in heads if h + "weight" in sd), None)
    overlay = {"file": cfg.weights, **({"num_classes": rows} if rows else {})}  # the file's own classifier
    try:
        return timm.create_model(cfg.arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, ValueError, KeyError, AssertionError) as e:
        raise InputError(f"{cfg.weights}: does not load into {cfg.arch} ({_first_line(e)})") from e


def _factory_model(cfg: ModelConfig) -> nn.Module:
    """The module `package.module:function` returns for the store's geometry, with cfg.weights
    (its state dict) loaded strictly."""
    module, _, name = cfg.arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except Exception as e:  # noqa: BLE001 - whatever stops the user's module from importing is named
        raise InputError(f"model.arch {cfg.arch!r}: cannot import {name} from {module} "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    try:
        model = factory(frames=cfg.frames, mels=cfg.mels, n_classes=cfg.n_classes, **_options(cfg, "factory"))
    except Exception as e:  # noqa: BLE001 - the user's code: named, its traceback with --debug
        raise InputError(f"model.arch {cfg.arch!r}: the factory failed ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(model, nn.Module):
        raise InputError(f"model.arch {cfg.arch!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if cfg.weights:
        try:
            model.load_state_dict(read_state_dict(cfg.weights))
        except RuntimeError as e:
            raise InputError(f"{cfg.weights}: does not fit {cfg.arch} ({_first_line(e)})") from e
    return model


def _check_logits(model: nn.Module, cfg: ModelConfig) -> None:
    """The model takes [2, frames, mels] zeros (eval mode, no gradient) and returns logits [2, n_classes]."""
    x = torch.zeros(2, cfg.frames, cfg.mels)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - the architecture cannot take this input: named with its shape
        raise InputError(f"model.arch {cfg.arch!r} cannot take log-mel [batch, frames, mels] = {list(x.shape)} "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    finally:
        model.train(training)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != [2, cfg.n_classes]:
        raise InputError(f"model.arch {cfg.arch!r} returns {shape} for log-mel [batch, frames, mels] = {list(x.shape)}: "
                         f"expected logits [batch, classes] = [2, {cfg.n_classes}]")
