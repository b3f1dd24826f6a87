"""The oversampling stream: clip j exactly M_j times per pass (eq. 4-5), well mixed, on Ray Data.

How a pass is planned (all on the driver, in numpy, from the labels alone):
- M_j comes from data/balance.py for the split's labels, beta and the training priors.
- A *unit* is (row group g, copy c): the rows of g with M_j >= c. Clip j is in exactly M_j
  units, so any order of all units is an exact pass. The training split is stored in
  ascending rarest-label order, so M_j is non-increasing along the split and a unit is a
  prefix of its row group: reads are contiguous and few are wasted, for every beta.
- Units are put in a random order (seeded by seed and pass), cut into *blocks* of
  `units_per_block`, and each block's rows are shuffled together. Copies of a clip are in
  different units, so they land in the same batch about as often as in a uniform random
  permutation of the oversampled multiset (measured by `sampler_audit`).
- A run is counted in examples, not passes: `examples` concatenates passes epoch, epoch+1, ...
  until that many rows, and `skip` starts the stream at that position (resume).
Ray Data then reads each block's row groups in parallel tasks (`read_block`), streaming,
with memory bounded by Ray's backpressure, not by the dataset size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.balance import MultiLabels, oversampled_counts, oversampling_factors
from data.store import RowGroups, Store, multi_hot, open_store

__all__ = ["StreamPlan", "plan_stream", "block_rows", "read_block", "oversampled_dataset",
           "duplicates_per_batch", "class_mix_distance", "sampler_audit"]


@dataclass(frozen=True)
class StreamPlan:
    """Everything a reader needs to produce the stream; picklable, no Ray objects."""

    groups: RowGroups          # the split's row groups (G of them), in split order
    factors: np.ndarray        # int64 [N] M_j
    blocks: np.ndarray         # int64 [B, units_per_block, 2] (group, copy), -1 = empty slot
    block_rows: np.ndarray     # int64 [B] rows each block emits
    block_seeds: np.ndarray    # int64 [B, 2] (pass, position): the block's shuffle seed
    block_start: np.ndarray    # int64 [B] stream position of each block's first row
    seed: int
    n_classes: int
    skip: int = 0              # rows at stream positions < skip are not emitted

    @property
    def examples(self) -> int:
        """Rows the plan emits (before any `limit`)."""
        if not len(self.block_rows):
            return 0
        return int(self.block_rows.sum() - max(0, self.skip - self.block_start[0]))


def _unit_rows(factors: np.ndarray, group_start: np.ndarray, g: int, c: int) -> np.ndarray:
    """Global rows of unit (g, c): the rows of group g repeated at least c times."""
    a, b = group_start[g], group_start[g + 1]
    return a + np.flatnonzero(factors[a:b] >= c)


def _pass_units(factors: np.ndarray, group_start: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """All (group, copy) units of one pass in random order, and each unit's row count."""
    g_max = np.maximum.reduceat(factors, group_start[:-1])           # copies per group [G]
    groups = np.repeat(np.arange(len(g_max)), g_max)
    copies = np.arange(len(groups)) - np.repeat(np.cumsum(g_max) - g_max, g_max) + 1
    # rows per unit: #{j in g: M_j >= c}, from each group's factors sorted descending
    sizes = np.empty(len(groups), dtype=np.int64)
    for g in range(len(g_max)):
        m = -np.sort(-factors[group_start[g]:group_start[g + 1]])
        lo, hi = np.searchsorted(groups, [g, g + 1])
        sizes[lo:hi] = np.searchsorted(-m, -copies[lo:hi], side="right")
    order = rng.permutation(len(groups))
    return np.stack([groups[order], copies[order]], axis=1), sizes[order]


