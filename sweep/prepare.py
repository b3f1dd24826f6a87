"""A sweep's inputs, made ready and checked before Ray or MLflow start: absolute paths (Ray
workers run elsewhere), the store (built when it is synthetic and missing, checked against its
manifest as `python -m data.check` does: sizes, footers, fingerprints, the hashes of shards
changed since verified), the model geometry taken from the store, and the checks that would
otherwise fail inside every trial (a split that cannot be scored, spectrograms smaller than a
patch, blocks too large for memory, a model that cannot be built or weights that do not load, a
starting checkpoint that has seen the validation clips)."""
from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

from data.draws import check_epoch
from data.store import Store, open_store
from data.stream import MAX_BLOCK_BYTES, max_units_per_block
from model.config import AST_KEYS, PATCH, ModelConfig
from sweep.config import Config, ConfigError

__all__ = ["prepare", "check_store", "refuse_audioset_checkpoint"]


def prepare(cfg: Config, build: bool = True) -> Config:
    """`cfg` ready to run: absolute paths, the store (built if synthetic and missing, unless
    `build` is false; then validated and checked, and the model built once with its weights),
    and the model geometry from the store."""
    data = replace(cfg.data, store=str(Path(cfg.data.store).resolve()))
    run = replace(cfg.run, run_dir=str(Path(cfg.run.run_dir).resolve()),
                  storage_path=_absolute(cfg.run.storage_path))
    weights = _absolute(cfg.model.weights)
    cfg = replace(cfg, data=data, run=run, model=replace(cfg.model, weights=weights))
    _warn_unused_ast_keys(cfg.model)
    if not (Path(data.store) / "manifest.json").exists():
        if data.synth is None:
            raise ConfigError(f"data.store {data.store} has no manifest.json and data.synth is null: "
                              "ingest it first (python -m data.ingest) or configure data.synth")
        if not build:  # the geometry the store will have
            s = data.synth
            return replace(cfg, model=replace(cfg.model, n_classes=s.classes, frames=s.frames, mels=s.mels))
        from data.synth import make_synthetic_store
        print(f"building the synthetic store {data.store} (once; cached for later runs)")
        make_synthetic_store(data.store, data.synth)
    store = open_store(data.store)
    for split in [data.train_split, data.valid_split, *data.eval_splits]:
        store.split_info(split)  # names the missing split
    cfg = replace(cfg, model=replace(cfg.model, n_classes=store.n_classes, frames=store.frames, mels=store.mels))
    if build:
        _check_content(store)
        check_store(store, cfg)
        from model.factory import build_model  # torch: only a sweep that runs needs it
        # built once here, its weights loaded: an arch that cannot be built, logits of the wrong shape,
        # weights missing, unreadable or of other shapes are one error naming them, not one per trial
        build_model(cfg.model)
        if weights and not cfg.model.allow_audioset_weights:
            refuse_audioset_checkpoint(weights, store, cfg.model.arch)
    return cfg


def _check_content(store: Store) -> None:
    """The store against its manifest (`Store.validate`, the shards changed since verified
    hashed), with a note for a store of an earlier format or one whose record cannot be written."""
    if note := store.format_note():
        print(f"note: {note}", file=sys.stderr)
    if not store.validate(checksums="changed")["recorded"]:
        print(f"note: {store.root} cannot be written: the shards hashed now are not recorded as verified, so the "
              "next sweep hashes them again", file=sys.stderr)


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; a URI (s3://...) or None as it is."""
    return str(Path(path).resolve()) if path and "://" not in path else path


def _warn_unused_ast_keys(model: ModelConfig) -> None:
    """The AST's geometry set (not the defaults) for another arch: said, as it is not used."""
    if model.arch != "ast":
        ast_keys = [k for k in AST_KEYS if getattr(model, k) != getattr(ModelConfig(), k)]
        if ast_keys:
            _warn(f"model.{', model.'.join(ast_keys)} (the AST's geometry) do not apply to model.arch {model.arch!r}")


def check_store(store: Store, cfg: Config) -> None:
    """What would fail in every trial, as one ConfigError before anything starts: spectrograms
    smaller than one AST patch (arch ast), a data.units_per_block whose blocks would not fit in
    memory, a validation or evaluation split where no class has both positive and negative clips
    (nothing to score), a recipe whose epoch cannot be drawn from the training split. Warned:
    training classes with no clip, evaluation classes with no positive (left out of priors and
    metrics)."""
    units, most = cfg.data.units_per_block, max_units_per_block(store, cfg.data.train_split)
    if units and units > most:
        raise ConfigError(f"data.units_per_block {units}: blocks of at most {most} units ({MAX_BLOCK_BYTES >> 20} "
                          f"MiB of spectrograms) on {store.root}; set it <= {most}, or null for the default")
    if cfg.model.arch == "ast" and min(store.frames, store.mels) < PATCH:
        raise ConfigError(f"data.store {store.root}: spectrograms of {store.frames} frames x {store.mels} mels; "
                          f"the AST needs at least {PATCH} x {PATCH} (one patch): ingest with --frames >= {PATCH}")
    for name in cfg.sweep.schemes:
        try:
            check_epoch(name, store.split_info(cfg.data.train_split)["clips"])
        except ValueError as e:
            raise ConfigError(f"sweep.schemes (sweep.recipes): {e} ({store.root}, split {cfg.data.train_split!r})") from None
    for split in [cfg.data.valid_split, *cfg.data.eval_splits]:
        counts, clips = store.class_counts(split), store.split_info(split)["clips"]
        if not ((counts > 0) & (counts < clips)).any():
            raise ConfigError(f"split {split!r} of {store.root}: {clips} clip(s) and no class with both positive "
                              "and negative clips: nothing to score; it needs more clips (python -m data.split)")
        missing = int((counts == 0).sum())
        if missing and split != cfg.data.valid_split:
            _warn(f"{missing} of {store.n_classes} classes have no positive clip in the evaluation split "
                  f"{split!r}: they are left out of its metrics")
    empty = int((store.class_counts(cfg.data.train_split) == 0).sum())
    if empty:
        _warn(f"{empty} of {store.n_classes} classes have no clip in the training split "
              f"{cfg.data.train_split!r}: they are left out of priors and metrics")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def refuse_audioset_checkpoint(weights: str, store, arch: str = "ast") -> None:
    """Weights trained on AudioSet (model/factory.py `audioset_trained`: a published AST AudioSet
    checkpoint, or for another arch a 527-output classifier), as the start of a sweep on AudioSet's
    classes, have seen the validation clips and were most likely trained balanced: a ConfigError,
    unless the user confirms (model.allow_audioset_weights). Fine-tuning on other classes is the
    usual transfer."""
    from model.factory import audioset_trained  # torch: only a sweep with weights to check needs it
    audioset_mids = sum(bool(re.fullmatch(r"/[mgt]/\w+", m)) for m in store.mids)
    if audioset_mids >= store.n_classes / 2 and audioset_trained(ModelConfig(arch=arch, weights=weights)):
        raise ConfigError(
            f"model.weights {weights} is a model trained on AudioSet (a 527-class classifier), and the store's "
            f"classes are AudioSet's ({audioset_mids} of {store.n_classes} AudioSet MIDs): that model has seen "
            "the validation clips and was most likely trained balanced, which biases the comparison of betas; "
            "start from ImageNet weights, or set model.allow_audioset_weights=true to use it anyway")
