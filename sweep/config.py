"""Sweep configuration: typed dataclasses, loaded from YAML, overridable on the command line.

    cfg = load_config("configs/demo.yaml", ["sweep.betas=[0, 1]", "train.max_examples=4000"])

Every key is checked: an unknown or misspelled key is an error naming it, never a silent
default. `to_dict(cfg)` is what gets printed and logged with every run. Relative paths in a
config file are relative to the file (`PATH_KEYS`). One value comes from the environment when
the config leaves it unset: run.storage_path from SWEEP_STORAGE.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.cli import InputError
from data.synth import SynthConfig
from model.config import AugmentConfig, ModelConfig, OptimConfig, arch_kind
from data.balance import RECIPES, recipe
from sweep.select import StoppingRule
from sweep.trial import Arm, Trial

__all__ = ["DataConfig", "TrainConfig", "SweepConfig", "ResourcesConfig", "RunConfig", "Config",
           "load_config", "check", "to_dict", "flatten", "ConfigError"]


class ConfigError(InputError):
    """A configuration key or value that cannot be used; the message names it."""


@dataclass
class DataConfig:
    store: str = "runs/demo/store"          # store directory (relative to the working directory)
    synth: SynthConfig | None = field(default_factory=SynthConfig)  # build the store if missing
    train_split: str = "train"
    valid_split: str = "valid"
    eval_splits: list[str] = field(default_factory=lambda: ["eval_public", "eval_internal"])
    units_per_block: int | None = None      # oversampling stream: row-group units read and shuffled
                                            # together; null: 4 x the per-worker batch, at least 64
                                            # (data/stream.py default_units_per_block)


@dataclass
class TrainConfig:
    batch_size: int = 32                    # global batch (split over Train workers)
    max_examples: int = 24_000              # cap per trial, in examples (not passes); a trial
                                            # stops earlier once its pick is settled (sweep.patience)
    eval_every_examples: int = 2_000        # validation cadence
    eval_batch_size: int = 128
    keep_checkpoints: int | None = None     # None keeps every evaluation's weights; k keeps the k
                                            # best picks by smoothed d' plus those not yet final
    torch_threads: int | None = None        # CPU threads per Train worker (None: Ray's default)
    report_poll_s: float = 0.25             # how often Train's controller collects reports: a
                                            # worker's next report waits for it (Train's default 2 s
                                            # throttles evaluations closer than that)
    optim: OptimConfig = field(default_factory=OptimConfig)      # lr: null, each trial's from sweep.lrs
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class SweepConfig:
    schemes: list[str] = field(default_factory=lambda: ["moore"])  # balancing recipes (data/balance.py
                                            # RECIPES; NAME@E: epochs of E draws), also as sweep.recipes:
                                            # the grid is recipe x beta x lr x seed, beta = 0 once
    betas: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.5, 1.0])
    beta_step: float | None = None          # refine the beta grid (sweep/refine.py): midpoints where the
                                            # best beta may lie, down to this step (null: the grid as given)
    max_arms: int = 12                      # ... until the grid has this many arms
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3])
    seeds: list[int] = field(default_factory=lambda: [0])  # replicate trials: each seed its own
                                            # initialisation, stream order and augmentation
    smoothing_window: int = 7               # centred moving average (paper 3.2), odd
    patience: int = 5                       # full-window evaluations after the pick without a
                                            # better one before its pick is settled ...
    settle_ratio: float = 2.0               # ... and at least this many times the pick's examples
                                            # seen: patience that scales with the trial's own speed
    confidence_resamples: int = 1000        # bootstrap resamples of the validation clips behind the
                                            # selection's p_best, margin and verdict
    train_to_cap: bool = False              # true: every trial trains to train.max_examples (the
                                            # paper's procedure; the reference the rule is checked
                                            # against); convergence is still judged by the rule
    racing: bool = True                     # stop an arm (or a learning rate within one) once it is
                                            # confidently not the best, even where it can still go
                                            # (sweep/racing.py); off with train_to_cap
    racing_p: float = 0.01                  # ... its chance of being best below this
    max_failures: int = 2                   # per trial: Train worker restarts from checkpoint

    @property
    def rule(self) -> StoppingRule:
        """When a pick is settled (sweep/select.py)."""
        return StoppingRule(self.smoothing_window, self.patience, self.settle_ratio)

    @property
    def arms(self) -> list[Arm]:
        """Every arm swept, in the grid's order: each recipe at each beta, beta = 0 (no balancing)
        once, drawn by the first recipe."""
        return [Arm(s, float(b)) for s in self.schemes for b in self.betas if b > 0 or s == self.schemes[0]]

    @property
    def trials(self) -> list[Trial]:
        """Every trial, in the grid's order: each arm x learning rate x seed."""
        return [Trial(a.scheme, a.beta, lr, seed) for a in self.arms for lr in self.lrs for seed in self.seeds]

    @property
    def several_schemes(self) -> bool:
        """Arms are named with their recipe (sweep/trial.py Arm.label)."""
        return len(self.schemes) > 1

    @property
    def several_seeds(self) -> bool:
        """Trials are named with their seed (sweep/trial.py Trial.name)."""
        return len(self.seeds) > 1


