"""Sweep configuration: typed dataclasses, loaded from YAML, overridable on the command line.

    cfg = load_config("configs/demo.yaml", ["sweep.betas=[0, 1]", "train.examples=4000"])

Every key is checked: an unknown or misspelled key is an error naming it, never a silent
default. `to_dict(cfg)` is what gets printed and logged with every run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.synth import SynthConfig
from model.ast import ASTConfig
from model.augment import AugmentConfig
from model.step import OptimConfig

__all__ = ["DataConfig", "TrainConfig", "SweepConfig", "ResourcesConfig", "RunConfig", "Config",
           "load_config", "to_dict", "flatten", "ConfigError"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


@dataclass
class DataConfig:
    store: str = "runs/demo/store"          # store directory (relative to the working directory)
    synth: SynthConfig | None = field(default_factory=SynthConfig)  # build the store if missing
    train_split: str = "train"
    valid_split: str = "valid"
    eval_splits: list[str] = field(default_factory=lambda: ["eval_public", "eval_internal"])
    units_per_block: int = 64               # oversampling stream: row-group units shuffled together


@dataclass
class TrainConfig:
    batch_size: int = 32                    # global batch (split over Train workers)
    examples: int = 24_000                  # budget per trial, in examples (not passes)
    eval_every_examples: int = 2_000        # validation cadence
    eval_batch_size: int = 128
    seed: int = 0
    keep_checkpoints: int | None = None     # None keeps every evaluation's checkpoint
    torch_threads: int | None = None        # CPU threads per Train worker (None: Ray's default)
    optim: OptimConfig = field(default_factory=OptimConfig)      # lr is swept (sweep.lrs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class SweepConfig:
    betas: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 1.0])
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3])
    smoothing_window: int = 7               # centred moving average (paper 3.2)
    asha: bool = False                      # stop hopeless trials early
    asha_grace_evals: int = 4
    max_failures: int = 2                   # per trial: Train worker restarts from checkpoint


@dataclass
class ResourcesConfig:
    num_workers: int = 1                    # Ray Train workers per trial
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    max_concurrent_trials: int | None = None  # None: derived from the cluster's resources
    driver_resource: str | None = None      # custom resource for trial drivers (cluster.yaml)


@dataclass
class RunConfig:
    name: str = "demo"                      # experiment name; stable across --resume
    run_dir: str = "runs/demo"              # results.json, predictions/, report/, mlflow.db
    storage_path: str | None = None         # Tune/Train storage (default: <run_dir>/ray); s3://...
    ray_address: str | None = None          # None: ray.init() default (a `ray up` head, or local)
    mlflow_experiment: str = "balance-sweep"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ASTConfig = field(default_factory=ASTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _dataclass_of(tp):
    """The dataclass inside a type hint like `SynthConfig | None`, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def from_dict(cls, values: dict, path: str = ""):
    """Build dataclass `cls` from nested dicts; unknown keys raise ConfigError naming them."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(path + k for k in unknown)}; "
                          f"known under {path or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        sub = _dataclass_of(hints[key])
        if sub is not None and value is not None:
            kwargs[key] = from_dict(sub, value, f"{path}{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{path}{key}")
    return cls(**kwargs)


def _coerce(value, hint, name: str):
    """Numbers as the field declares them (YAML reads `1e-4` as a string), lists and tuples
    element-wise; a value that does not convert is a ConfigError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        numeric = [a for a in args if a in (int, float)]
        return _coerce(value, numeric[0], name) if numeric and not isinstance(value, bool) else value
    try:
        if hint is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, str):
            return int(value.replace("_", ""))
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            items = [_coerce(v, args[0], name) for v in value] if args else list(value)
            return tuple(items) if origin is tuple else items
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(values: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"optim": {"lr": 1}}} -> {"train.optim.lr": 1} (for MLflow params)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _apply_override(values: dict, assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. train.examples=4000)")
    *parents, leaf = key.strip().split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(text)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- `KEY=VALUE` overrides (values parsed as YAML)."""
    values = to_dict(Config())
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        _merge(values, loaded, str(path))
    for assignment in overrides:
        _apply_override(values, assignment)
    return from_dict(Config, values)


def _merge(base: dict, update: dict, source: str, path: str = "") -> None:
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: {path or 'top level'} must be a mapping")
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, source, f"{path}{k}.")
        else:
            base[k] = v
