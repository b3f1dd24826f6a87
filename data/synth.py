"""Synthetic AudioSet-like data in the store format: the embedded demo and the test fixture.

What makes it AudioSet-like:
- training priors are Zipf-like (Gini ~0.8) with ~2 labels per clip, and rare classes
  co-occur with a few head classes (as "Toothbrush" comes with "Speech" or "Music");
- validation follows the training prior with at least `min_valid_per_class` clips per class;
- two evaluation splits with flatter priors than train, differing from each other as the
  paper's public (Gini ~0.4) and internal (Gini ~0.6) sets do;
- each class is a spectro-temporal pattern (a mel band, a pulse rate, a random event span)
  added in the energy domain to a noise floor, so a small transformer learns it on CPU.
Deterministic for a seed.

    python -m data.synth --store runs/synth --clips 3000 --classes 24

The store is written only into a new or empty directory: anything already there (the shards of
a store whose manifest.json was lost, say) is left alone and the call is a StoreError. Prints the
store's splits and clip counts (`--json`: {store, splits: {name: clips}}).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.balance import rarest_label_order
from data.cli import InputError, add_store, parser, positive_int, run
from data.store import Store, check_new_store, create_store, open_store

__all__ = ["SynthConfig", "make_synthetic_store", "sample_labels", "render"]


@dataclass
class SynthConfig:
    clips: int = 3000               # training clips
    classes: int = 24
    frames: int = 128
    mels: int = 64
    seed: int = 0
    train_zipf: float = 1.9         # class weight ~ (rank + 1) ** -zipf
    public_zipf: float = 0.6        # eval_public: flatter (paper's public eval, Gini ~0.4)
    internal_zipf: float = 1.2      # eval_internal: in between (Gini ~0.6)
    head_classes: int = 3           # rare classes co-occur with one of these
    p_head: float = 0.7             # chance a non-head first label brings a head class along
    p_extra: float = 0.8            # chance of one more label drawn from the prior
    valid_fraction: float = 0.15
    eval_fraction: float = 0.2      # each evaluation split, relative to train
    min_train_per_class: int = 4
    min_valid_per_class: int = 5
    min_eval_per_class: int = 5
    label_noise: float = 0.0        # chance a clip's label list loses its last label
    signal: float = 2.5             # a class pattern's mean log-level over the noise floor (each
                                    # class's within +-0.5 of it): lower is a harder task
    level_jitter: float = 0.3       # sd of a clip's event level around its class's (log): larger
                                    # leaves more events under the noise floor, undetectable

    def __post_init__(self):
        for key in ("clips", "classes", "frames", "mels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"synth.{key}: must be an integer >= 1, got {value!r}")
        if not 0 <= self.head_classes <= self.classes:
            raise InputError(f"synth.head_classes: {self.head_classes} is not in [0, classes = {self.classes}]")


def _class_weights(k: int, zipf: float) -> np.ndarray:
    w = (np.arange(k) + 1.0) ** -zipf
    return w / w.sum()


def sample_labels(rng: np.random.Generator, n: int, weights: np.ndarray, cfg: SynthConfig,
                  min_per_class: int = 0) -> list[np.ndarray]:
    """Label-index arrays for `n` clips drawn from class `weights`, plus clips seeded by each
    class still under `min_per_class` (so every class is present)."""
    k = len(weights)
    first = list(rng.choice(k, size=n, p=weights))
    counts = np.bincount(first, minlength=k)
    for c in np.flatnonzero(counts < min_per_class):
        first += [c] * int(min_per_class - counts[c])
    out = []
    for c in first:
        labels = [c]
        if c >= cfg.head_classes and rng.random() < cfg.p_head:
            labels.append(rng.integers(0, cfg.head_classes))
        if rng.random() < cfg.p_extra:
            labels.append(rng.choice(k, p=weights))
        if cfg.label_noise and len(labels) > 1 and rng.random() < cfg.label_noise:
            labels.pop()
        out.append(np.unique(np.asarray(labels, dtype=np.int64)))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _class_patterns(cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Per-class band centre/width (mel bins), pulse period (frames) and phase."""
    rng = np.random.default_rng(10_000 + cfg.classes)  # fixed per class count, not per seed
    k = np.arange(cfg.classes)
    return {
        "centre": 3 + ((k * 0.618034) % 1.0) * (cfg.mels - 6),
        "width": rng.uniform(1.5, 3.5, cfg.classes),
        "period": rng.choice([4.0, 6.0, 9.0, 14.0, 22.0, 1e9], cfg.classes),  # 1e9: steady
        "gain": cfg.signal + rng.uniform(-0.5, 0.5, cfg.classes),
    }


