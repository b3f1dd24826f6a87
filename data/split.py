"""Carve a validation split out of a training split, or define a union of splits.

    python -m data.split --store runs/audioset --from train --to valid --min-per-class 5
    python -m data.split --store runs/audioset --from train --to valid --method stratified --fraction 0.1
    python -m data.split --store runs/audioset --union eval_internal --of eval_public eval_extra

Validation (paper 2.2.2: "a similar procedure to the evaluation set: a minimum of 5 examples of
each class"), by default `--method per-class`, the way AudioSet's evaluation set was built:
classes are taken rarest first (by training clip count); for each, clips carrying it are drawn
at random (seeded) until it has at least `--min-per-class` validation clips, counting clips
already drawn for other classes. A drawn clip moves with all its labels. A clip is never drawn
if it would take the last training clip of any of its classes (else that class has no prior and
cannot be oversampled), so a class with N_k <= min_per_class gets at most N_k - 1 validation
clips (N_k = 1: none); these classes are listed in the output. The result is a small set (on
AudioSet a few thousand clips) far more balanced than the training split, not a fraction of it.

`--method stratified --fraction F` instead takes max(min_per_class, round(F N_k)) clips of each
class by iterative multi-label stratification (Sechidis et al., ECML PKDD 2011): a sample of the
training prior (on AudioSet, F = 0.1: about 206,400 clips, imbalance ratio 14,366, Gini 0.832).

Either way the clips are moved: the validation split is written as new shards, the training
split is rewritten without them, in ascending rarest-label order against its new class counts
(see data/store.py; a stable sort of the remaining rows by their new rarest-label counts, on
AudioSet nearly the old order with the validation rows left out), and both are recorded in one
manifest write, so they never overlap. Old training shards are then deleted. The rows are
copied in Arrow, never row by row in Python: a task reads the rows of a few consecutive new
shards with one `read_row_groups` call per source shard and writes each with
`Store.write_table`; a few tasks run at once (two threads a core: the CPU work releases the
GIL, and a busy file system makes each shard's create and rename wait); bench/split_audioset.py
measures it on the 2,063,949 AudioSet training clips. The command prints both splits' clips, imbalance
ratio and Gini (`--json`: the result as JSON) and warns on stderr when validation takes more
than half of some class's clips.

A union (the paper's "internal eval" = public eval + another set) is recorded in the manifest
as the concatenation of its parts, without copying data, with its own counts and fingerprint.
"""
from __future__ import annotations

import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from data.balance import MultiLabels, as_multilabels, class_counts, rarest_label_order
from data.cli import InputError, add_list, add_store, parser, positive_int, run, split_name
from data.stats import format_per_class, imbalance_row, per_class_rows
from data.manifest import StoreError, fingerprint
from data.shards import RowGroups, close_shards
from data.store import Store, open_store

__all__ = ["SplitConfig", "METHODS", "per_class_split", "valid_targets", "stratified_split",
           "check_config", "select_valid", "carve", "main"]

METHODS = ("per-class", "stratified")
STRATIFIED_FRACTION = 0.1   # --method stratified without --fraction
_DELETE_THREADS = 8         # old shards unlinked at once (waits on the file system, not the CPU)
_TASK_BYTES = 64 << 20      # rows one copy task holds (a few tasks run at once) ...
_MAX_SHARDS_PER_TASK = 16   # ... in at most this many shards (labels-only stores: 16 a task)
_MAX_COPY_THREADS = 8
_COPY_MEMORY = 512 << 20    # rows held by the copy tasks running at once


@dataclass
class SplitConfig:
    source: str = "train"
    target: str = "valid"
    min_per_class: int = 5          # validation clips wanted per class (paper: at least 5)
    method: str = "per-class"       # or "stratified"
    fraction: float | None = None   # stratified only: of each class's clips, where above the minimum
    seed: int = 0                   # the random draws (per-class) or tie-breaks (stratified)


