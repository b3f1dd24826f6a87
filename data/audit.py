"""The sampler audit: what a stream exposes and how its batches mix, from the plan alone (no
spectrograms read).

- `sampler_audit`: per recipe and beta, the realised per-class exposure of an epoch beside its
  expectation (data/draws.py), the largest exposure of one clip, the epoch's length and
  inflation (`exposure_audit`), and the mixing of the batches each Train worker gets
  (`mixing_audit`).
- `mixing_audit`: a worker's batches against uniform random permutations of the same rows:
  duplicates per batch, distinct classes per batch, class-mix distance.
"""
from __future__ import annotations

import numpy as np

from data.balance import MultiLabels
from data.draws import EpochDraw, epoch_draw, exposure_stats
from data.store import Store
from data.stream import StreamPlan, block_rows, plan_stream, split_labels

__all__ = ["duplicates_per_batch", "class_mix_distance", "distinct_classes_per_batch", "deal_blocks", "mixing_audit",
           "exposure_audit", "sampler_audit"]

_IDEAL_ORDERS = 5       # random permutations `mixing_audit` averages the ideal over
_STAT_BATCHES = 4096    # batches whose class counts are held at once (bounds the audit's memory)


def duplicates_per_batch(clip_index: np.ndarray, batch_size: int) -> float:
    """Mean over consecutive full batches of (batch size - distinct clips) / batch size."""
    n = len(clip_index) // batch_size * batch_size
    if n == 0:
        return 0.0
    b = np.sort(np.asarray(clip_index[:n]).reshape(-1, batch_size), axis=1)
    return float((b[:, 1:] == b[:, :-1]).sum(axis=1).mean() / batch_size)


