"""Local weight files, read safely: a .pth/.pt (tensors only: torch.load with weights_only) or a
.safetensors file -> a flat state dict, with timm's `load_state_dict` ('state_dict'/'model'
containers unwrapped, `module.` prefixes dropped). Nothing is downloaded. A file that is missing,
NumPy, cut short, damaged, or a pickle that holds more than tensors is an error naming it.

`audioset_classifier` tells whether a state dict was trained on AudioSet's 527 classes (the
leakage guard of sweep/prepare.py)."""
from __future__ import annotations

import pickle
from pathlib import Path

from safetensors import SafetensorError
from timm.models import load_state_dict

from data.cli import InputError

__all__ = ["AUDIOSET_CLASSES", "weights_file", "read_state_dict", "audioset_classifier"]

AUDIOSET_CLASSES = 527


def weights_file(path: str | Path) -> str:
    """A local .pth/.pt or .safetensors file, checked before timm reads it (timm's own error
    for a missing file has no message, and it hands .npz/.npy to a JAX ViT loader)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix.lower() in (".npz", ".npy"):
        raise InputError(f"{path}: NumPy weights are not supported (a .pth/.pt or .safetensors file)")
    return str(path)


def read_state_dict(path: str | Path) -> dict:
    """A local weights file -> flat state dict {name: tensor} (see the module docstring);
    a file that cannot be read is a ValueError (FileNotFoundError if missing) naming it."""
    try:
        return load_state_dict(weights_file(path), use_ema=False, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, SafetensorError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise InputError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from e


def audioset_classifier(state_dict: dict) -> str | None:
    """The name of a classifier weight with AudioSet's 527 outputs (a Linear [527, D] or a 1x1
    conv [527, D, 1, 1]) in a state dict, or None: a model trained on AudioSet."""
    return next((k for k, v in state_dict.items() if k.endswith("weight") and getattr(v, "ndim", 0) in (2, 4)
                 and v.shape[0] == AUDIOSET_CLASSES), None)
