"""Shard files: Parquet files of the store's schema (data/manifest.py), written and read.

A shard is written to a temporary name and renamed (a reader never sees a half-written file),
in row groups of `ROW_GROUP_ROWS` rows so a reader can fetch row ranges, through a 1 MiB
buffer into a file that computes its sha256 from the bytes as they are written. Every page
carries a CRC-32 (`write_page_checksum`), and every reader opens shards with
`page_checksum_verification`: a damaged page is an error as it is read, never a spectrogram.
The spectrogram column is written plain (no dictionary, no statistics), so a read of it is a
copy of its bytes, which `mel_array` views as float16 [n, frames, mels] without another.
Reads stay in Arrow (no per-row Python): `RowGroups.read` fetches the row groups a read needs
with one `read_row_groups` call per shard, from a per-thread cache of open files, and takes the
rows with one `take`. `RowGroups.spectrograms` reads format-2 spectrogram pages straight from
the file instead (data/pages.py: one copy fewer, the same CRC-32 checked). A read that cannot be
decoded, or whose checksum does not match, is a StoreError naming the file and, where it can be
pinned, the row group.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.balance import MultiLabels
from data.manifest import FORMAT_VERSION, HASH, SPECTROGRAM, StoreError
from data.pages import SpectrogramPages, read_group

__all__ = ["ROW_GROUP_ROWS", "RowGroups", "pooled_empty", "close_shards", "file_hash", "file_hashes", "map_shards",
           "multi_hot", "labels_array", "mel_column", "mel_array", "put_mel", "write_shard_file", "open_parquet",
           "check_shard", "read_shard", "find_mel", "shard_batches"]

ROW_GROUP_ROWS = 4  # rows a row group as shards are written (readers take the sizes from the files):
                    # the stream's read unit, whose clips share labels (data/stream.py)
_HASH_CHUNK = 1 << 22    # files are hashed in 4 MiB reads
_WRITE_BUFFER = 1 << 20  # shard bytes reach the hashing file in 1 MiB writes
_DECODE_ERRORS = (OSError, pa.ArrowException, IndexError)  # what pyarrow raises on damaged bytes
_ARROW_GROUPS = 16       # row groups of a shard decoded at once where spectrograms are read through pyarrow


def _io_threads(tasks: int) -> int:
    """Threads for `tasks` independent shard reads or writes (pyarrow and hashlib release the
    GIL): one a core, at most 8."""
    return max(1, min(tasks, os.cpu_count() or 1, 8))


def map_shards(fn, paths: list[str]) -> list:
    """fn(path) for each shard, a few at a time (pyarrow releases the GIL while it reads)."""
    if _io_threads(len(paths)) < 2:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=_io_threads(len(paths))) as pool:
        return list(pool.map(fn, paths))


def file_hash(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (the shard entry's `sha256`)."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(paths) -> list[str]:
    """`file_hash` of each path, a few files at a time (hashlib releases the GIL)."""
    return map_shards(file_hash, list(paths))


def multi_hot(labels: pa.Array, n_classes: int) -> np.ndarray:
    """A `labels` column (list<int16> [n]) as multi-hot targets, float32 [n, n_classes]."""
    lengths = np.diff(labels.offsets.to_numpy())
    target = np.zeros((len(labels), n_classes), dtype=np.float32)
    target[np.repeat(np.arange(len(labels)), lengths), labels.flatten().to_numpy()] = 1.0
    return target


def labels_array(labels) -> pa.Array:
    """Per-clip label indices [n] as a list<int16> column: a MultiLabels without a loop over clips."""
    if isinstance(labels, MultiLabels):
        offsets = np.asarray(labels.offsets, np.int64) - labels.offsets[0]
        values = labels.indices[labels.offsets[0]:labels.offsets[-1]]
        if offsets[-1] < 2**31:
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                            pa.array(np.asarray(values, np.int16)), pa.list_(pa.int16()))
    return pa.array([np.asarray(l, np.int16) for l in labels], pa.list_(pa.int16()))


def mel_column(mel: np.ndarray, version: int = FORMAT_VERSION) -> pa.Array:
    """Spectrograms [n, frames, mels] as the `mel` column of store format `version`: format 2
    a fixed-size binary of their float16 bytes (no copy when `mel` is C-contiguous
    little-endian float16), format 1 a fixed-shape tensor."""
    mel = np.ascontiguousarray(mel, "<f2")
    if version == 1:
        return pa.FixedShapeTensorArray.from_numpy_ndarray(mel)
    width = 2 * int(np.prod(mel.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(mel), [None, pa.py_buffer(mel)])


def mel_array(column: pa.Array | pa.ChunkedArray, frames: int, mels: int) -> np.ndarray:
    """A `mel` column of either store format as float16 [n, frames, mels]: format 2 (fixed-size
    binary) as a read-only view of a one-chunk column's bytes (several chunks: one copy),
    format 1 (fixed-shape tensor) decoded by Arrow."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks != 1:
            return np.concatenate([mel_array(c, frames, mels) for c in column.chunks] or
                                  [np.zeros((0, frames, mels), np.float16)])
        column = column.chunk(0)
    if not pa.types.is_fixed_size_binary(column.type):
        return column.to_numpy_ndarray()
    width = column.type.byte_width
    if width != 2 * frames * mels:
        raise StoreError(f"a {SPECTROGRAM} column of {width} bytes a clip is not [{frames}, {mels}] float16")
    data = column.buffers()[1]
    if data is None:
        return np.zeros((0, frames, mels), np.float16)
    view = np.frombuffer(data, "<f2", count=len(column) * frames * mels, offset=column.offset * width)
    return view.reshape(len(column), frames, mels)