def plan_stream(store: Store, split: str, beta: float, *, seed: int, epoch: int = 0,
                examples: int | None = None, skip: int = 0, units_per_block: int = 64,
                priors: np.ndarray | None = None) -> StreamPlan:
    """Plan passes epoch, epoch+1, ... of `split` at `beta` (one pass if `examples` is None).

    `priors` default to the split's own (eq. 1); pass the training priors when streaming
    another split. `skip` starts the stream at that position (rows before it are not emitted).
    """
    labels = store.labels(split)
    factors = oversampling_factors(labels, beta, priors, clip_ids=None)
    groups = RowGroups.of(store.shard_paths(split))
    group_start = groups.start
    blocks, rows, seeds, total, e = [], [], [], 0, epoch
    while True:
        units, sizes = _pass_units(factors, group_start, np.random.default_rng([seed, e]))
        pad = -len(units) % units_per_block
        units = np.concatenate([units, np.full((pad, 2), -1)]).reshape(-1, units_per_block, 2)
        sizes = np.concatenate([sizes, np.zeros(pad, np.int64)]).reshape(-1, units_per_block).sum(1)
        blocks.append(units)
        rows.append(sizes)
        seeds.append(np.stack([np.full(len(sizes), e), np.arange(len(sizes))], axis=1))
        total += int(sizes.sum())
        e += 1
        if examples is None or total >= skip + examples:
            break
    blocks, rows, seeds = np.concatenate(blocks), np.concatenate(rows), np.concatenate(seeds)
    start = np.cumsum(rows) - rows
    keep = start + rows > skip                          # drop blocks fully consumed
    if examples is not None:                            # and blocks past the budget
        keep &= start < skip + examples
    return StreamPlan(groups, factors, blocks[keep],
                      rows[keep], seeds[keep], start[keep], seed, store.n_classes, skip)


def block_rows(plan: StreamPlan, b: int) -> np.ndarray:
    """Global rows emitted by block b, in stream order (int64 [plan.block_rows[b]])."""
    units = plan.blocks[b]
    rows = np.concatenate([_unit_rows(plan.factors, plan.groups.start, g, c)
                           for g, c in units if g >= 0] or [np.zeros(0, np.int64)])
    rng = np.random.default_rng([plan.seed, *plan.block_seeds[b].tolist(), 7])
    return rows[rng.permutation(len(rows))]


def read_block(batch: dict, plan: StreamPlan) -> dict:
    """Ray Data UDF: block ids [b] -> rows {clip_id, clip_index, position (in the stream),
    mel [n, T, F] float16, target [n, K] float32 multi-hot}, in stream order."""
    parts = [block_rows(plan, int(b)) for b in batch["id"]]
    position = np.concatenate([plan.block_start[int(b)] + np.arange(len(p))
                               for b, p in zip(batch["id"], parts)])
    rows = np.concatenate(parts)[position >= plan.skip]
    position = position[position >= plan.skip]
    table = plan.groups.read(rows, ["clip_id", "labels", "mel"])
    return {"clip_id": table["clip_id"].to_numpy(zero_copy_only=False), "clip_index": rows,
            "position": position, "mel": table["mel"].combine_chunks().to_numpy_ndarray(),
            "target": multi_hot(table["labels"].combine_chunks(), plan.n_classes)}


def oversampled_dataset(store_path, split: str, beta: float, *, seed: int, epoch: int = 0,
                        examples: int | None = None, skip: int = 0, units_per_block: int = 64,
                        priors: np.ndarray | None = None):
    """A Ray Dataset of one pass (or `examples` rows over consecutive passes) of `split`
    oversampled at `beta`. Deterministic for (seed, epoch); rows as in `read_block`."""
    import ray
    from ray.data import DataContext

    plan = plan_stream(open_store(store_path), split, beta, seed=seed, epoch=epoch,
                       examples=examples, skip=skip, units_per_block=units_per_block, priors=priors)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the planned order is the order delivered
    ctx.enable_progress_bars = False
    block_ids = np.flatnonzero(plan.block_rows > 0)
    # from_items builds its one block here; from_numpy would run a 1-CPU task, which never
    # starts when no node has a whole CPU free (Train workers hold the rest; the reads take 0.5)
    ds = ray.data.from_items([{"id": int(b)} for b in block_ids], override_num_blocks=1)
    ds = ds.map_batches(read_block, batch_size=1, fn_kwargs={"plan": plan},
                        batch_format="numpy", num_cpus=0.5)
    if examples is not None:
        ds = ds.limit(examples)
    return ds


