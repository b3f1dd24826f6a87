"""The oversampling stream: clip j exactly M_j times per pass (eq. 4-5), well mixed, on Ray Data.

How a pass is planned (on the driver, in numpy, from the labels alone):
- M_j comes from data/balance.py for the split's labels, beta and the balancing scheme (its
  `method`: the paper's max over a clip's labels, or a sum of them as PSLA and PaSST weigh).
- A *unit* is (row group g, copy c): the rows of g with M_j >= c. Clip j is in exactly M_j
  units, so any order of all units is an exact pass. The training split is stored in
  ascending rarest-label order, so M_j is non-increasing along the split and a unit is a
  prefix of its row group: reads are contiguous and few are wasted, for every beta.
- The U units of a pass are numbered group by group; pass e puts them in the order of a keyed
  pseudo-random permutation of [0, U) (`unit_order`, keyed by seed and e), cut into *blocks*
  of `units_per_block` consecutive positions, and each block's rows are shuffled together.
  Copies of a clip are in different units, so they land in the same batch about as often as
  in a uniform random permutation of the oversampled multiset (measured by `sampler_audit`).
- A unit's clips are neighbours in rarest-label order and share labels, so a batch mixes as
  well as it holds distinct units: b consecutive rows of a block of u units of s rows hold,
  beside each row, about (s - 1) b / (u s) others of its unit. A Train worker's batch is
  consecutive rows of one block or two (`streaming_split` hands blocks to workers whole), so
  `default_units_per_block` sizes blocks for the per-worker batch, and `sampler_audit`
  measures the batches each worker gets.
- The permutation is computed position by position, so block k of pass e is rebuilt from
  (seed, e, k) and the `SplitIndex` (row groups, M_j, first unit of each group, labels: about
  a dozen bytes a clip) alone. A plan is that index plus the rows of each block (for stream positions);
  the readers get the index once, by reference in the object store, and each reads a span
  of consecutive blocks described by three numbers. No order of the whole pass is ever
  materialised: planning costs one pass over the units up to the budget, in chunks.
- A run is counted in examples, not passes: `examples` concatenates passes epoch, epoch+1, ...
  until that many rows, and `skip` starts the stream at that position (resume; whole passes
  before it are skipped without being planned); the readers emit nothing outside
  [skip, skip + examples).
Ray Data then reads the spans in parallel tasks (`read_blocks`), streaming, in stream order,
with memory bounded by Ray's backpressure, not by the dataset size. A reader reads only the
spectrograms (targets come from the index's labels), each row group a block needs once,
straight from its format-2 page into a reused buffer with its CRC-32 checked
(`RowGroups.spectrograms`, data/pages.py), and copies each row once into the block; Ray copies
the block into its object store, and the Train worker's batches are views of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from data.balance import MultiLabels, class_counts, oversampled_counts, oversampling_factors
from data.shards import RowGroups
from data.store import Store, open_store

__all__ = ["SplitIndex", "StreamPlan", "split_labels", "unit_order", "plan_stream", "block_rows",
           "read_block", "read_blocks", "oversampled_dataset", "stream_execution_options",
           "default_units_per_block", "deal_blocks", "duplicates_per_batch", "class_mix_distance",
           "distinct_classes_per_batch", "mixing_audit", "sampler_audit", "max_units_per_block",
           "MAX_BLOCK_BYTES"]

_PLAN_CHUNK = 1 << 20   # unit positions evaluated at once while planning (bounds driver memory)
_MAX_READ_TASKS = 256   # spans of blocks a dataset is cut into (one Ray task and one input block each)
_MIN_SPAN_BYTES = 64 << 20  # output a span is given at least (when there are blocks enough)
_ROUNDS = 4             # rounds of the unit permutation
_LABELS_KEPT = 2        # splits whose labels `split_labels` keeps (about 60 MB each for AudioSet's 2.06M clips)
_MIN_UNITS_PER_BLOCK = 64  # `default_units_per_block`'s floor
MAX_BLOCK_BYTES = 1 << 30  # spectrogram bytes a block holds at most (`max_units_per_block`): one read
                           # task holds a block's spectrograms, then Ray's object store a copy
_UNITS_PER_WORKER_ROW = 4  # `default_units_per_block`: units in a block per row of the per-worker batch
_IDEAL_ORDERS = 5       # random permutations `mixing_audit` averages the ideal over
_STAT_BATCHES = 4096    # batches whose class counts are held at once (bounds the audit's memory)
_labels_kept: dict[tuple, tuple[MultiLabels, RowGroups]] = {}


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
        compact = MultiLabels(labels.offsets.astype(np.min_scalar_type(int(labels.offsets[-1]))),
                              labels.indices.astype(np.min_scalar_type(int(labels.indices.max(initial=0)))))
        return cls(groups, factors.astype(dtype), unit_start, compact)

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


def unit_order(positions: np.ndarray, units: int, seed: int, pass_: int) -> np.ndarray:
    """The units at `positions` (< `units`) of pass `pass_`'s order: a keyed pseudo-random
    permutation of [0, units), evaluated position by position (int64).

    On b-bit integers (2^b the smallest power of two >= units), `_ROUNDS` rounds of: xor a key,
    multiply by an odd key mod 2^b, xor the value shifted right by about b/2 (each step a
    bijection, so the rounds are one); values that land >= units are sent through the rounds
    again (cycle walking), which keeps the map a bijection of [0, units). Keys come from
    (seed, pass_)."""
    positions = np.asarray(positions, dtype=np.int64)
    bits = max(1, int(units - 1).bit_length())
    dt = np.uint32 if bits <= 32 else np.uint64
    keys = np.random.default_rng([seed, pass_, 0x5EED]).integers(0, 1 << bits, size=(_ROUNDS, 2),
                                                                 dtype=np.uint64).astype(dt)
    keys[:, 1] |= dt(1)
    mask, shift = dt((1 << bits) - 1), dt((bits + 1) // 2)

    def rounds(x):
        for k, a in keys:
            x ^= k
            x *= a
            x &= mask
            x ^= x >> shift
        return x

    x = rounds(positions.astype(dt))
    out = np.flatnonzero(x >= units)
    while len(out):
        x[out] = y = rounds(x[out])
        out = out[y >= units]
    return x.astype(np.int64)


@dataclass(frozen=True)
class StreamPlan:
    """The stream of a run: the split's index and, per block, its rows and stream position.

    Block b of the plan is block `first_block + b` of the run, counted from block 0 of pass
    `epoch` (`blocks_per_pass` blocks a pass). Picklable, no Ray objects; the readers get only
    `index` (by reference) and a few numbers per span of blocks."""

    index: SplitIndex
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
    def factors(self) -> np.ndarray:
        """M_j, int64 [N]."""
        return self.index.factors.astype(np.int64)

    @property
    def blocks_per_pass(self) -> int:
        return -(-self.index.units // self.units_per_block)

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


def _block_units(index: SplitIndex, seed: int, epoch: int, units_per_block: int, q: int) -> np.ndarray:
    """Units of block q of the run (counted from pass `epoch`'s block 0)."""
    per_pass = -(-index.units // units_per_block)
    p, k = divmod(q, per_pass)
    positions = np.arange(k * units_per_block, min((k + 1) * units_per_block, index.units))
    return unit_order(positions, index.units, seed, epoch + p)


def _block_order(index: SplitIndex, seed: int, epoch: int, units_per_block: int, q: int) -> np.ndarray:
    """Global rows emitted by block q of the run, in stream order."""
    per_pass = -(-index.units // units_per_block)
    p, k = divmod(q, per_pass)
    rows = index.unit_rows(_block_units(index, seed, epoch, units_per_block, q))
    rng = np.random.default_rng([seed, epoch + p, k, 7])
    return rows[rng.permutation(len(rows))]


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
                method: str = "moore") -> StreamPlan:
    """Plan passes epoch, epoch+1, ... of `split` (a training split: its own class counts weigh
    it) at `beta` under the balancing scheme `method` (one pass if `examples` is None).

    `skip` starts the stream at that position (rows before it are not emitted). Any M_j is
    exact: a unit holds the rows of its group with M_j >= its copy, whatever their order (the
    rarest-label order only makes a moore unit a prefix of its group). `units_per_block` is
    taken at most `max_units_per_block` (the plan's `units_per_block` says what was used).
    Cost: reading the labels, then the units of the planned passes up to skip + examples.
    """
    units_per_block = min(units_per_block, max_units_per_block(store, split))
    labels, groups = split_labels(store, split)
    counts = class_counts(labels, store.n_classes)
    index = SplitIndex.build(groups, oversampling_factors(labels, beta, counts, method), labels)
    rows, start, first_block = _plan_blocks(index, seed, epoch, examples, skip, units_per_block)
    return StreamPlan(index, rows, start, first_block, seed, epoch, units_per_block, store.n_classes, skip)


def _plan_blocks(index: SplitIndex, seed: int, epoch: int, examples: int | None, skip: int,
                 units_per_block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows and stream positions of the run's blocks that emit rows at positions in
    [skip, skip + examples), and the run number of the first of them. Passes that end before
    `skip` are skipped whole (a pass is sum M_j rows whatever its order); the others are
    evaluated `_PLAN_CHUNK` unit positions at a time, up to the budget."""
    pass_rows, n_units = index.rows_per_pass, index.units
    none = np.zeros(0, np.int64)
    if pass_rows == 0:
        return none, none, 0
    per_pass = -(-n_units // units_per_block)
    stop = None if examples is None else skip + examples
    p = 0 if examples is None else skip // pass_rows
    sizes = index.unit_sizes()
    step = max(1, _PLAN_CHUNK // units_per_block)                     # blocks a chunk
    rows, starts, first = [], [], None
    while True:
        position = p * pass_rows                                      # of the next block
        for k0 in range(0, per_pass, step):
            k1 = min(per_pass, k0 + step)
            units = unit_order(np.arange(k0 * units_per_block, min(k1 * units_per_block, n_units)),
                               n_units, seed, epoch + p)
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


def read_block(index: SplitIndex, spec: _Spec, q: int, start: int) -> tuple[dict | None, int]:
    """Block q of the run, whose first row is at stream position `start`, as rows {clip_index
    (the clip's row in the split), position (in the stream), mel [n, T, F] float16, target
    [n, K] float32 multi-hot} in stream order (rows before `spec.skip` or from `spec.stop` on left
    out; None if none is left), and the position after the block."""
    rows = _block_order(index, spec.seed, spec.epoch, spec.units_per_block, q)
    position = start + np.arange(len(rows), dtype=np.int64)
    end = start + len(rows)
    keep = position >= spec.skip
    if spec.stop is not None:
        keep &= position < spec.stop
    rows, position = rows[keep], position[keep]
    if not len(rows):
        return None, end
    return {"clip_index": rows, "position": position, "mel": index.groups.spectrograms(rows, *spec.shape),
            "target": index.labels.take(rows).multi_hot(spec.n_classes)}, end


def read_blocks(batch: dict, index, spec: _Spec):
    """Ray Data UDF (a generator): spans {first (block of the run), blocks, start (stream
    position)} -> the rows of their blocks, one output batch a block. `index` is the split's
    `SplitIndex` or an ObjectRef to it (fetched once a span, zero-copy from the object store)."""
    if not isinstance(index, SplitIndex):
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
                        method: str = "moore"):
    """A Ray Dataset of one pass (or `examples` rows over consecutive passes) of `split`
    oversampled at `beta` by the scheme `method`. Deterministic for (seed, epoch); rows as in
    `read_block`.

    The split's `SplitIndex` is put in the object store once and the readers get its
    reference; the UDF and each input row are a few numbers at any scale.

    The order is kept by the dataset's own execution options (the process-wide DataContext is
    left alone). Ray Train replaces a dataset's execution options with its `DataConfig`'s:
    give it `stream_execution_options()` for this dataset, or the stream reaches the workers
    in the order its reads finish."""
    import ray

    store = open_store(store_path)
    plan = plan_stream(store, split, beta, seed=seed, epoch=epoch,
                       examples=examples, skip=skip, units_per_block=units_per_block, method=method)
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip, (store.frames, store.mels),
                 None if examples is None else plan.skip + examples)
    row_bytes = 2 * store.frames * store.mels + 4 * store.n_classes + 32  # mel, target, the rest
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
    in_pass = int((plan.block_seeds[:, 0] == 0).sum())
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


def sampler_audit(store: Store, split: str, beta: float, *, seed: int = 0, batch_size: int = 32,
                  units_per_block: int = 64, workers: int = 1, method: str = "moore",
                  max_examples: int = 2_000_000) -> dict:
    """What a pass at `beta` under the scheme `method` exposes, from the plan alone (no
    spectrograms read).

    Returns per-class exposure N'_k, epoch inflation (sum M_j / N), distinct clips per pass,
    max repeat, and the mixing of the batches each of `workers` Train workers gets from a
    global `batch_size` (`mixing_audit`: duplicates, distinct classes and class-mix distance
    per worker batch, against uniform random permutations of the same rows). At most
    `max_examples` of the pass are audited (a pass at beta = 1 on AudioSet is 437M examples).
    """
    plan = plan_stream(store, split, beta, seed=seed, units_per_block=units_per_block, method=method,
                       examples=max_examples)  # planned up to what is audited
    labels, _ = split_labels(store, split)
    factors = plan.factors
    return {
        "scheme": method,
        "beta": float(beta),
        "exposure": oversampled_counts(labels, factors, store.n_classes).tolist(),
        "epoch_inflation": float(factors.sum() / len(factors)),
        "epoch_length": int(factors.sum()),
        "distinct_clips": int((factors > 0).sum()),
        "max_repeat": int(factors.max()),
        "units_per_block": int(plan.units_per_block),
        **mixing_audit(plan, labels, batch_size=batch_size, workers=workers,
                       max_examples=max_examples, seed=seed),
    }