def put_mel(out: np.ndarray, dest: np.ndarray, column: pa.ChunkedArray, positions: np.ndarray) -> None:
    """out[dest] = the spectrograms at `positions` of a `mel` column (float16 [n, frames, mels]),
    one spectrogram at a time, each copied once from the column's bytes (format 2): a gather
    by fancy indexing would copy twice, through a temporary as large as the rows."""
    views, first = [], []
    for chunk in column.chunks:
        first.append(sum(len(v) for v in views))
        views.append(mel_array(chunk, *out.shape[1:]))
    which = np.searchsorted(first, positions, side="right") - 1
    for d, c, p in zip(dest.tolist(), which.tolist(), (positions - np.asarray(first)[which]).tolist()):
        out[d] = views[c][p]


class _HashingFile:
    """A binary file that hashes what is written to it (pyarrow writes through `write`)."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.new(HASH)

    def write(self, data) -> int:
        self.hash.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    @property
    def closed(self) -> bool:
        return self.f.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


def _write_options(table: pa.Table, version: int) -> dict:
    """pyarrow's write options of store format `version`: format 2 writes a CRC-32 on every page
    and the spectrogram column plain (no dictionary, no min/max statistics); format 1 took
    pyarrow's defaults."""
    if version == 1:
        return {}
    others = [name for name in table.column_names if name != SPECTROGRAM]
    return {"use_dictionary": others, "write_statistics": others, "write_page_checksum": True}


def write_shard_file(path: Path, table: pa.Table, version: int = FORMAT_VERSION) -> str:
    """Write `table` as the shard at `path` in store format `version`, atomically, uncompressed,
    in row groups of `ROW_GROUP_ROWS` rows; returns the sha256 hex digest of the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        out = _HashingFile(f)
        sink = pa.BufferedOutputStream(pa.PythonFile(out, mode="w"), _WRITE_BUFFER)
        pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="none",
                       **_write_options(table, version))
        if not sink.closed:
            sink.close()
    os.replace(tmp, path)
    return out.hash.hexdigest()


def _unreadable(path, row_group: int | None, error: BaseException) -> StoreError:
    """The StoreError for a shard pyarrow failed to decode: "F: row group N is unreadable (error)",
    or "F: unreadable Parquet shard (error)" where `row_group` is None."""
    what = f"{type(error).__name__}: {' '.join(str(error).split())}"
    where = "unreadable Parquet shard" if row_group is None else f"row group {row_group} is unreadable"
    return StoreError(f"{path}: {where} ({what})")


def _first_unreadable(path, pf: pq.ParquetFile, error: BaseException, groups: Iterable[int],
                      columns: list[str] | None) -> StoreError:
    """`_unreadable` for the first of `groups` whose `columns` do not decode (the file alone,
    with `error`, if each of them does)."""
    for g in groups:
        try:
            pf.read_row_group(g, columns=columns, use_threads=False)
        except _DECODE_ERRORS as e:
            return _unreadable(path, g, e)
    return _unreadable(path, None, error)


def open_parquet(path) -> pq.ParquetFile:
    """A shard's ParquetFile, which verifies each page's checksum as it reads it (a page written
    without one, as format 1 wrote them, is read unchecked); a missing file or a bad footer is a
    StoreError naming it."""
    if not Path(path).is_file():
        raise StoreError(f"{path}: shard listed in the manifest is missing")
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, None, e) from e


@lru_cache(maxsize=64)
def _parquet_of_thread(path: str, thread: int) -> pq.ParquetFile:
    return open_parquet(path)


def _parquet(path: str) -> pq.ParquetFile:
    """The open shard, one ParquetFile per thread (never read by two threads at once)."""
    return _parquet_of_thread(path, threading.get_ident())


@lru_cache(maxsize=256)
def _pages(path: str, width: int) -> SpectrogramPages | None:
    """Where the shard's spectrogram pages lie (None unless all are laid out as format 2 writes
    them: data/pages.py)."""
    return SpectrogramPages.of(path, _parquet(path), width)


def close_shards() -> None:
    """Forget the shard files `RowGroups` keeps open and their page maps (after shards were
    replaced)."""
    _parquet_of_thread.cache_clear()
    _pages.cache_clear()


def _group_sizes(pf: pq.ParquetFile) -> list[int]:
    """Rows of each row group of the file."""
    meta = pf.metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def pooled_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised, writable array in pyarrow's memory pool, which keeps freed memory for
    the next one. A large numpy array is fresh pages from the kernel every time, faulted in as
    they are first written: for a block of spectrograms that costs more than copying them in."""
    dtype = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(int(np.prod(shape)) * dtype.itemsize), dtype).reshape(shape)