def per_class_split(labels, n_classes: int, min_per_class: int = 5, seed: int = 0) -> np.ndarray:
    """The paper's validation split (AudioSet eval-set procedure): which clips go to validation,
    bool [n_clips].

    Classes rarest first (ties by index); each draws its clips in a seeded random order until it
    has `min_per_class` validation clips (clips drawn for earlier classes count), skipping clips
    that would take the last training clip of any of their classes.
    """
    ml = as_multilabels(labels)
    n = len(ml)
    counts = class_counts(ml, n_classes)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = ml.take(perm)                                  # clips in random order
    small = np.int16 if n_classes < 2**15 else np.int64       # int16 sorts by radix, fast
    by_class = np.argsort(shuffled.indices.astype(small), kind="stable")
    clips_by_class = np.repeat(perm, shuffled.lengths)[by_class]  # per class, random order
    class_start = np.searchsorted(shuffled.indices[by_class], np.arange(n_classes + 1))
    lengths = ml.lengths
    valid = np.zeros(n, dtype=bool)
    n_valid = np.zeros(n_classes, dtype=np.int64)             # validation clips per class so far
    train_left = counts.copy()                                # training clips per class
    for c in np.argsort(counts, kind="stable"):
        if counts[c] == 0:
            continue
        candidates = clips_by_class[class_start[c]:class_start[c + 1]]
        pos, size = 0, 2 * min_per_class + 8
        while n_valid[c] < min_per_class and pos < len(candidates):
            chunk = candidates[pos:pos + size]
            pos, size = pos + size, 2 * size
            chunk = chunk[~valid[chunk]]
            if not len(chunk):
                continue
            # pre-filter: clips none of whose classes is down to its last training clip
            starts = np.zeros(len(chunk) + 1, dtype=np.int64)
            np.cumsum(lengths[chunk], out=starts[1:])
            entries = np.repeat(ml.offsets[chunk] - starts[:-1], lengths[chunk]) + np.arange(starts[-1])
            movable = np.minimum.reduceat(train_left[ml.indices[entries]], starts[:-1]) >= 2
            for j in chunk[movable]:                          # rechecked: each draw moves counts
                k = ml[j]
                if (train_left[k] >= 2).all():
                    valid[j] = True
                    train_left[k] -= 1
                    n_valid[k] += 1
                    if n_valid[c] >= min_per_class:
                        break
    return valid


def valid_targets(counts: np.ndarray, min_per_class: int, fraction: float) -> np.ndarray:
    """Stratified: validation clips wanted per class, int64 [K]: max(min, round(fraction N_k)),
    at most N_k - 1."""
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


def check_config(cfg: SplitConfig) -> None:
    """Raise InputError for a method/fraction combination that makes no sense, or a new split's
    name that is not a plain name."""
    split_name(cfg.target, "--to")
    if cfg.method not in METHODS:
        raise InputError(f"unknown split method {cfg.method!r}; expected one of {', '.join(METHODS)}")
    if cfg.method == "per-class" and cfg.fraction is not None:
        raise InputError("--fraction applies to --method stratified only "
                         "(per-class takes --min-per-class clips of each class)")
    if cfg.fraction is not None and not 0 <= cfg.fraction < 1:
        raise InputError(f"--fraction must be in [0, 1), got {cfg.fraction}")


def select_valid(labels, n_classes: int, cfg: SplitConfig) -> np.ndarray:
    """The clips `cfg` puts in validation, bool [n_clips] (per-class or stratified)."""
    check_config(cfg)
    if cfg.method == "per-class":
        return per_class_split(labels, n_classes, cfg.min_per_class, cfg.seed)
    fraction = STRATIFIED_FRACTION if cfg.fraction is None else cfg.fraction
    return stratified_split(labels, n_classes, cfg.min_per_class, fraction, cfg.seed)


def _write(store: Store, source: RowGroups, rows: np.ndarray, directory: str, rows_per_shard: int,
           threads: int | None = None, per_task: int = 1) -> list[dict]:
    """Copy the source rows, in the given order, to new shards `directory`/part-NNNNN.parquet;
    returns their manifest entries in order. A task copies `per_task` consecutive shards: reads
    their rows with one `RowGroups.read` (one `read_row_groups` call per source shard touched:
    small shards are best read several at once) and writes each with `Store.write_table`.
    `threads` tasks run at once (default `_copy_threads`), at most twice that many started
    ahead (memory: a few tasks' rows). On an error nothing more is started and the error is
    raised once the running tasks are done."""
    starts = range(0, len(rows), rows_per_shard)
    tasks = range(0, len(starts), max(1, per_task))
    threads = threads or _copy_threads(len(tasks))

    def copy(first: int) -> list[dict]:
        shards = range(first, min(first + max(1, per_task), len(starts)))
        lo = starts[first]
        table = source.read(rows[lo:lo + len(shards) * rows_per_shard], use_threads=threads < 2)
        return [store.write_table(f"{directory}/part-{i:05d}.parquet",
                                  table.slice(starts[i] - lo, rows_per_shard)) for i in shards]

    shards: list[dict] = []
    progress = tqdm(total=len(starts), desc=f"write {directory}", unit="shard", leave=False)

    def done(entries: list[dict]) -> None:
        shards.extend(entries)
        progress.update(len(entries))

    if threads < 2:
        for first in tasks:
            done(copy(first))
        progress.close()
        return shards
    pool = ThreadPoolExecutor(max_workers=threads)
    pending: deque = deque()
    try:
        for first in tasks:
            pending.append(pool.submit(copy, first))
            if len(pending) >= 2 * threads:
                done(pending.popleft().result())
        while pending:
            done(pending.popleft().result())
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        progress.close()
    return shards


