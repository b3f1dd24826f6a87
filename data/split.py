"""Carve a validation split out of a training split, or define a union of splits.

    python -m data.split --store runs/audioset --from train --to valid --min-per-class 5
    python -m data.split --store runs/audioset --union eval_internal --of eval_public eval_extra

Validation (the paper selects beta on held-out data with at least 5 clips per class): clips are
chosen by iterative multi-label stratification (Sechidis et al., ECML PKDD 2011), and moved:
the validation split is written as new shards, the training split is rewritten without them,
in ascending rarest-label order against its new class counts (see data/store.py), and both are
recorded in one manifest write, so they never overlap. Old training shards are then deleted.

Per class k with N_k clips the validation split wants max(min_per_class, round(fraction N_k))
clips, but never more than N_k - 1: every class keeps at least one training clip (else it has
no prior and cannot be oversampled). A class with N_k <= min_per_class therefore gets N_k - 1
validation clips and 1 training clip (N_k = 1: none); these classes are listed in the output.

A union (the paper's "internal eval" = public eval + another set) is recorded in the manifest
as the concatenation of its parts, without copying data, with its own counts and fingerprint.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from data.balance import MultiLabels, as_multilabels, class_counts, rarest_label_count
from data.store import RowGroups, Store, StoreError, close_shards, fingerprint, open_store

__all__ = ["SplitConfig", "valid_targets", "stratified_split", "carve", "main"]


@dataclass
class SplitConfig:
    source: str = "train"
    target: str = "valid"
    min_per_class: int = 5      # validation clips wanted per class (paper: at least 5)
    fraction: float = 0.1       # of each class's clips, where that is more than the minimum
    seed: int = 0               # breaks ties between equally good clips


def valid_targets(counts: np.ndarray, min_per_class: int, fraction: float) -> np.ndarray:
    """Validation clips wanted per class, int64 [K]: max(min, round(fraction N_k)), at most N_k - 1."""
    counts = np.asarray(counts, dtype=np.int64)
    want = np.maximum(min_per_class, np.rint(fraction * counts).astype(np.int64))
    return np.clip(np.minimum(want, counts - 1), 0, None)


def stratified_split(labels, n_classes: int, min_per_class: int = 5, fraction: float = 0.1,
                     seed: int = 0) -> np.ndarray:
    """Iterative stratification: which clips go to validation, bool [n_clips].

    Repeatedly takes the class with the fewest unassigned clips and assigns all of them at once:
    as many to validation as that class still wants there (the greedy of Sechidis et al. gives
    the same number), preferring clips whose other classes also still want validation clips (by
    the fraction of their classes that do), and never a clip that would take the last training
    clip of any of its classes.
    """
    ml = as_multilabels(labels)
    counts = class_counts(ml, n_classes)
    need = valid_targets(counts, min_per_class, fraction)   # still wanted in validation
    remaining = counts.copy()                               # unassigned clips per class
    train_left = counts.copy()                              # clips per class not in validation
    rng = np.random.default_rng(seed)
    jitter, class_jitter = rng.random(len(ml)), rng.random(n_classes)
    by_class = np.argsort(ml.indices, kind="stable")
    class_start = np.searchsorted(ml.indices[by_class], np.arange(n_classes + 1))
    clip_of = np.repeat(np.arange(len(ml)), ml.lengths)
    assigned = np.zeros(len(ml), dtype=bool)
    valid = np.zeros(len(ml), dtype=bool)
    while (remaining > 0).any():
        open_ = np.flatnonzero(remaining > 0)
        c = open_[np.lexsort((class_jitter[open_], remaining[open_]))[0]]
        clips = clip_of[by_class[class_start[c]:class_start[c + 1]]]
        clips = clips[~assigned[clips]]
        sub = ml.take(clips)
        q = int(np.clip(need[c], 0, len(clips)))
        if q:
            entry_clip = np.repeat(np.arange(len(clips)), sub.lengths)
            wanted = np.bincount(entry_clip, need[sub.indices] > 0, len(clips)) / sub.lengths
            order = np.lexsort((jitter[clips], -wanted))
            picks = _keep_one_for_training(ml.take(clips[order]), train_left)
            chosen = clips[order][picks][:q]
            valid[chosen] = True
            moved = ml.take(chosen).indices
            np.subtract.at(need, moved, 1)
            np.subtract.at(train_left, moved, 1)
        assigned[clips] = True
        np.subtract.at(remaining, sub.indices, 1)
    return valid


def _keep_one_for_training(candidates: MultiLabels, train_left: np.ndarray) -> np.ndarray:
    """bool [n]: the candidates (in preference order) that can move to validation while every
    class keeps a training clip, if all candidates before them moved (conservative)."""
    order = np.argsort(candidates.indices, kind="stable")
    labels = candidates.indices[order]
    group_start = np.searchsorted(labels, labels)                # first entry of the same class
    running = np.empty(len(labels), dtype=np.int64)
    running[order] = np.arange(len(labels)) - group_start + 1    # moves of that class so far
    bad = running > train_left[candidates.indices] - 1
    entry_clip = np.repeat(np.arange(len(candidates)), candidates.lengths)
    return np.bincount(entry_clip, bad.astype(np.float64), len(candidates)) == 0


def _write(store: Store, source: RowGroups, rows: np.ndarray, directory: str, rows_per_shard: int) -> list[dict]:
    """Copy the source rows, in the given order, to new shards `directory`/part-NNNNN.parquet."""
    shards = []
    for i, s in enumerate(tqdm(range(0, len(rows), rows_per_shard), desc=f"write {directory}",
                               unit="shard", leave=False)):
        t = source.read(rows[s:s + rows_per_shard])
        shards.append(store.write_shard(f"{directory}/part-{i:05d}.parquet", t["clip_id"].to_pylist(),
                                        t["labels"].to_pylist(), t["mel"].combine_chunks().to_numpy_ndarray(),
                                        t["n_frames"].to_numpy()))
    return shards


def carve(store: Store, cfg: SplitConfig) -> dict:
    """Move a stratified validation split out of `cfg.source` (see the module docstring).

    Returns {clips per split, fingerprints, short_classes: the classes under the minimum}.
    """
    if cfg.target in store.splits:
        raise StoreError(f"{store.root}: split {cfg.target!r} exists already")
    info = store.split_info(cfg.source)
    unions = [s for s in store.splits if cfg.source in store.split_info(s).get("union_of", [])]
    if "union_of" in info or unions:
        raise StoreError(f"{store.root}: split {cfg.source!r} is a union or part of one ({unions}): "
                         "carve from a split that holds data and define unions afterwards")
    labels, ids = store.labels(cfg.source), store.clip_ids(cfg.source)
    valid = stratified_split(labels, store.n_classes, cfg.min_per_class, cfg.fraction, cfg.seed)
    v_rows, t_rows = np.flatnonzero(valid), np.flatnonzero(~valid)
    if info["order"] == "rarest_label":
        t_labels = labels.take(t_rows)
        r = rarest_label_count(t_labels, class_counts(t_labels, store.n_classes))
        t_rows = t_rows[np.argsort(r, kind="stable")]
    rows_per_shard = max([s["rows"] for s in info["shards"]] or [1])
    source = RowGroups.of(store.shard_paths(cfg.source))
    written = {}
    for name, rows, order in [(cfg.target, v_rows, "given"), (cfg.source, t_rows, info["order"])]:
        directory = f"{name}-{fingerprint(ids[rows])[7:15]}"
        written[name] = (_write(store, source, rows, directory, rows_per_shard), ids[rows],
                         labels.take(rows), order)
    entries = store.add_splits(written)
    close_shards()
    new = {s["file"] for shards, *_ in written.values() for s in shards}
    old = [store.root / s["file"] for s in info["shards"] if s["file"] not in new]
    for path in old:
        path.unlink(missing_ok=True)
    for directory in {path.parent for path in old}:
        if not any(directory.iterdir()):
            directory.rmdir()
    counts, v_counts = class_counts(labels, store.n_classes), store.class_counts(cfg.target)
    short = [{"class": int(k), "name": store.classes[k], "clips": int(counts[k]), "valid": int(v_counts[k])}
             for k in np.flatnonzero(v_counts < cfg.min_per_class)]
    return {"clips": {n: e["clips"] for n, e in entries.items()},
            "fingerprint": {n: e["fingerprint"] for n, e in entries.items()},
            "valid_fraction": round(len(v_rows) / max(len(ids), 1), 4), "short_classes": short}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SplitConfig()
    p.add_argument("--store", required=True, metavar="DIR", help="store directory")
    p.add_argument("--from", dest="source", default=d.source, metavar="SPLIT",
                   help="split to carve from (default %(default)s)")
    p.add_argument("--to", dest="target", metavar="SPLIT", help="new validation split, e.g. valid")
    p.add_argument("--min-per-class", type=int, default=d.min_per_class, metavar="N",
                   help="validation clips wanted per class (default %(default)s)")
    p.add_argument("--fraction", type=float, default=d.fraction, metavar="F",
                   help="fraction of each class's clips, if more than the minimum (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N",
                   help="tie-breaking seed (default %(default)s)")
    p.add_argument("--union", metavar="NAME", help="define split NAME as the union of --of splits")
    p.add_argument("--of", nargs="+", metavar="SPLIT", help="the union's parts, in row order")
    a = p.parse_args(argv)
    if bool(a.union) == bool(a.target) or bool(a.union) != bool(a.of):
        p.error("give either --to NAME (with --from) or --union NAME --of A B ...")
    if not 0 <= a.fraction < 1:
        p.error(f"--fraction must be in [0, 1), got {a.fraction}")
    store = open_store(a.store)
    if a.union:
        out = {a.union: store.add_union(a.union, a.of)}
    else:
        out = carve(store, SplitConfig(a.source, a.target, a.min_per_class, a.fraction, a.seed))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