def render(rng: np.random.Generator, labels: list[np.ndarray], cfg: SynthConfig,
           patterns: dict[str, np.ndarray]) -> np.ndarray:
    """Raw log-mel spectrograms for clips with these labels, float16 [n, frames, mels]."""
    n, t, f = len(labels), cfg.frames, cfg.mels
    tilt = -5.0 - 3.0 * np.arange(f) / f                                  # [mels]
    energy = np.exp(tilt + rng.normal(0.0, 0.8, (n, t, f)))               # noise floor
    tt, ff = np.arange(t)[:, None], np.arange(f)[None, :]
    for j, clip in enumerate(labels):
        for c in clip:
            band = np.exp(-0.5 * ((ff - patterns["centre"][c]) / patterns["width"][c]) ** 2)
            pulse = 0.5 * (1 + np.cos(2 * np.pi * tt / patterns["period"][c] + rng.uniform(0, 6.3)))
            onset = rng.integers(0, t // 2)
            span = (tt >= onset) & (tt < onset + rng.integers(t // 3, t + 1))
            level = np.exp(patterns["gain"][c] + rng.normal(0, cfg.level_jitter) + tilt.mean())
            energy[j] += level * band * (0.15 + 0.85 * pulse) * span
    return np.log(energy).astype(np.float16)


def _write_split(store: Store, name: str, labels: list[np.ndarray], cfg: SynthConfig,
                 rng: np.random.Generator, rarest_first: bool, batch: int = 256) -> dict:
    clip_ids = np.array([f"{name}-{i:07d}" for i in range(len(labels))])
    order = rarest_label_order(labels, cfg.classes) if rarest_first else np.arange(len(labels))
    writer = store.writer(name, order="rarest_label" if rarest_first else "given")
    patterns = _class_patterns(cfg)
    for s in tqdm(range(0, len(order), batch), desc=f"synth {name}", unit="batch", leave=False):
        rows = order[s:s + batch]
        mel = render(rng, [labels[i] for i in rows], cfg, patterns)
        writer.write(clip_ids[rows], [labels[i] for i in rows], mel, np.full(len(rows), cfg.frames))
    return writer.close()


def make_synthetic_store(out: str | Path, cfg: SynthConfig = SynthConfig()) -> Store:
    """Write splits train, valid, eval_public, eval_internal to a new store at `out`, which must
    be a new or empty directory (else StoreError naming it: nothing there is written over). The
    store is built in a sibling directory and renamed into place when whole: an interrupted
    build leaves no store at `out`, so the next run builds it again."""
    out = Path(out)
    check_new_store(out)
    building = out.with_name(f"{out.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)  # this process's own, from an earlier attempt
    try:
        _write_store(building, cfg)
        building.replace(out)  # `out` is an empty directory or absent
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return open_store(out)


def _write_store(root: Path, cfg: SynthConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    k = cfg.classes
    classes = [{"index": i, "mid": f"/synth/{i:03d}", "name": f"class_{i:03d}"} for i in range(k)]
    store = create_store(root, classes, {"source": "synthetic", "frames": cfg.frames,
                                         "mels": cfg.mels, "synth": asdict(cfg)})
    train_w = _class_weights(k, cfg.train_zipf)
    n_eval = int(cfg.clips * cfg.eval_fraction)
    splits = {
        "train": sample_labels(rng, cfg.clips, train_w, cfg,
                               cfg.min_train_per_class),
        "valid": sample_labels(rng, int(cfg.clips * cfg.valid_fraction), train_w, cfg,
                               cfg.min_valid_per_class),
        "eval_public": sample_labels(rng, n_eval, _class_weights(k, cfg.public_zipf), cfg,
                                     cfg.min_eval_per_class),
        "eval_internal": sample_labels(rng, n_eval, _class_weights(k, cfg.internal_zipf), cfg,
                                       cfg.min_eval_per_class),
    }
    for name, labels in splits.items():
        _write_split(store, name, labels, cfg, rng, rarest_first=(name == "train"))


def main(argv=None) -> int:
    p = parser(prog="python -m data.synth", description=__doc__)
    add_store(p, "new store directory (new or empty)")
    d = SynthConfig()
    p.add_argument("--clips", type=positive_int, default=d.clips, help="training clips (default %(default)s)")
    p.add_argument("--classes", type=positive_int, default=d.classes, help="classes (default %(default)s)")
    p.add_argument("--frames", type=positive_int, default=d.frames, help="frames per clip (default %(default)s)")
    p.add_argument("--mels", type=positive_int, default=d.mels, help="mel bins (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the store path and clips per split as JSON")
    return run(_main, p, argv)


def _main(a) -> int:
    store = make_synthetic_store(a.store, SynthConfig(clips=a.clips, classes=a.classes,
                                                      frames=a.frames, mels=a.mels, seed=a.seed))
    splits = {s: store.split_info(s)["clips"] for s in store.splits}
    print(json.dumps({"store": str(store.root), "splits": splits}) if a.json else
          f"{store.root}: synthetic store, {store.n_classes} classes; "
          + ", ".join(f"{s} {n:,} clips" for s, n in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