def _copy_threads(tasks: int, task_bytes: int = 0) -> int:
    """Copy tasks run at once: two a core (a task waits on the file system too), at most 8,
    and few enough that their rows (twice `task_bytes` each: as read, as taken) fit
    `_COPY_MEMORY` (shards of real spectrograms, 128 MiB each: 2 at once)."""
    fit = _COPY_MEMORY // max(2 * task_bytes, 1)
    return int(max(1, min(tasks, 2 * (os.cpu_count() or 1), _MAX_COPY_THREADS, fit)))


def _shards_per_task(shards: list[dict]) -> int:
    """Shards a copy task handles: as many as fit `_TASK_BYTES` (by the largest source shard),
    1 to `_MAX_SHARDS_PER_TASK`."""
    return int(np.clip(_TASK_BYTES // max(_largest(shards), 1), 1, _MAX_SHARDS_PER_TASK))


def _largest(shards: list[dict]) -> int:
    return max([s.get("bytes", 0) for s in shards] or [0])


def _delete(paths: list) -> None:
    """Unlink files (missing ones are fine), several at a time: an unlink mostly waits on the
    file system."""
    if len(paths) < 2:
        for path in paths:
            path.unlink(missing_ok=True)
        return
    with ThreadPoolExecutor(max_workers=min(len(paths), _DELETE_THREADS)) as pool:
        list(pool.map(lambda path: path.unlink(missing_ok=True), paths))


def carve(store: Store, cfg: SplitConfig) -> dict:
    """Move a validation split out of `cfg.source` (see the module docstring).

    Returns {clips, fingerprint, imbalance_ratio, gini: per split; valid_fraction, method;
    short_classes: classes under the minimum; over_half: classes validation takes more than half
    of, worst first (each {class, name, clips: before the split, valid})}.
    """
    check_config(cfg)
    store.check_writable()
    if cfg.target in store.splits:
        raise StoreError(f"{store.root}: split {cfg.target!r} exists already")
    info = store.split_info(cfg.source)
    unions = [s for s in store.splits if cfg.source in store.split_info(s).get("union_of", [])]
    if "union_of" in info or unions:
        raise StoreError(f"{store.root}: split {cfg.source!r} is a union or part of one ({unions}): "
                         "carve from a split that holds data and define unions afterwards")
    ids = store.clip_ids(cfg.source)  # first: one pass over the shards reads the labels too
    labels = store.labels(cfg.source)
    valid = select_valid(labels, store.n_classes, cfg)
    v_rows, t_rows = np.flatnonzero(valid), np.flatnonzero(~valid)
    if info["order"] == "rarest_label":
        t_rows = t_rows[rarest_label_order(labels.take(t_rows), store.n_classes)]
    rows_per_shard = max([s["rows"] for s in info["shards"]] or [1])
    source = store.row_groups(cfg.source)
    written, fingerprints = {}, {}
    for name, rows, order in [(cfg.target, v_rows, "given"), (cfg.source, t_rows, info["order"])]:
        fingerprints[name] = fingerprint(ids[rows])
        directory = f"{name}-{fingerprints[name][7:15]}"
        per_task = _shards_per_task(info["shards"])
        threads = _copy_threads(-(-len(rows) // (rows_per_shard * per_task)), per_task * _largest(info["shards"]))
        written[name] = (_write(store, source, rows, directory, rows_per_shard, threads, per_task),
                         ids[rows], labels.take(rows), order)
    entries = store.add_splits(written, fingerprints)
    close_shards()
    new = {s["file"] for shards, *_ in written.values() for s in shards}
    old = [store.root / s["file"] for s in info["shards"] if s["file"] not in new]
    _delete(old)
    for directory in {path.parent for path in old}:
        if not any(directory.iterdir()):
            directory.rmdir()
    counts, v_counts = class_counts(labels, store.n_classes), store.class_counts(cfg.target)
    rows = {n: imbalance_row(np.asarray(e["class_counts"]), e["clips"]) for n, e in entries.items()}
    over = np.flatnonzero(2 * v_counts > counts)
    over = over[np.argsort(-v_counts[over] / counts[over], kind="stable")]

    def listed(ks):
        return [{"class": int(k), "name": store.classes[k], "clips": int(counts[k]),
                 "valid": int(v_counts[k])} for k in ks]
    return {"clips": {n: e["clips"] for n, e in entries.items()},
            "fingerprint": {n: e["fingerprint"] for n, e in entries.items()},
            "imbalance_ratio": {n: r["imbalance_ratio"] for n, r in rows.items()},
            "gini": {n: r["gini"] for n, r in rows.items()},
            "valid_fraction": round(len(v_rows) / max(len(ids), 1), 6), "method": cfg.method,
            "short_classes": listed(np.flatnonzero(v_counts < cfg.min_per_class)),
            "over_half": listed(over)}


def over_half_warning(out: dict, target: str) -> str | None:
    """One line: how many classes validation takes more than half the clips of, and the worst."""
    over = out["over_half"]
    if not over:
        return None
    w = over[0]
    return (f"warning: {target} takes more than half the clips of {len(over)} class(es); "
            f"worst: {w['name']!r} (class {w['class']}), {w['valid']} of {w['clips']}")


def format_carve(out: dict, source: str, target: str) -> str:
    """The two splits' Table 1 rows (clips, imbalance ratio, Gini) as plain text."""
    lines = [f"{'split':<12} {'clips':>10} {'imbalance ratio':>16} {'Gini':>6}"]
    for name in (target, source):
        lines.append(f"{name:<12} {out['clips'][name]:>10,} {out['imbalance_ratio'][name]:>16,.1f} "
                     f"{out['gini'][name]:>6.3f}")
    lines.append(f"{target}: method {out['method']}, {out['valid_fraction']:.2%} of the clips")
    short = out["short_classes"]
    if short:
        shown = ", ".join(f"{c['name']!r} ({c['valid']} of {c['clips']})" for c in short[:10])
        lines.append(f"{len(short)} class(es) below the minimum (each keeps a training clip): "
                     f"{shown}{' ...' if len(short) > 10 else ''}")
    return "\n".join(lines)


def _main(a) -> int:
    if bool(a.union) == bool(a.target) or bool(a.union) != bool(a.of):
        raise InputError("give either --to NAME (with --from) or --union NAME --of A B ...")
    split_name(a.union or a.target, "--union" if a.union else "--to")
    store = open_store(a.store)
    if a.union:
        entry = store.add_union(a.union, a.of)
        print(json.dumps({a.union: entry}, indent=1) if a.json else
              f"{a.union}: union of {' + '.join(a.of)}, {entry['clips']:,} clips, {entry['fingerprint']}")
        return 0
    cfg = SplitConfig(a.source, a.target, a.min_per_class, a.method, a.fraction, a.seed)
    out = carve(store, cfg)
    if a.per_class:
        store = open_store(a.store)  # the manifest as the carve left it
        out["per_class"] = {s: per_class_rows(store.labels(s), store.mids, store.classes) for s in (cfg.target, cfg.source)}
    text = format_carve(out, cfg.source, cfg.target)
    if a.per_class:
        text += "".join(f"\n{s}:\n{format_per_class(rows)}" for s, rows in out["per_class"].items())
    print(json.dumps(out, indent=1) if a.json else text)
    warning = over_half_warning(out, cfg.target)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def main(argv=None) -> int:
    p = parser("python -m data.split", __doc__)
    d = SplitConfig()
    add_store(p, "store directory")
    p.add_argument("--from", dest="source", default=d.source, metavar="SPLIT",
                   help="split to carve from (default %(default)s)")
    p.add_argument("--to", dest="target", metavar="SPLIT", help="new validation split, e.g. valid")
    p.add_argument("--min-per-class", type=positive_int, default=d.min_per_class, metavar="N",
                   help="validation clips wanted per class (default %(default)s)")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="per-class: the paper's, rarest class first, random draws up to the minimum; "
                        "stratified: a fraction of each class (default %(default)s)")
    p.add_argument("--fraction", type=float, metavar="F",
                   help=f"stratified only: fraction of each class's clips, where above the minimum "
                        f"(default {STRATIFIED_FRACTION})")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N",
                   help="seed of the random draws (default %(default)s)")
    p.add_argument("--union", metavar="NAME", help="define split NAME as the union of --of splits")
    add_list(p, "--of", metavar="SPLIT", help="the union's parts, in row order (--of a b, or --of a --of b)")
    p.add_argument("--per-class", action="store_true", help="also the clips and prior of every class in both splits")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return run(_main, p, argv)


if __name__ == "__main__":
    sys.exit(main())