@dataclass(frozen=True)
class RowGroups:
    """Where the rows of a list of shards (taken in order) live, to read rows by global index.
    Picklable: built once on a driver, read from in Ray tasks."""

    paths: list[str]
    shard: np.ndarray   # int32 [G] shard of each row group
    index: np.ndarray   # int32 [G] row-group index within its shard
    start: np.ndarray   # int64 [G + 1] first global row of each group

    @classmethod
    def of(cls, paths) -> "RowGroups":
        return cls.from_sizes(paths, [_group_sizes(open_parquet(p)) for p in paths])

    @classmethod
    def from_sizes(cls, paths, sizes: list[list[int]]) -> "RowGroups":
        """From each shard's row-group sizes (rows), shards in order."""
        shard = np.repeat(np.arange(len(sizes), dtype=np.int32), [len(s) for s in sizes])
        index = np.concatenate([np.arange(len(s), dtype=np.int32) for s in sizes] or [np.zeros(0, np.int32)])
        start = np.zeros(len(shard) + 1, dtype=np.int64)
        np.cumsum([n for s in sizes for n in s], out=start[1:])
        return cls([str(p) for p in paths], shard, index, start)

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """Row group of each global row, int64 [n]."""
        return np.searchsorted(self.start, rows, side="right") - 1

    def read(self, rows: np.ndarray, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
        """Global rows in the given order (repeats allowed): `fetch` and one `take`."""
        table, positions = self.fetch(rows, columns, use_threads)
        return table.take(positions)

    def fetch(self, rows: np.ndarray, columns: list[str] | None = None,
              use_threads: bool = True) -> tuple[pa.Table, np.ndarray]:
        """The row groups that hold global `rows`, read whole, each group once (one
        `read_row_groups` call per shard for all the groups needed there), and the position of
        each row in that table (int64 [n]). A group that cannot be read is a StoreError naming
        its shard and its index. `use_threads`: pyarrow's, within each call (off where the
        caller runs reads in threads)."""
        rows = np.asarray(rows, dtype=np.int64)
        groups = self.group_of(rows)
        uniq = np.unique(groups)
        if not len(uniq):
            return self._read_groups(0, [], columns, use_threads), np.zeros(0, np.int64)
        shards = self.shard[uniq]
        cuts = np.flatnonzero(shards[1:] != shards[:-1]) + 1   # runs of groups of one shard
        table = pa.concat_tables([
            self._read_groups(int(shards[a]), self.index[uniq[a:b]].tolist(), columns, use_threads)
            for a, b in zip([0, *cuts], [*cuts, len(uniq)])])
        # position of each requested row in the concatenation of the groups read
        base = np.concatenate([[0], np.cumsum(self.start[uniq + 1] - self.start[uniq])[:-1]]).astype(np.int64)
        return table, base[np.searchsorted(uniq, groups)] + rows - self.start[groups]

    def spectrograms(self, rows: np.ndarray, frames: int, mels: int) -> np.ndarray:
        """Spectrograms of global `rows` in that order (repeats allowed), float16 [n, frames,
        mels]: each row group needed read once and its page's checksum checked, each row read
        straight into its place (a repeat copied from there). Format-2 pages are read from the
        file (data/pages.py), others through pyarrow. A damaged page is a StoreError naming its
        shard and row group."""
        rows = np.asarray(rows, dtype=np.int64)
        groups = self.group_of(rows)
        order = np.argsort(groups, kind="stable")
        out = pooled_empty((len(rows), frames, mels), np.float16)
        for at in np.split(order, np.flatnonzero(np.diff(self.shard[groups[order]])) + 1):  # a shard at a time
            if len(at):
                left = self._read_pages(rows[at], groups[at], at, out)
                self._read_arrow(rows[at][left], at[left], out)
        return out

    def _read_pages(self, rows: np.ndarray, groups: np.ndarray, dest: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out[dest] = spectrograms of `rows` (of one shard, `groups` their row groups, sorted)
        read straight from the shard's pages; returns bool [n], the rows left to read through
        pyarrow (a page not laid out as format 2 writes it)."""
        path = self.paths[int(self.shard[groups[0]])]
        pages = _pages(path, 2 * out.shape[1] * out.shape[2])
        left = np.ones(len(rows), bool)
        if pages is None:
            return left
        fd = os.open(path, os.O_RDONLY)
        try:
            for at in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(groups)) + 1):
                g = int(groups[at[0]])
                places = list(zip(dest[at].tolist(), (rows[at] - self.start[g]).tolist()))  # (place, row of the group)
                first: dict[int, int] = {}  # row of the group -> the first place it goes
                for d, r in places:
                    first.setdefault(r, d)
                into = [out[first[r]] if r in first else None for r in range(int(pages.rows[self.index[g]]))]
                if read_group(pages, fd, int(self.index[g]), into):
                    for d, r in places:
                        if first[r] != d:  # a row drawn again in this block: copied from its first place
                            out[d] = out[first[r]]
                    left[at] = False
        finally:
            os.close(fd)
        return left

    def _read_arrow(self, rows: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
        """out[dest] = spectrograms of `rows` (of one shard) read through pyarrow, `_ARROW_GROUPS`
        row groups at a time."""
        key = self.index[self.group_of(rows)] // _ARROW_GROUPS
        for at in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(key)) + 1):
            if len(at):
                table, positions = self.fetch(rows[at], [SPECTROGRAM])
                put_mel(out, dest[at], table[SPECTROGRAM], positions)

    def _read_groups(self, s: int, indices: list[int], columns: list[str] | None,
                     use_threads: bool = True) -> pa.Table:
        path = self.paths[s]
        pf = _parquet(path)
        try:
            return pf.read_row_groups(indices, columns=columns, use_threads=use_threads)
        except _DECODE_ERRORS as e:  # a shard damaged after validation
            raise _first_unreadable(path, pf, e, indices, columns) from e


def check_shard(path, rows: int, expected: pa.Schema, size: int | None = None) -> None:
    """A StoreError unless the shard at `path` exists, holds `rows` rows, has the schema
    `expected` and is `size` bytes long (when given): from its footer and size alone."""
    pf = open_parquet(path)
    if pf.metadata.num_rows != rows:
        raise StoreError(f"{path}: {pf.metadata.num_rows} rows, manifest says {rows}")
    got = pf.schema_arrow.remove_metadata()
    if not got.equals(expected):
        raise StoreError(f"{path}: schema {got} != expected {expected}")
    if size is not None and (got_size := Path(path).stat().st_size) != size:
        raise StoreError(f"{path}: {got_size} bytes, manifest says {size}")


def read_shard(path, columns: list[str]) -> tuple[pa.Table, list[int]]:
    """`columns` of a whole shard and its row-group sizes (rows), from one open of the file
    (pyarrow's threads off: the shards are read a few at a time)."""
    pf = open_parquet(path)
    try:
        table = pf.read(columns=columns, use_threads=False)
    except _DECODE_ERRORS as e:
        raise _first_unreadable(path, pf, e, range(pf.num_row_groups), columns) from e
    return table, _group_sizes(pf)


def find_mel(path, clip_id: str, frames: int, mels: int) -> np.ndarray | None:
    """Raw log-mel of clip `clip_id`, float16 [frames, mels], None where the shard at `path` does
    not hold it; read a row group at a time (its clip ids, then the mel of the group that holds it)."""
    pf = open_parquet(path)
    for g in range(pf.num_row_groups):
        try:
            ids = pf.read_row_group(g, columns=["clip_id"])["clip_id"].to_pylist()
            if clip_id in ids:
                mel = pf.read_row_group(g, columns=[SPECTROGRAM])[SPECTROGRAM]
                return mel_array(mel, frames, mels)[ids.index(clip_id)].copy()
        except _DECODE_ERRORS as e:
            raise _unreadable(path, g, e) from e
    return None


def shard_batches(path, batch_size: int, columns: list[str], convert: Callable[[pa.RecordBatch], dict]
                  ) -> Iterator[dict]:
    """convert(batch) of each batch of `batch_size` rows (the last may be fewer) of `columns` of
    the shard at `path`, in row order; a batch that does not decode or convert is a StoreError
    naming the first row group from the batch's on that does not decode."""
    pf = open_parquet(path)
    starts = np.cumsum([0, *_group_sizes(pf)])
    batches, done = pf.iter_batches(batch_size, columns=columns), 0
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            out = convert(batch)
        except _DECODE_ERRORS as e:
            group = int(np.searchsorted(starts, done, side="right") - 1)
            raise _first_unreadable(path, pf, e, range(group, pf.num_row_groups), columns) from e
        done += batch.num_rows
        yield out