@dataclass
class ResourcesConfig:
    num_workers: int = 1                    # Ray Train workers per trial
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    max_concurrent_trials: int | None = None  # None: derived from the cluster's resources
    driver_resource: str | None = None      # custom resource for trial drivers (cluster.yaml)
    reuse_actors: bool = True               # a trial driver's process runs the next trial (Tune's reuse_actors);
                                            # an eliminated trial then ends at its next evaluation


@dataclass
class RunConfig:
    name: str = "demo"                      # experiment name; stable across --resume
    run_dir: str = "runs/demo"              # results.json, predictions/, report/, mlflow.db
    storage_path: str | None = None         # Tune/Train storage (default: SWEEP_STORAGE if set, else
                                            # <run_dir>/ray); s3://...
    ray_address: str | None = None          # None: ray.init() default (a `ray up` head, or local)
    mlflow_experiment: str = "balance-sweep"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
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
    """`value` as the field declares it (YAML reads `1e-4` as a string; `_` separates digits),
    lists and tuples element-wise; a value of another type is a ConfigError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and (isinstance(hint, types.UnionType) or origin is typing.Union) and type(None) in args:
        return None
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        return _coerce(value, next(a for a in args if a is not type(None)), name)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        items = [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis and len(items) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {value!r}")
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = hint(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not a valid {hint.__name__}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
            raise ConfigError(f"{name}: {value!r} is not a valid {hint.__name__}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: {value!r} is not a finite number")
        return hint(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


# (key, test, what it must be): checked at load, before Ray or MLflow start
_RULES = [
    ("sweep.schemes", lambda v: len(v) > 0 and len(set(v)) == len(v),
     f"a non-empty list of distinct recipes out of {', '.join(RECIPES)} (NAME@E: epochs of E draws)"),
    ("sweep.betas", lambda v: len(v) > 0 and all(b >= 0 for b in v) and len(set(v)) == len(v),
     "a non-empty list of distinct numbers >= 0"),
    ("sweep.lrs", lambda v: len(v) > 0 and all(x > 0 for x in v) and len(set(v)) == len(v),
     "a non-empty list of distinct numbers > 0"),
    ("sweep.seeds", lambda v: len(v) > 0 and all(x >= 0 for x in v) and len(set(v)) == len(v),
     "a non-empty list of distinct integers >= 0"),
    ("sweep.smoothing_window", lambda v: v >= 1 and v % 2 == 1, "a positive odd integer"),
    ("sweep.patience", lambda v: v >= 1, "an integer >= 1"),
    ("sweep.settle_ratio", lambda v: v >= 1, "a number >= 1"),
    ("sweep.confidence_resamples", lambda v: v >= 100, "an integer >= 100"),
    ("sweep.racing_p", lambda v: 0 < v < 0.5, "a probability in (0, 0.5)"),
    ("sweep.beta_step", lambda v: v is None or v > 0, "null or a number > 0"),
    ("sweep.max_arms", lambda v: v >= 2, "an integer >= 2"),
    ("sweep.max_failures", lambda v: v >= 0, "an integer >= 0"),
    ("train.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("train.max_examples", lambda v: v >= 1, "an integer >= 1"),
    ("train.eval_every_examples", lambda v: v >= 1, "an integer >= 1"),
    ("train.eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("train.keep_checkpoints", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("train.torch_threads", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("train.report_poll_s", lambda v: v > 0, "a number of seconds > 0"),
    ("train.optim.lr", lambda v: v is None, "null (the learning rates are sweep.lrs)"),
    ("data.units_per_block", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("model.arch", lambda v: arch_kind(v) is not None,
     "ast, a timm architecture without a weights tag (e.g. resnet10t) or package.module:function"),
    ("model.options", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
     "a mapping of keyword arguments (e.g. {drop_path_rate: 0.1})"),
    ("resources.num_workers", lambda v: v >= 1, "an integer >= 1"),
    ("resources.cpus_per_worker", lambda v: v > 0, "a number > 0"),
    ("resources.max_concurrent_trials", lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("run.name", lambda v: re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", v) is not None,
     "a plain name (letters, digits, '.', '_', '-'; not a path)"),
]


ALIASES = {"sweep.recipes": "sweep.schemes"}  # another name a config file or an override may give a key


def _unalias(loaded: dict, source: str) -> None:
    """Each alias a config file gives renamed to its key (in place); a ConfigError naming both if
    the file gives the key too."""
    for alias, key in ALIASES.items():
        section, name = alias.split(".")
        part = loaded.get(section)
        if isinstance(part, dict) and name in part:
            if key.split(".")[1] in part:
                raise ConfigError(f"{source}: {alias} and {key} are one key ({alias} is another name for it): give one")
            part[key.split(".")[1]] = part.pop(name)


def check(cfg: Config) -> Config:
    """Values that type-check but cannot be used (a negative budget, an even window, a run name
    that is a path): a ConfigError naming the key and the value."""
    for key, ok, what in _RULES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        named = key + "".join(f" ({a})" for a, k in ALIASES.items() if k == key)
        if not ok(value):
            raise ConfigError(f"{named}: must be {what}, got {value!r}")
    for name in cfg.sweep.schemes:
        try:
            recipe(name)
        except ValueError as e:
            raise ConfigError(f"sweep.schemes (sweep.recipes): {e}") from None
    return cfg


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
        raise ConfigError(f"override {assignment!r} is not KEY=VALUE (e.g. train.max_examples=4000)")
    *parents, leaf = ALIASES.get(key.strip(), key.strip()).split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {p} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: {text!r} is not a YAML value") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- `KEY=VALUE` overrides (values parsed as YAML)."""
    values = to_dict(Config())
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror or e}") from None
        if isinstance(loaded, dict):
            _unalias(loaded, str(path))
        _merge(values, loaded, str(path))
        _resolve_paths(values, loaded, Path(path).resolve().parent)
    for assignment in overrides:
        _apply_override(values, assignment)
    if values["run"].get("storage_path") is None and os.environ.get("SWEEP_STORAGE"):
        values["run"]["storage_path"] = os.environ["SWEEP_STORAGE"]  # set by cluster.yaml's setup commands
    return check(from_dict(Config, values))


PATH_KEYS = ("data.store", "run.run_dir", "run.storage_path", "model.weights")  # paths a config file holds


def _resolve_paths(values: dict, loaded: dict, directory: Path) -> None:
    """The relative paths a config file gives (PATH_KEYS) resolved against the file's own
    directory, as a reader of the file would take them; URIs (s3://...) and absolute paths as
    they are. Paths from --set and the defaults stay relative to the working directory."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        given = (loaded.get(section) or {}).get(name) if isinstance(loaded.get(section), dict) else None
        if isinstance(given, str) and "://" not in given and not Path(given).is_absolute():
            values[section][name] = str(directory / given)


def _merge(base: dict, update: dict, source: str, path: str = "") -> None:
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: {path or 'top level'} must be a mapping")
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, source, f"{path}{k}.")
        else:
            base[k] = v
