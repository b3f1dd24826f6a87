"""A user's own models, as `model.arch: tests.own_models:<function>` names them (importable from
the repository root, which a local Ray puts on its workers' path): factories that take the
store's geometry and return a torch.nn.Module, one good and three that get the contract wrong;
and an object that is no tensor, which a weights file must not hold."""
import torch
import torch.nn as nn


class FrameTagger(nn.Module):
    """[batch, frames, mels] -> a 1-D convolution over time (mel bins as channels) -> max over
    time -> logits [batch, n_classes]."""

    def __init__(self, mels: int, n_classes: int, width: int):
        super().__init__()
        self.conv = nn.Conv1d(mels, width, kernel_size=3, padding=1)
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x.transpose(1, 2))).amax(-1))


def frame_tagger(frames: int, mels: int, n_classes: int, width: int = 16) -> nn.Module:
    return FrameTagger(mels, n_classes, width)


def per_frame_logits(frames: int, mels: int, n_classes: int) -> nn.Module:
    """Wrong: logits per frame, [batch, frames, n_classes]."""
    return nn.Linear(mels, n_classes)


def not_a_module(frames: int, mels: int, n_classes: int) -> dict:
    """Wrong: a dict of tensors, not a module."""
    return {"weight": torch.zeros(n_classes, mels)}


def needs_a_file(frames: int, mels: int, n_classes: int) -> nn.Module:
    """Wrong: fails when called."""
    raise FileNotFoundError("vocab.txt")


class Unsafe:
    """Not a tensor: weights-only loading refuses a pickle that holds one (it could run code)."""