def _class_mix(clip_index: np.ndarray, labels: MultiLabels, n_classes: int,
               batch_size: int) -> tuple[float, float]:
    """(mean distinct classes, mean total-variation distance to the sequence's label
    distribution) over consecutive full batches; class counts are held `_STAT_BATCHES`
    batches at a time."""
    n = len(clip_index) // batch_size * batch_size
    if n == 0:
        return 0.0, 0.0
    clip_index = np.asarray(clip_index[:n])
    q = np.bincount(labels.take(clip_index).indices, minlength=n_classes).astype(np.float64)
    q /= max(q.sum(), 1.0)
    distinct = distance = 0.0
    step = _STAT_BATCHES * batch_size
    for a in range(0, n, step):
        sub = labels.take(clip_index[a:a + step])
        m = min(step, n - a) // batch_size
        batch = np.repeat(np.arange(m * batch_size) // batch_size, sub.lengths)
        counts = np.bincount(batch * n_classes + sub.indices, minlength=m * n_classes)
        counts = counts.reshape(m, n_classes).astype(np.float64)
        distinct += float((counts > 0).sum())
        p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        distance += float(0.5 * np.abs(p - q).sum())
    return distinct / (n // batch_size), distance / (n // batch_size)


def class_mix_distance(clip_index: np.ndarray, labels: MultiLabels, n_classes: int,
                       batch_size: int) -> float:
    """Mean over consecutive full batches of the total-variation distance between the batch's
    label distribution and the whole sequence's: how far batches stray from the pass's prior
    (clips stored in rarest-label order make read units homogeneous; mixing must undo it)."""
    return _class_mix(clip_index, labels, n_classes, batch_size)[1]


def distinct_classes_per_batch(clip_index: np.ndarray, labels: MultiLabels, n_classes: int,
                               batch_size: int) -> float:
    """Mean over consecutive full batches of the number of classes with a positive label in
    the batch."""
    return _class_mix(clip_index, labels, n_classes, batch_size)[0]


def deal_blocks(rows_per_block: np.ndarray, workers: int) -> np.ndarray:
    """Consumer of each block, in stream order, when `workers` consumers take the blocks whole
    as `Dataset.streaming_split` deals them: each to the consumer with the fewest rows so far,
    the lowest-numbered on ties (round-robin for equal blocks). int64 [B]."""
    got = [0] * workers
    out = np.empty(len(rows_per_block), np.int64)
    for b, n in enumerate(np.asarray(rows_per_block).tolist()):
        w = min(range(workers), key=got.__getitem__)
        out[b], got[w] = w, got[w] + n
    return out


def _ratio(value: float, ideal: float) -> float:
    return value / ideal if ideal > 0 else (1.0 if value == 0 else float("inf"))


def mixing_audit(plan: StreamPlan, labels: MultiLabels, *, batch_size: int, workers: int = 1,
                 max_examples: int = 2_000_000, seed: int = 0) -> dict:
    """How well the batches a worker trains on mix, from the plan alone (no spectrograms read).

    The first `max_examples` rows of the plan's first pass, block by block, are dealt to
    `workers` consumers (`deal_blocks`); each consumer's rows are cut into batches of
    batch_size // workers (`batch_size` is the global batch, as Train splits it). Reported per
    worker batch, each against its mean over `_IDEAL_ORDERS` uniform random permutations of
    the same rows cut the same way (the ideal), and as a ratio to it: duplicates per batch,
    distinct classes per batch, class-mix distance (`class_mix_distance`)."""
    per = max(1, batch_size // workers)
    in_pass = int((plan.block_seeds[:, 0] == plan.epoch).sum())
    blocks, n = [], 0
    for b in range(in_pass):
        if n >= max_examples:
            break
        blocks.append(block_rows(plan, b)[:max_examples - n])
        n += len(blocks[-1])
    consumer = deal_blocks(np.array([len(r) for r in blocks], np.int64), workers)
    mine = [np.concatenate([r for r, c in zip(blocks, consumer) if c == w] or [np.zeros(0, np.int64)])
            for w in range(workers)]
    order = np.concatenate([m[:len(m) // per * per] for m in mine])  # each run of `per` rows: one worker's batch
    rng = np.random.default_rng(seed)
    stats = [(duplicates_per_batch(o, per), *_class_mix(o, labels, plan.n_classes, per))
             for o in [order] + [rng.permutation(order) for _ in range(_IDEAL_ORDERS)]]
    (dup, distinct, mix), ideal = stats[0], np.mean(stats[1:], axis=0).tolist()
    return {
        "workers": int(workers),
        "worker_batch_size": int(per),
        "audited_examples": int(n),
        "duplicates_per_batch": dup,
        "duplicates_per_batch_ideal": ideal[0],
        "duplicates_ratio": _ratio(dup, ideal[0]),
        "distinct_classes_per_batch": distinct,
        "distinct_classes_per_batch_ideal": ideal[1],
        "distinct_classes_ratio": _ratio(distinct, ideal[1]),
        "class_mix_distance": mix,
        "class_mix_distance_ideal": ideal[2],
        "class_mix_ratio": mix / ideal[2] if ideal[2] > 0 else 1.0,
    }


def exposure_audit(labels: MultiLabels, n_classes: int, draw: EpochDraw, counts: np.ndarray) -> dict:
    """An epoch's realised exposure (`counts`: draws of each clip, int64 [N]) beside the
    expectation of `draw`: per class (`exposure`, `exposure_expected`, class-index order), each
    one's Gini, their largest relative difference over classes with at least 100 expected draws
    (`exposure_deviation`; 0 for repeats, where the two are equal), the largest draws of one clip
    realised and expected (`max_clip_exposure`, `max_clip_exposure_expected`), the distinct clips
    drawn, the epoch's length E and inflation (E / N)."""
    real, expected = exposure_stats(labels, counts, n_classes), exposure_stats(labels, draw.expected(), n_classes)
    e, r = np.array(expected["exposure"]), np.array(real["exposure"])
    enough = e >= 100
    return {
        "epoch_length": int(counts.sum()), "epoch_inflation": float(counts.sum() / len(counts)),
        "exposure": real["exposure"], "exposure_expected": expected["exposure"],
        "exposure_gini": real["gini"], "exposure_gini_expected": expected["gini"],
        "exposure_deviation": float(np.abs(r[enough] / e[enough] - 1).max(initial=0.0)),
        "max_clip_exposure": int(counts.max(initial=0)), "max_clip_exposure_expected": expected["max_clip_exposure"],
        "distinct_clips": int((counts > 0).sum()),
    }


def sampler_audit(store: Store, split: str, beta: float, *, seed: int = 0, batch_size: int = 32,
                  units_per_block: int = 64, workers: int = 1, recipe: str = "moore",
                  max_examples: int = 2_000_000) -> dict:
    """What the first epoch of the recipe `recipe` at `beta` exposes, from the plan alone: the
    recipe, its draw and beta, `exposure_audit` of the epoch, and the mixing of the batches each
    of `workers` Train workers gets from a global `batch_size` (`mixing_audit`). At most
    `max_examples` of the epoch are audited for mixing (a pass at beta = 1 on AudioSet is 437M
    examples)."""
    plan = plan_stream(store, split, beta, seed=seed, units_per_block=units_per_block, recipe=recipe,
                       examples=max_examples)  # planned up to what is audited
    labels, _ = split_labels(store, split)
    draw = epoch_draw(labels, store.n_classes, recipe, beta)
    return {
        "recipe": recipe, "draw": draw.draw, "beta": float(beta),
        **exposure_audit(labels, store.n_classes, draw, plan.index.counts(seed, plan.epoch)),
        "units_per_block": int(plan.units_per_block),
        **mixing_audit(plan, labels, batch_size=batch_size, workers=workers, max_examples=max_examples, seed=seed),
    }
