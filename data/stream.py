"""The balancing stream: a recipe's epochs (data/balance.py RECIPES, data/draws.py), well mixed, on Ray Data.

Every recipe's pass (epoch) is a multiset of the split's clips, clip j c_j times: M_j for a
repeats recipe (the paper's; the same every pass), drawn from (seed, pass) for the others
(replacement, subset, round robin: `EpochDraw.counts`). How its order is planned (on the
driver, in numpy, from the labels alone):

Repeats (`SplitIndex`):
- A *unit* is (row group g, copy c): the rows of g with M_j >= c. Clip j is in exactly M_j
  units, so any order of all units is an exact pass. The training split is stored in
  ascending rarest-label order, so M_j is non-increasing along the split and a unit is a
  prefix of its row group: reads are contiguous and few are wasted, for every beta.
- The U units of a pass are numbered group by group; pass e puts them in the order of a keyed
  pseudo-random permutation of [0, U) (data/permute.py, keyed by seed and e), cut into
  *blocks* of `units_per_block` consecutive positions, and each block's rows are shuffled
  together. Copies of a clip are in different units, so they land in the same batch about as
  often as in a uniform random permutation of the oversampled multiset (data/audit.py).
- A unit's clips are neighbours in rarest-label order and share labels, so a batch mixes as
  well as it holds distinct units: b consecutive rows of a block of u units of s rows hold,
  beside each row, about (s - 1) b / (u s) others of its unit. A Train worker's batch is
  consecutive rows of one block or two (`streaming_split` hands blocks to workers whole), so
  `default_units_per_block` sizes blocks for the per-worker batch, and `sampler_audit`
  measures the batches each worker gets.
- Planning costs one pass over the units up to the budget, in chunks.

Drawn epochs (`DrawIndex`):
- Epoch e's E draws, sorted by row, are put in the order of a keyed permutation of [0, E)
  (keyed by seed and e) and cut into blocks of `units_per_block` x (rows of a row group)
  positions: each block is a uniform sample of its epoch's draws, so batches mix as a random
  order does. A block reads each row group it needs once; drawn clips are scattered over the
  split, so a block reads up to a row group's rows for each row it emits.
- Blocks are all of one size but the last of an epoch, and E is the same every epoch: a block's
  stream position is arithmetic, and planning costs nothing per epoch. A reader draws the
  epoch (`EpochDraw.counts`: up to a few seconds for AudioSet's 2.06M clips) once per process,
  and keeps the last `_EPOCHS_KEPT`.

Both:
- Block k of pass e is rebuilt from (seed, e, k) and the index alone (row groups, labels, and
  M_j and the first unit of each group, or how an epoch is drawn: a dozen or two bytes a clip).
  A plan is that index plus the rows of each block (for stream positions); the readers get
  the index once, by reference in the object store, and each reads a span of consecutive
  blocks described by three numbers. No order of a whole pass is ever materialised.
- A run is counted in examples, not passes: `examples` concatenates passes epoch, epoch+1, ...
  until that many rows, and `skip` starts the stream at that position (resume; whole passes
  before it are skipped without being planned); the readers emit nothing outside
  [skip, skip + examples).
Ray Data then reads the spans in parallel tasks (`read_blocks`), streaming, in stream order,
with memory bounded by Ray's backpressure, not by the dataset size. A reader reads only the
spectrograms (targets come from the index's labels), each row group a block needs once,
straight from its format-2 page into a reused buffer with its CRC-32 checked
(`RowGroups.spectrograms`, data/pages.py), and copies each row once into the block; Ray copies
the block into its object store, and the consumer's batches are views of it. Train workers
take the stream without spectrograms (`spectrograms=False`: rows of a few hundred bytes naming
their block) and read them themselves (data/feed.py), the same reads in the same order: the
spectrograms then skip Ray's object store, which carried them at a fifth of what the reads
deliver (bench/stream.py).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import numpy as np

from data.balance import MultiLabels
from data.draws import EpochDraw, epoch_draw
from data.permute import keyed_permutation
from data.shards import RowGroups
from data.store import Store, open_store

__all__ = ["SplitIndex", "DrawIndex", "StreamPlan", "split_labels", "recipe_index", "stream_index", "plan_stream", "block_rows",
           "read_block", "read_blocks", "oversampled_dataset", "stream_execution_options",
           "default_units_per_block", "max_units_per_block", "MAX_BLOCK_BYTES"]

_PLAN_CHUNK = 1 << 20   # unit positions evaluated at once while planning (bounds driver memory)
_MAX_READ_TASKS = 256   # spans of blocks a dataset is cut into (one Ray task and one input block each)
_MIN_SPAN_BYTES = 64 << 20  # output a span is given at least (when there are blocks enough)
_LABELS_KEPT = 2        # splits whose labels `split_labels` keeps (about 60 MB each for AudioSet's 2.06M clips)
_EPOCHS_KEPT = 2        # drawn epochs a process keeps (`DrawIndex.drawn`: 4 bytes a draw)
_MIN_UNITS_PER_BLOCK = 64  # `default_units_per_block`'s floor
MAX_BLOCK_BYTES = 1 << 30  # spectrogram bytes a block holds at most (`max_units_per_block`): one read
                           # task holds a block's spectrograms, then Ray's object store a copy
_UNITS_PER_WORKER_ROW = 4  # `default_units_per_block`: units in a block per row of the per-worker batch
_labels_kept: dict[tuple, tuple[MultiLabels, RowGroups]] = {}
_epochs_kept: dict[tuple, np.ndarray] = {}


def split_labels(store: Store, split: str) -> tuple[MultiLabels, RowGroups]:
    """The split's labels (`Store.labels`: the labels column alone, one read a shard) and row
    groups (`Store.row_groups`, from the same pass). The last `_LABELS_KEPT` splits read are
    kept in the process, keyed by each shard's path, inode, size and modification time, so a
    dataset rebuilt from the store's path (Train's worker-group restarts) does not read again."""
    try:
        key = tuple((p, st.st_ino, st.st_size, st.st_mtime_ns)
                    for p in store.shard_paths(split) for st in [os.stat(p)])
    except OSError:  # a missing shard: the store says which
        return store.labels(split), store.row_groups(split)
    got = _labels_kept.pop(key, None) or (store.labels(split), store.row_groups(split))
    _labels_kept[key] = got  # the most recent last
    while len(_labels_kept) > _LABELS_KEPT:
        del _labels_kept[next(iter(_labels_kept))]
    return got


@dataclass(frozen=True)
class SplitIndex:
    """What every reader of a split's stream needs, the same for every pass, seed and budget:
    where the rows live, M_j, the first unit of each row group (group g has
    max_{j in g} M_j units, numbered group by group) and the clips' labels (so a reader reads
    only spectrograms). About 23 MB for AudioSet's 2.06M clips."""

    groups: RowGroups          # the split's row groups (G of them), in split order
    factors: np.ndarray        # [N] M_j, in the smallest unsigned dtype that holds them
    unit_start: np.ndarray     # int64 [G + 1] first unit of each group; unit_start[-1] = U
    labels: MultiLabels        # per-clip label indices, in split order (compact dtypes)

    @classmethod
    def build(cls, groups: RowGroups, factors: np.ndarray, labels: MultiLabels) -> "SplitIndex":
        factors = np.asarray(factors)
        n = np.diff(groups.start)
        g_max = np.zeros(len(n), np.int64)
        if len(factors):
            g_max[n > 0] = np.maximum.reduceat(factors, groups.start[:-1][n > 0])
        unit_start = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(g_max, out=unit_start[1:])
        dtype = np.min_scalar_type(int(factors.max()) if len(factors) else 0)
        return cls(groups, factors.astype(dtype), unit_start, _compact(labels))

    @property
    def units(self) -> int:
        """U: units in a pass."""
        return int(self.unit_start[-1])

    @property
    def rows_per_pass(self) -> int:
        """sum_j M_j."""
        return int(self.factors.sum(dtype=np.int64))

    def unit_rows(self, units: np.ndarray) -> np.ndarray:
        """Global rows of the given units, unit after unit: unit (g, c) is the rows of group g
        with M_j >= c (int64)."""
        units = np.asarray(units, dtype=np.int64)
        g = np.searchsorted(self.unit_start, units, side="right") - 1
        copy = units - self.unit_start[g] + 1
        first, n = self.groups.start[g], self.groups.start[g + 1] - self.groups.start[g]
        rows = np.arange(int(n.sum()), dtype=np.int64) + np.repeat(first - (np.cumsum(n) - n), n)
        return rows[self.factors[rows] >= np.repeat(copy, n)]

    def unit_sizes(self) -> np.ndarray:
        """Rows in each unit, [U] (the smallest unsigned dtype that holds a row group's rows).

        With a group's factors sorted ascending, a_1 <= ... <= a_n (a_0 = 0), its copies
        c in (a_{t-1}, a_t] hold the n - t + 1 rows with M_j >= c: one run per row."""
        n = np.diff(self.groups.start)
        if not len(self.factors):
            return np.zeros(0, np.uint8)
        g_of_row = np.repeat(np.arange(len(n), dtype=np.int64), n)
        scale = int(self.factors.max()) + 1
        a = np.sort(g_of_row * scale + self.factors) - g_of_row * scale  # ascending within groups
        first = self.groups.start[:-1][n > 0]
        prev = np.empty_like(a)
        prev[1:] = a[:-1]
        prev[first] = 0
        t = np.arange(len(a)) - np.repeat(self.groups.start[:-1], n)  # 0-based rank in the group
        size = (n[g_of_row] - t).astype(np.min_scalar_type(int(n.max())))
        return np.repeat(size, a - prev)

    def counts(self, seed: int, pass_: int) -> np.ndarray:
        """Draws of each clip in a pass: M_j, int64 [N] (the same every pass)."""
        return self.factors.astype(np.int64)

    def blocks_per_pass(self, units_per_block: int) -> int:
        return -(-self.units // units_per_block)

    def block(self, seed: int, pass_: int, k: int, units_per_block: int) -> np.ndarray:
        """Global rows of block k of pass `pass_`, in stream order: its units' rows shuffled together."""
        positions = np.arange(k * units_per_block, min((k + 1) * units_per_block, self.units))
        rows = self.unit_rows(keyed_permutation(positions, self.units, (seed, pass_)))
        return rows[np.random.default_rng([seed, pass_, k, 7]).permutation(len(rows))]

    def plan_blocks(self, seed: int, epoch: int, examples: int | None, skip: int,
                    units_per_block: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows and stream positions of the run's blocks that emit rows at positions in
        [skip, skip + examples) (one pass if `examples` is None), and the run number of the first
        of them. Passes that end before `skip` are skipped whole (a pass is sum M_j rows whatever
        its order); the others are evaluated `_PLAN_CHUNK` unit positions at a time, up to the
        budget."""
        pass_rows, n_units = self.rows_per_pass, self.units
        none = np.zeros(0, np.int64)
        if pass_rows == 0:
            return none, none, 0
        per_pass = self.blocks_per_pass(units_per_block)
        stop = None if examples is None else skip + examples
        p = 0 if examples is None else skip // pass_rows
        sizes = self.unit_sizes()
        step = max(1, _PLAN_CHUNK // units_per_block)                     # blocks a chunk
        rows, starts, first = [], [], None
        while True:
            position = p * pass_rows                                      # of the next block
            for k0 in range(0, per_pass, step):
                k1 = min(per_pass, k0 + step)
                units = keyed_permutation(np.arange(k0 * units_per_block, min(k1 * units_per_block, n_units)),
                                          n_units, (seed, epoch + p))
                r = np.add.reduceat(sizes[units], np.arange(0, len(units), units_per_block), dtype=np.int64)
                s = position + np.cumsum(r) - r
                position = int(s[-1] + r[-1])
                keep = s + r > skip
                if stop is not None:
                    keep &= s < stop
                if keep.any():
                    if first is None:
                        first = p * per_pass + k0 + int(np.argmax(keep))
                    rows.append(r[keep])
                    starts.append(s[keep])
                if stop is not None and position >= stop:
                    break
            if stop is None or position >= stop:
                break
            p += 1
        if first is None:
            return none, none, 0
        return np.concatenate(rows), np.concatenate(starts), first


@dataclass(frozen=True)
class DrawIndex:
    """What every reader of a drawn stream (replacement, subset, round robin) needs, the same for
    every pass, seed and budget: where the rows live, the clips' labels (so a reader reads only
    spectrograms), how an epoch is drawn, and the most rows a row group holds (a block holds
    `units_per_block` times that many draws)."""

    groups: RowGroups
    draw: EpochDraw
    labels: MultiLabels        # per-clip label indices, in split order (compact dtypes)
    group_rows: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this index in `_epochs_kept`

    @classmethod
    def build(cls, groups: RowGroups, draw: EpochDraw, labels: MultiLabels) -> "DrawIndex":
        return cls(groups, draw, _compact(labels), int(np.diff(groups.start).max(initial=1)))

    @property
    def rows_per_pass(self) -> int:
        """E."""
        return int(self.draw.length)

    def counts(self, seed: int, pass_: int) -> np.ndarray:
        """Draws of each clip in pass `pass_`, int64 [N] (`EpochDraw.counts`)."""
        return self.draw.counts(seed, pass_)

    def drawn(self, seed: int, pass_: int) -> np.ndarray:
        """The rows pass `pass_` draws, ascending, each as often as drawn ([E]); the last
        `_EPOCHS_KEPT` are kept in the process."""
        key = (self.token, seed, pass_)
        rows = _epochs_kept.pop(key, None)
        if rows is None:
            counts = self.counts(seed, pass_)
            rows = np.repeat(np.arange(len(counts), dtype=np.min_scalar_type(max(len(counts) - 1, 0))), counts)
        _epochs_kept[key] = rows  # the most recent last
        while len(_epochs_kept) > _EPOCHS_KEPT:
            del _epochs_kept[next(iter(_epochs_kept))]
        return rows

    def block_size(self, units_per_block: int) -> int:
        return units_per_block * self.group_rows

    def blocks_per_pass(self, units_per_block: int) -> int:
        return -(-self.rows_per_pass // self.block_size(units_per_block))

    def block(self, seed: int, pass_: int, k: int, units_per_block: int) -> np.ndarray:
        """Global rows of block k of pass `pass_`, in stream order: the draws at its positions of
        the pass's keyed permutation of [0, E)."""
        size, n = self.block_size(units_per_block), self.rows_per_pass
        slots = keyed_permutation(np.arange(k * size, min((k + 1) * size, n)), n, (seed, pass_))
        return self.drawn(seed, pass_)[slots].astype(np.int64)

    def plan_blocks(self, seed: int, epoch: int, examples: int | None, skip: int,
                    units_per_block: int) -> tuple[np.ndarray, np.ndarray, int]:
        """As `SplitIndex.plan_blocks`, by arithmetic: every block but an epoch's last holds
        `block_size` rows and every epoch E."""
        n, size = self.rows_per_pass, self.block_size(units_per_block)
        per_pass = self.blocks_per_pass(units_per_block)
        stop = n if examples is None else skip + examples
        if n == 0 or stop <= skip:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        first, last = (self._block_of(x, size, per_pass) for x in (skip, stop - 1))
        p, k = np.divmod(np.arange(first, last + 1, dtype=np.int64), per_pass)
        return np.minimum(size, n - k * size), p * n + k * size, first

    def _block_of(self, position: int, size: int, per_pass: int) -> int:
        """The run number of the block holding stream `position`."""
        p, at = divmod(position, self.rows_per_pass)
        return p * per_pass + at // size


def _compact(labels: MultiLabels) -> MultiLabels:
    """`labels` in the smallest dtypes that hold them."""
    return MultiLabels(labels.offsets.astype(np.min_scalar_type(int(labels.offsets[-1]))),
                       labels.indices.astype(np.min_scalar_type(int(labels.indices.max(initial=0)))))


def recipe_index(labels: MultiLabels, groups: RowGroups, n_classes: int, recipe: str,
                 beta: float) -> SplitIndex | DrawIndex:
    """The stream index of a training split (`labels` in split order, its row `groups`; its own
    class counts weigh it) under the recipe `recipe` at `beta`: a `SplitIndex` for a repeats
    recipe, else a `DrawIndex`."""
    draw = epoch_draw(labels, n_classes, recipe, beta)
    if draw.draw == "repeats":
        return SplitIndex.build(groups, draw.weights.astype(np.int64), labels)
    return DrawIndex.build(groups, draw, labels)


def stream_index(store: Store, split: str, recipe: str, beta: float) -> SplitIndex | DrawIndex:
    """`recipe_index` of the store's `split`."""
    return recipe_index(*split_labels(store, split), store.n_classes, recipe, beta)


@dataclass(frozen=True)
class StreamPlan:
    """The stream of a run: the split's index and, per block, its rows and stream position.

    Block b of the plan is block `first_block + b` of the run, counted from block 0 of pass
    `epoch` (`blocks_per_pass` blocks a pass). Picklable, no Ray objects; the readers get only
    `index` (by reference) and a few numbers per span of blocks."""

    index: SplitIndex | DrawIndex
    block_rows: np.ndarray     # int64 [B] rows each block emits
    block_start: np.ndarray    # int64 [B] stream position of each block's first row
    first_block: int
    seed: int
    epoch: int
    units_per_block: int
    n_classes: int
    skip: int = 0              # rows at stream positions < skip are not emitted

    @property
    def groups(self) -> RowGroups:
        return self.index.groups

    @property
    def blocks_per_pass(self) -> int:
        return self.index.blocks_per_pass(self.units_per_block)

    @property
    def examples(self) -> int:
        """Rows the plan emits (before any `limit`)."""
        if not len(self.block_rows):
            return 0
        return int(self.block_rows.sum() - max(0, self.skip - self.block_start[0]))

    @property
    def block_seeds(self) -> np.ndarray:
        """int64 [B, 2] (pass, position in the pass) of each block: what seeds its order."""
        q = self.first_block + np.arange(len(self.block_rows))
        return np.stack([self.epoch + q // self.blocks_per_pass, q % self.blocks_per_pass], axis=1)


def default_units_per_block(per_worker_batch: int) -> int:
    """Units a block for Train workers taking batches of `per_worker_batch` rows:
    4 x per_worker_batch, at least 64.

    A worker's batch of b rows is consecutive rows of one block or two, so beside each row it
    holds about (s - 1) b / (u s) others of the row's unit (u units of s rows a block; the same
    rarest label): under 1/4 here. On AudioSet's 2.06M training clips (8 workers x 128,
    4-row groups, 512 units = 2,048 rows a block) worker batches hold 0.95x the distinct
    classes of a random order's at 1.03x its class-mix distance, beta 0 and 1
    (bench/stream_audioset.py). A block is read and shuffled by one task: its memory is u x s
    rows (512 MiB here at [1024, 128] float16; `plan_stream` takes at most
    `max_units_per_block`)."""
    return max(_MIN_UNITS_PER_BLOCK, _UNITS_PER_WORKER_ROW * int(per_worker_batch))


def max_units_per_block(store: Store, split: str) -> int:
    """The most units a block of `split` holds: MAX_BLOCK_BYTES of spectrograms, a unit being
    at most a row group's rows (at least `_MIN_UNITS_PER_BLOCK`). 1,024 at [1024, 128] in
    4-row groups: blocks of up to 1 GiB however large the pass."""
    rows = int(np.diff(split_labels(store, split)[1].start).max(initial=1))
    return max(_MIN_UNITS_PER_BLOCK, MAX_BLOCK_BYTES // (rows * 2 * store.frames * store.mels))


def plan_stream(store: Store, split: str, beta: float, *, seed: int, epoch: int = 0,
                examples: int | None = None, skip: int = 0, units_per_block: int = 64,
                recipe: str = "moore") -> StreamPlan:
    """Plan passes epoch, epoch+1, ... of `split` (a training split: its own class counts weigh
    it) under the recipe `recipe` at `beta` (one pass if `examples` is None).

    `skip` starts the stream at that position (rows before it are not emitted). Any M_j is
    exact: a unit holds the rows of its group with M_j >= its copy, whatever their order (the
    rarest-label order only makes a moore unit a prefix of its group). `units_per_block` is
    taken at most `max_units_per_block` (the plan's `units_per_block` says what was used).
    Cost: reading the labels, then for repeats the units of the planned passes up to
    skip + examples (for a drawn recipe, nothing per pass).
    """
    units_per_block = min(units_per_block, max_units_per_block(store, split))
    index = stream_index(store, split, recipe, beta)
    rows, start, first_block = index.plan_blocks(seed, epoch, examples, skip, units_per_block)
    return StreamPlan(index, rows, start, first_block, seed, epoch, units_per_block, store.n_classes, skip)


def _block_order(index: SplitIndex | DrawIndex, seed: int, epoch: int, units_per_block: int, q: int) -> np.ndarray:
    """Global rows emitted by block q of the run (counted from pass `epoch`'s block 0), in stream order."""
    p, k = divmod(q, index.blocks_per_pass(units_per_block))
    return index.block(seed, epoch + p, k, units_per_block)


def block_rows(plan: StreamPlan, b: int) -> np.ndarray:
    """Global rows emitted by block b of the plan, in stream order (int64 [plan.block_rows[b]])."""
    return _block_order(plan.index, plan.seed, plan.epoch, plan.units_per_block, plan.first_block + b)


@dataclass(frozen=True)
class _Spec:
    """What a reader needs besides the index: a few numbers."""

    seed: int
    epoch: int
    units_per_block: int
    n_classes: int
    skip: int
    shape: tuple[int, int]     # [frames, mels] of a spectrogram
    stop: int | None = None    # rows at stream positions >= stop are not emitted (None: all)
    spectrograms: bool = True  # read them (else a row names its block instead: data/feed.py reads them)


def read_block(index: SplitIndex | DrawIndex, spec: _Spec, q: int, start: int) -> tuple[dict | None, int]:
    """Block q of the run, whose first row is at stream position `start`, as rows {clip_index
    (the clip's row in the split), position (in the stream), target [n, K] float32 multi-hot,
    and mel [n, T, F] float16 (or, with `spec.spectrograms` off, block: q, int64 [n])} in stream
    order (rows before `spec.skip` or from `spec.stop` on left out; None if none is left), and
    the position after the block."""
    rows = _block_order(index, spec.seed, spec.epoch, spec.units_per_block, q)
    position = start + np.arange(len(rows), dtype=np.int64)
    end = start + len(rows)
    keep = position >= spec.skip
    if spec.stop is not None:
        keep &= position < spec.stop
    rows, position = rows[keep], position[keep]
    if not len(rows):
        return None, end
    out = {"clip_index": rows, "position": position, "target": index.labels.take(rows).multi_hot(spec.n_classes)}
    if spec.spectrograms:
        out["mel"] = index.groups.spectrograms(rows, *spec.shape)
    else:
        out["block"] = np.full(len(rows), q, np.int64)
    return out, end


def read_blocks(batch: dict, index, spec: _Spec):
    """Ray Data UDF (a generator): spans {first (block of the run), blocks, start (stream
    position)} -> the rows of their blocks, one output batch a block. `index` is the split's
    `SplitIndex` or `DrawIndex`, or an ObjectRef to it (fetched once a span, zero-copy from the
    object store)."""
    if not isinstance(index, (SplitIndex, DrawIndex)):
        import ray
        index = ray.get(index)
    for first, n, start in zip(batch["first"], batch["blocks"], batch["start"]):
        start = int(start)
        for q in range(int(first), int(first) + int(n)):
            out, start = read_block(index, spec, q, start)
            if out is not None:
                yield out


def _spans(plan: StreamPlan, row_bytes: int = 0, max_spans: int = _MAX_READ_TASKS,
           min_span_bytes: int = _MIN_SPAN_BYTES) -> list[dict]:
    """The plan's blocks cut into runs of consecutive blocks, one Ray task each:
    [{first (block of the run), blocks, start (stream position)}]. A span is about
    `min_span_bytes` of output or more (rows of `row_bytes`), so that a task's overhead stays
    small next to its reads, and there are at most about `max_spans`; the first spans are 1,
    2, 4, ... blocks, so the first rows come after one block's reads (a task's output reaches
    the consumer when the task ends)."""
    n = len(plan.block_rows)
    if not n:
        return []
    block_bytes = max(1.0, float(plan.block_rows.mean()) * row_bytes)
    per = max(1, -(-n // max_spans), int(min_span_bytes // block_bytes))
    spans, b, size = [], 0, 1
    while b < n:
        size = min(size, per, n - b)
        spans.append({"first": plan.first_block + b, "blocks": size, "start": int(plan.block_start[b])})
        b += size
        size *= 2
    return spans


def oversampled_dataset(store_path, split: str, beta: float, *, seed: int, epoch: int = 0,
                        examples: int | None = None, skip: int = 0, units_per_block: int = 64,
                        recipe: str = "moore", spectrograms: bool = True):
    """A Ray Dataset of one pass (or `examples` rows over consecutive passes) of `split` balanced
    by the recipe `recipe` at `beta`. Deterministic for (seed, epoch); rows as in `read_block`.
    With `spectrograms` off its rows are a few hundred bytes (no mel: each names its block), and
    the consumer reads the spectrograms itself (`data.feed.spectrogram_batches`, as Train
    workers do): the bytes then never pass through Ray's object store.

    The split's index (`stream_index`) is put in the object store once and the readers get its
    reference; the UDF and each input row are a few numbers at any scale.

    The order is kept by the dataset's own execution options (the process-wide DataContext is
    left alone). Ray Train replaces a dataset's execution options with its `DataConfig`'s:
    give it `stream_execution_options()` for this dataset, or the stream reaches the workers
    in the order its reads finish."""
    import ray

    store = open_store(store_path)
    plan = plan_stream(store, split, beta, seed=seed, epoch=epoch,
                       examples=examples, skip=skip, units_per_block=units_per_block, recipe=recipe)
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip, (store.frames, store.mels),
                 None if examples is None else plan.skip + examples, spectrograms)
    row_bytes = (2 * store.frames * store.mels if spectrograms else 8) + 4 * store.n_classes + 24  # mel or block, the rest
    spans = _spans(plan, row_bytes)
    # from_items builds its blocks here; from_numpy would run a 1-CPU task, which never
    # starts when no node has a whole CPU free (Train workers hold the rest; the reads take 0.5)
    ds = ray.data.from_items(spans or [{"first": 0, "blocks": 0, "start": 0}],
                             override_num_blocks=max(1, len(spans)))
    # the dataset's own DataContext (a copy of the current one, taken by from_items and shared
    # by the datasets derived from it), never the process-wide one
    ds.context.execution_options.preserve_order = True  # the planned order is the order delivered
    ds.context.enable_progress_bars = False
    # the readers stop at the budget themselves: no `limit` (whose last slice is one more task)
    return ds.map_batches(read_blocks, batch_size=1, batch_format="numpy", num_cpus=0.5,
                          fn_kwargs={"index": ray.put(plan.index), "spec": spec})


def stream_execution_options():
    """Ray Data execution options that keep the stream's order, for Ray Train, which replaces a
    dataset's own with its `DataConfig`'s: `ray.train.DataConfig(datasets_to_split=["train"],
    execution_options={"train": stream_execution_options()})`. Train's defaults
    (`DataConfig.default_ingest_options()`, from the current DataContext) with `preserve_order`."""
    from ray.train import DataConfig
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options