def duplicates_per_batch(clip_index: np.ndarray, batch_size: int) -> float:
    """Mean over consecutive full batches of (batch size - distinct clips) / batch size."""
    n = len(clip_index) // batch_size * batch_size
    if n == 0:
        return 0.0
    b = np.sort(np.asarray(clip_index[:n]).reshape(-1, batch_size), axis=1)
    return float((b[:, 1:] == b[:, :-1]).sum(axis=1).mean() / batch_size)


def class_mix_distance(clip_index: np.ndarray, labels: MultiLabels, n_classes: int,
                       batch_size: int) -> float:
    """Mean over consecutive full batches of the total-variation distance between the batch's
    label distribution and the whole sequence's: how far batches stray from the pass's prior
    (clips stored in rarest-label order make read units homogeneous; mixing must undo it)."""
    n = len(clip_index) // batch_size * batch_size
    if n == 0:
        return 0.0
    sub = labels.take(np.asarray(clip_index[:n]))
    batch = np.repeat(np.arange(n) // batch_size, sub.lengths)
    counts = np.bincount(batch * n_classes + sub.indices, minlength=n // batch_size * n_classes)
    counts = counts.reshape(-1, n_classes).astype(np.float64)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    q = counts.sum(axis=0) / counts.sum()
    return float(0.5 * np.abs(p - q).sum(axis=1).mean())


def sampler_audit(store: Store, split: str, beta: float, *, seed: int = 0, batch_size: int = 32,
                  units_per_block: int = 64, priors: np.ndarray | None = None,
                  max_examples: int = 2_000_000) -> dict:
    """What a pass at `beta` exposes, from the plan alone (no spectrograms read).

    Returns per-class exposure N'_k, epoch inflation (sum M_j / N), distinct clips per pass,
    max repeat, and two mixing statistics of the planned order, each against its mean over 5
    uniform random permutations of the same multiset (the ideal): duplicates per batch, and
    the class-mix distance (`class_mix_distance`). At most `max_examples` of the pass are
    audited (a pass at beta = 1 on AudioSet is 437M examples).
    """
    plan = plan_stream(store, split, beta, seed=seed, units_per_block=units_per_block, priors=priors)
    blocks = np.searchsorted(np.cumsum(plan.block_rows), max_examples) + 1
    order = np.concatenate([block_rows(plan, b) for b in range(min(blocks, len(plan.blocks)))])[:max_examples]
    labels: MultiLabels = store.labels(split)
    rng = np.random.default_rng(seed)
    ideal_orders = [rng.permutation(order) for _ in range(5)]
    dup = duplicates_per_batch(order, batch_size)
    ideal = float(np.mean([duplicates_per_batch(o, batch_size) for o in ideal_orders]))
    mix = class_mix_distance(order, labels, store.n_classes, batch_size)
    mix_ideal = float(np.mean([class_mix_distance(o, labels, store.n_classes, batch_size) for o in ideal_orders]))
    return {
        "beta": float(beta),
        "exposure": oversampled_counts(labels, plan.factors, store.n_classes).tolist(),
        "epoch_inflation": float(plan.factors.sum() / len(plan.factors)),
        "epoch_length": int(plan.factors.sum()),
        "audited_examples": int(len(order)),
        "distinct_clips": int((plan.factors > 0).sum()),
        "max_repeat": int(plan.factors.max()),
        "duplicates_per_batch": dup,
        "duplicates_per_batch_ideal": ideal,
        "duplicates_ratio": dup / ideal if ideal > 0 else (1.0 if dup == 0 else float("inf")),
        "class_mix_distance": mix,
        "class_mix_distance_ideal": mix_ideal,
        "class_mix_ratio": mix / mix_ideal if mix_ideal > 0 else 1.0,
    }
