"""The spectrogram store: Parquet shards of raw log-mel spectrograms plus a JSON manifest.

Layout of a store directory:
  manifest.json              format version, feature parameters, classes in index order, and
                             per split: shard files (rows, bytes, sha256 of the file's bytes),
                             clip count, per-class counts, a fingerprint of the clip-id set, the
                             row order. A shard entry without sha256 (written before content
                             hashes were recorded) is read as before and reported "not verifiable".
  <split>/part-00000.parquet one row a clip:
      clip_id  string
      labels   list<int16>                               class indices
      mel      arrow.fixed_shape_tensor<halffloat>[T, F] raw log-mel [frames, mels], zero-padded
      n_frames int32                                     frames before padding
The training split is written in ascending order of each clip's rarest-label count (r_j), which
makes "the clips repeated at least c times" a prefix of the split for every beta (see
data/stream.py). Row groups are small (`ROW_GROUP_ROWS`) so a reader can fetch row ranges.
Shards and the manifest are written to a temporary name and renamed: a reader never sees a
half-written file. A shard's sha256 is computed from the bytes as they are written;
`Store.validate` re-reads every shard and compares. A read that pyarrow cannot decode is a
StoreError naming the file and the row group.

Bulk paths stay in Arrow (no per-row Python): `RowGroups.read` fetches the row groups a read
needs with one `read_row_groups` call per shard and takes the rows with one `take`;
`Store.write_table` writes a table of the store's schema as a shard (through a 1 MiB buffer, so
the hashing file sees few large writes); `Store.labels`, `Store.clip_ids` and `Store.row_groups`
come from threaded passes over the shards that read only the columns asked for (the labels
alone: ~1 ms a shard), each once per Store object.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.balance import MultiLabels, class_counts

__all__ = ["FORMAT_VERSION", "ROW_GROUP_ROWS", "StoreError", "Store", "SplitWriter", "RowGroups",
           "open_store", "create_store", "check_new_store", "fingerprint", "schema", "write_json", "multi_hot", "close_shards",
           "HASH", "file_hash", "file_hashes"]

FORMAT_VERSION = 1
ROW_GROUP_ROWS = 4  # rows a row group as shards are written (readers take the sizes from the files):
                    # the stream's read unit, whose clips share labels (data/stream.py)
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("format_version", "features", "classes", "splits")
HASH = "sha256"          # the shard entry's key for the content hash (hex digest of the file's bytes)
_HASH_CHUNK = 1 << 22    # files are hashed in 4 MiB reads
_WRITE_BUFFER = 1 << 20  # shard bytes reach the hashing file in 1 MiB writes


class StoreError(ValueError):
    """A store that does not match its manifest; the message names the file."""


def schema(frames: int, mels: int) -> pa.Schema:
    return pa.schema([
        ("clip_id", pa.string()),
        ("labels", pa.list_(pa.int16())),
        ("mel", pa.fixed_shape_tensor(pa.float16(), [frames, mels])),
        ("n_frames", pa.int32()),
    ])


def fingerprint(clip_ids) -> str:
    """sha256 of the sorted clip ids, newline-joined: the identity of a split's clip set.
    A numpy str array is sorted by numpy (code-point order, as Python sorts str: same digest)."""
    if isinstance(clip_ids, np.ndarray) and clip_ids.dtype.kind == "U":
        ordered = np.sort(clip_ids, kind="stable").tolist()
    else:
        ordered = sorted(map(str, clip_ids))
    return "sha256:" + hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]


def _io_threads(tasks: int) -> int:
    """Threads for `tasks` independent shard reads or writes (pyarrow and hashlib release the
    GIL): one a core, at most 8."""
    return max(1, min(tasks, os.cpu_count() or 1, 8))


def multi_hot(labels: pa.Array, n_classes: int) -> np.ndarray:
    """A `labels` column (list<int16> [n]) as multi-hot targets, float32 [n, n_classes]."""
    lengths = np.diff(labels.offsets.to_numpy())
    target = np.zeros((len(labels), n_classes), dtype=np.float32)
    target[np.repeat(np.arange(len(labels)), lengths), labels.flatten().to_numpy()] = 1.0
    return target


def file_hash(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (the shard entry's `sha256`)."""
    h = hashlib.new(HASH)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(paths) -> list[str]:
    """`file_hash` of each path, a few files at a time (hashlib releases the GIL)."""
    return _map_shards(file_hash, list(paths))


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


def _unreadable(path, pf: pq.ParquetFile | None, error: BaseException, columns=None,
                first_group: int = 0) -> StoreError:
    """The StoreError for a shard pyarrow failed to decode: the first row group from
    `first_group` on that does not read is named (the file alone if none can be pinned)."""
    what = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if pf is not None:
        for g in range(first_group, pf.metadata.num_row_groups):
            try:
                pf.read_row_group(g, columns=columns)
            except (OSError, pa.ArrowException, IndexError, ValueError):
                return StoreError(f"{path}: row group {g} is unreadable ({what})")
    return StoreError(f"{path}: unreadable Parquet shard ({what})")


def _open_parquet(path) -> pq.ParquetFile:
    """A shard's ParquetFile; a missing file or a bad footer is a StoreError naming it."""
    if not Path(path).is_file():
        raise StoreError(f"{path}: shard listed in the manifest is missing")
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, None, e) from e


@lru_cache(maxsize=64)
def _parquet_of_thread(path: str, thread: int) -> pq.ParquetFile:
    return _open_parquet(path)


def _parquet(path: str) -> pq.ParquetFile:
    """The open shard, one ParquetFile per thread (never read by two threads at once)."""
    return _parquet_of_thread(path, threading.get_ident())


def close_shards() -> None:
    """Forget the shard files `RowGroups.read` keeps open (after shards were replaced)."""
    _parquet_of_thread.cache_clear()


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
        return cls.from_sizes(paths, [_group_sizes(_open_parquet(p)) for p in paths])

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
        """Global rows in the given order (repeats allowed), read by whole row groups, each
        group once: one `read_row_groups` call per shard for all the groups needed there, one
        `take`. A group that cannot be read is a StoreError naming its shard and its index.
        `use_threads`: pyarrow's, within each call (off where the caller runs reads in threads)."""
        rows = np.asarray(rows, dtype=np.int64)
        groups = self.group_of(rows)
        uniq = np.unique(groups)
        if not len(uniq):
            return self._read_groups(0, [], columns, use_threads)
        shards = self.shard[uniq]
        cuts = np.flatnonzero(shards[1:] != shards[:-1]) + 1   # runs of groups of one shard
        table = pa.concat_tables([
            self._read_groups(int(shards[a]), self.index[uniq[a:b]].tolist(), columns, use_threads)
            for a, b in zip([0, *cuts], [*cuts, len(uniq)])])
        # position of each requested row in the concatenation of the groups read
        base = np.concatenate([[0], np.cumsum(self.start[uniq + 1] - self.start[uniq])[:-1]]).astype(np.int64)
        return table.take(base[np.searchsorted(uniq, groups)] + rows - self.start[groups])

    def _read_groups(self, s: int, indices: list[int], columns: list[str] | None,
                     use_threads: bool = True) -> pa.Table:
        path = self.paths[s]
        pf = _parquet(path)
        try:
            return pf.read_row_groups(indices, columns=columns, use_threads=use_threads)
        except (OSError, pa.ArrowException) as e:  # a shard damaged after validation
            for index in indices:                  # name the group that fails
                try:
                    pf.read_row_group(index, columns=columns, use_threads=False)
                except (OSError, pa.ArrowException) as e1:
                    raise StoreError(f"{path}: row group {index} is unreadable "
                                     f"({type(e1).__name__}: {e1})") from e1
            raise StoreError(f"{path}: row groups {indices} are unreadable ({type(e).__name__}: {e})") from e


def _group_sizes(pf: pq.ParquetFile) -> list[int]:
    meta = pf.metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def create_store(root: str | Path, classes: list[dict], features: dict) -> "Store":
    """Start a store: `classes` are {index, mid, name} in index order, `features` the frontend
    parameters (must include `frames` and `mels`). `root` must be new or an empty directory
    (`check_new_store`)."""
    root = Path(root)
    check_new_store(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / MANIFEST, {"format_version": FORMAT_VERSION, "features": features,
                                  "classes": classes, "splits": {}})
    return open_store(root)


def check_new_store(root: Path) -> None:
    """A StoreError unless `root` is new or an empty directory: anything in it (say the shards of
    a store whose manifest was lost) is never written over."""
    if (root / MANIFEST).exists():
        raise StoreError(f"{root / MANIFEST} already exists")
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: exists and is not a directory")
    if root.exists() and (held := sorted(p.name for p in root.iterdir())):
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise StoreError(f"{root}: not empty ({shown}) and has no {MANIFEST}: refusing to write a new "
                         "store over it; use a new or empty directory")


@dataclass
class SplitWriter:
    """Writes one split as shards of `rows_per_shard` rows; `close()` records it in the manifest.

    Rows are written in the order given: the caller sorts the training split by rarest label.
    """

    store: "Store"
    split: str
    rows_per_shard: int = 1024
    order: str = "given"
    _buffer: list = field(default_factory=list)
    _shards: list = field(default_factory=list)
    _clip_ids: list = field(default_factory=list)
    _labels: list = field(default_factory=list)

    def write(self, clip_ids, labels, mel: np.ndarray, n_frames) -> None:
        """Append clips: ids [n], label-index arrays [n], mel [n, frames, mels], n_frames [n]."""
        f, m = self.store.frames, self.store.mels
        if mel.shape[1:] != (f, m):
            raise StoreError(f"split {self.split}: mel shape {mel.shape[1:]} != store's {(f, m)}")
        if not np.isfinite(mel).all():
            row = int(np.flatnonzero(~np.isfinite(mel).reshape(len(mel), -1).all(axis=1))[0])
            raise StoreError(f"split {self.split}: clip {clip_ids[row]!r} has a non-finite spectrogram")
        for i in range(len(clip_ids)):
            self._buffer.append((str(clip_ids[i]), np.asarray(labels[i], np.int16), mel[i], int(n_frames[i])))
            if len(self._buffer) == self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        ids, labels, mels, n_frames = zip(*self._buffer)
        self._buffer.clear()
        name = f"{self.split}/part-{len(self._shards):05d}.parquet"
        self._shards.append(self.store.write_shard(name, ids, labels, np.stack(mels), n_frames))
        self._clip_ids.extend(ids)
        self._labels.extend(labels)

    def close(self) -> dict:
        """Flush and record the split in the manifest; returns its manifest entry."""
        self._flush()
        return self.store.add_split(self.split, self._shards, self._clip_ids, self._labels, self.order)


class Store:
    """Read access to a store directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise StoreError(f"{path}: no manifest (not a store directory)")
        try:
            self.manifest = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise StoreError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise StoreError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(self.manifest, dict):
            raise StoreError(f"{path}: not a store manifest (a JSON {type(self.manifest).__name__}, not an object)")
        missing = [k for k in MANIFEST_KEYS if k not in self.manifest]
        if missing:
            raise StoreError(f"{path}: not a store manifest (no {', '.join(missing)})")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: format_version {self.manifest.get('format_version')} "
                             f"!= {FORMAT_VERSION}")

    # --- what the manifest says -------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]

    @property
    def mids(self) -> list[str]:
        return [c["mid"] for c in self.manifest["classes"]]

    @property
    def n_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def features(self) -> dict:
        return self.manifest["features"]

    @property
    def frames(self) -> int:
        return int(self.features["frames"])

    @property
    def mels(self) -> int:
        return int(self.features["mels"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split_info(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise StoreError(f"{self.root}: no split {split!r} (have {self.splits})")
        return self.manifest["splits"][split]

    def shard_paths(self, split: str) -> list[str]:
        info = self.split_info(split)
        if "union_of" in info:
            return [p for part in info["union_of"] for p in self.shard_paths(part)]
        return [str(self.root / s["file"]) for s in info["shards"]]

    def fingerprint(self, split: str) -> str:
        return self.split_info(split)["fingerprint"]

    def class_counts(self, split: str) -> np.ndarray:
        return np.asarray(self.split_info(split)["class_counts"], dtype=np.int64)

    # --- what the shards hold ---------------------------------------------------------
    @cached_property
    def _index_cache(self) -> dict:
        """{split: {"groups": RowGroups, column: Arrow array of the split in row order}}."""
        return {}

    def _columns(self, split: str, columns: list[str]) -> dict:
        """The split's `columns` and its row groups, read once per Store object: one pass over
        the shards (each opened once, one read of only those columns, a few shards at a time,
        no per-row Python) for the columns not read yet; with none missing and no row groups
        known yet, the `labels` pass (the cheapest column) is made for them."""
        entry = self._index_cache.setdefault(split, {})
        missing = [c for c in columns if c not in entry] or ([] if "groups" in entry else ["labels"])
        if missing:
            paths = self.shard_paths(split)
            parts = _map_shards(lambda p: _read_shard(p, missing), paths)
            empty = schema(self.frames, self.mels).empty_table()
            for c in missing:
                chunks = [ch for t, _ in parts for ch in t[c].chunks]
                col = pa.chunked_array(chunks, chunks[0].type) if chunks else empty[c]
                entry[c] = col.combine_chunks() if c == "labels" else col  # labels: one compact list<int16>
            entry.setdefault("groups", RowGroups.from_sizes(paths, [sizes for _, sizes in parts]))
        return entry

    def row_groups(self, split: str) -> RowGroups:
        """Where the split's rows live (as `RowGroups.of` its shard paths), from the first pass
        that read one of its columns (the `labels` pass if none did)."""
        return self._columns(split, [])["groups"]

    def clip_ids(self, split: str) -> np.ndarray:
        """Clip ids in row order, str [n_clips] (read with the labels when they are not read yet:
        one pass for both)."""
        with_labels = "labels" not in self._index_cache.get(split, {})
        ids = self._columns(split, ["clip_id", "labels"] if with_labels else ["clip_id"])["clip_id"]
        return ids.to_numpy().astype(str)

    def labels(self, split: str) -> MultiLabels:
        """Per-clip label indices in row order (a sequence of int64 arrays). Only the `labels`
        column is read (kept per Store object as one list<int16> array, about 9 bytes a clip)."""
        col = self._columns(split, ["labels"])["labels"]
        offsets = col.offsets.to_numpy().astype(np.int64)
        return MultiLabels(offsets - offsets[0], col.flatten().to_numpy().astype(np.int64))

    def spectrogram(self, split: str, clip_id: str) -> np.ndarray:
        """Raw log-mel of one clip, float16 [frames, mels]."""
        for path in self.shard_paths(split):
            pf = _open_parquet(path)
            for g in range(pf.num_row_groups):
                try:
                    ids = pf.read_row_group(g, columns=["clip_id"])["clip_id"].to_pylist()
                    if clip_id in ids:
                        mel = pf.read_row_group(g, columns=["mel"])["mel"].combine_chunks()
                        return mel.to_numpy_ndarray()[ids.index(clip_id)]
                except (OSError, pa.ArrowException) as e:
                    raise StoreError(f"{path}: row group {g} is unreadable ({type(e).__name__}: {e})") from e
        raise KeyError(f"clip {clip_id!r} not in split {split!r} of {self.root}")

    def iter_batches(self, split: str, batch_size: int) -> Iterator[dict]:
        """The split in row order, `batch_size` clips at a time: {clip_id [b] str,
        mel [b, frames, mels] float16, target [b, n_classes] float32 multi-hot}.
        A shard pyarrow cannot decode is a StoreError naming the file and the row group."""
        columns = ["clip_id", "labels", "mel"]
        for path in self.shard_paths(split):
            pf = _open_parquet(path)
            starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
            batches, done = pf.iter_batches(batch_size, columns=columns), 0
            while True:
                try:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    out = {"clip_id": batch.column("clip_id").to_numpy(zero_copy_only=False),
                           "mel": batch.column("mel").to_numpy_ndarray(),
                           "target": multi_hot(batch.column("labels"), self.n_classes)}
                except (OSError, pa.ArrowException, IndexError) as e:
                    group = int(np.searchsorted(starts, done, side="right") - 1)
                    raise _unreadable(path, pf, e, columns, group) from e
                done += batch.num_rows
                yield out

    def validate(self, split: str | None = None, checksums: bool = True) -> dict:
        """Check shards against the manifest: existence, rows, schema, the clip-id fingerprint
        and (`checksums`) each shard's sha256 over its bytes: the cost of reading the store once,
        a few files at a time (about 1.4 s per GB on 2 busy cores with the files in the page
        cache; disk-bound otherwise). `checksums=False` skips the hashes.

        Raises StoreError naming the first shard that does not match. Returns {shards, verified,
        unverifiable: shards whose entry has no sha256 (written before hashes were recorded),
        which are also named in a warning}.
        """
        expected = schema(self.frames, self.mels)
        names = [split] if split else self.splits
        names = list(dict.fromkeys(p for n in names for p in self._parts(n)))
        to_hash: list[tuple[Path, str]] = []
        unverifiable: list[str] = []
        for name in names:
            info = self.split_info(name)
            for shard in info["shards"]:
                path = self.root / shard["file"]
                if not path.exists():
                    raise StoreError(f"{path}: shard listed in the manifest is missing")
                try:
                    meta = pq.read_metadata(path)
                    got = pq.read_schema(path)
                except (OSError, pa.ArrowException) as e:  # a truncated or foreign file
                    raise StoreError(f"{path}: unreadable Parquet shard ({e})") from None
                if meta.num_rows != shard["rows"]:
                    raise StoreError(f"{path}: {meta.num_rows} rows, manifest says {shard['rows']}")
                if not got.remove_metadata().equals(expected):
                    raise StoreError(f"{path}: schema {got.remove_metadata()} != expected {expected}")
                if HASH in shard:
                    to_hash.append((path, shard[HASH]))
                else:
                    unverifiable.append(str(path))
            self._index_cache.pop(name, None)
            if fingerprint(self.clip_ids(name)) != info["fingerprint"]:
                raise StoreError(f"{self.root / name}: clip ids do not match the manifest's fingerprint")
        if checksums:
            for (path, want), got in zip(to_hash, file_hashes(p for p, _ in to_hash)):
                if got != want:
                    raise StoreError(f"{path}: content changed since it was written "
                                     f"({HASH} {got[:16]}..., manifest says {want[:16]}...)")
            if unverifiable:
                warnings.warn(f"{self.root}: {len(unverifiable)} shard(s) have no {HASH} in the manifest "
                              f"(written before content hashes): not verifiable, e.g. {unverifiable[0]}",
                              stacklevel=2)
        return {"shards": len(to_hash) + len(unverifiable), "verified": len(to_hash) if checksums else 0,
                "unverifiable": unverifiable}

    def _parts(self, split: str) -> list[str]:
        """The splits that hold `split`'s data: itself, or the parts of a union."""
        info = self.split_info(split)
        return [p for part in info["union_of"] for p in self._parts(part)] if "union_of" in info else [split]

    # --- writing ----------------------------------------------------------------------
    def write_shard(self, name: str, clip_ids, labels, mel: np.ndarray, n_frames) -> dict:
        """Write one shard atomically; returns its manifest entry {file, rows, bytes, sha256}
        (sha256 of the bytes as written)."""
        table = pa.table({
            "clip_id": pa.array(list(clip_ids), pa.string()),
            "labels": _labels_array(labels),
            "mel": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(mel, np.float16)),
            "n_frames": pa.array(np.asarray(n_frames, np.int32)),
        }, schema=schema(self.frames, self.mels))
        return self.write_table(name, table)

    def write_table(self, name: str, table: pa.Table) -> dict:
        """Write a table of the store's schema (say rows `RowGroups.read` took from other
        shards) as one shard, atomically; returns its manifest entry as `write_shard` does,
        whose files it writes byte for byte. A table of another schema is a StoreError."""
        path = self.root / name
        expected = schema(self.frames, self.mels)
        if not table.schema.remove_metadata().equals(expected):
            def line(sch):
                return ", ".join(f"{f.name}: {f.type}" for f in sch)
            raise StoreError(f"{path}: table schema ({line(table.schema)}) != the store's ({line(expected)})")
        # exactly the store's schema (a table read back names the list items "element", not
        # "item", which would change the Arrow schema stored in the file): a zero-copy cast
        table = table.replace_schema_metadata(None).cast(expected)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            out = _HashingFile(f)
            sink = pa.BufferedOutputStream(pa.PythonFile(out, mode="w"), _WRITE_BUFFER)
            pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, compression="none")
            if not sink.closed:
                sink.close()
        os.replace(tmp, path)
        return {"file": name, "rows": len(table), "bytes": path.stat().st_size, HASH: out.hash.hexdigest()}

    def add_split(self, split: str, shards: list[dict], clip_ids, labels, order: str) -> dict:
        """Record a written split in the manifest (atomically); returns its entry."""
        return self.add_splits({split: (shards, clip_ids, labels, order)})[split]

    def add_splits(self, splits: dict[str, tuple], fingerprints: dict[str, str] | None = None) -> dict[str, dict]:
        """Record several written splits {name: (shards, clip_ids, labels, order)} in one atomic
        manifest write (a split moving clips to another is never seen half done); returns entries.
        `fingerprints`: {name: `fingerprint(clip_ids)`} where the caller computed it already."""
        fingerprints = fingerprints or {}
        entries = {name: {"shards": shards, "clips": len(clip_ids), "order": order,
                          "class_counts": class_counts(labels, self.n_classes).tolist(),
                          "fingerprint": fingerprints.get(name) or fingerprint(clip_ids)}
                   for name, (shards, clip_ids, labels, order) in splits.items()}
        self._record(entries)
        return entries

    def _record(self, entries: dict[str, dict]) -> None:
        """Put split entries in the manifest and write it atomically."""
        self.manifest["splits"].update(entries)
        write_json(self.root / MANIFEST, self.manifest)
        for name in entries:
            self._index_cache.pop(name, None)

    def add_union(self, name: str, parts: list[str]) -> dict:
        """Record split `name` as the concatenation of splits `parts`, in that order, without
        copying data; its clip count, class counts and fingerprint are recorded as for any split.
        Raises StoreError if a part is missing or the parts share clips."""
        if not parts or name in parts:
            raise StoreError(f"{self.root}: a union {name!r} needs parts other than itself, got {parts}")
        if "shards" in self.manifest["splits"].get(name, {}):
            raise StoreError(f"{self.root}: split {name!r} exists and holds data; pick another name")
        ids = np.concatenate([self.clip_ids(p) for p in parts])
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise StoreError(f"{self.root}: splits {parts} share {int((counts > 1).sum())} clip(s), "
                             f"e.g. {uniq[counts > 1][:5].tolist()}")
        entry = {"union_of": list(parts), "clips": len(ids), "order": "union",
                 "class_counts": sum(self.class_counts(p) for p in parts).tolist(),
                 "fingerprint": fingerprint(ids)}
        self._record({name: entry})
        return entry

    def writer(self, split: str, rows_per_shard: int = 1024, order: str = "given") -> SplitWriter:
        return SplitWriter(self, split, rows_per_shard, order)


def _read_table(path, columns: list[str], use_threads: bool = True) -> pa.Table:
    """Columns of a whole shard; a shard pyarrow cannot decode is a StoreError naming the row group."""
    return _read_columns(_open_parquet(path), path, columns, use_threads)


def _read_columns(pf: pq.ParquetFile, path, columns: list[str], use_threads: bool = True) -> pa.Table:
    try:
        return pf.read(columns=columns, use_threads=use_threads)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, pf, e, columns) from e


def _read_shard(path, columns: list[str]) -> tuple[pa.Table, list[int]]:
    """`columns` of a whole shard and its row-group sizes, from one open of the file (pyarrow's
    threads off: the shards are read a few at a time)."""
    pf = _open_parquet(path)
    return _read_columns(pf, path, columns, use_threads=False), _group_sizes(pf)


def _map_shards(fn, paths: list[str]) -> list:
    """fn(path) for each shard, a few at a time (pyarrow releases the GIL while it reads)."""
    if _io_threads(len(paths)) < 2:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=_io_threads(len(paths))) as pool:
        return list(pool.map(fn, paths))


def _labels_array(labels) -> pa.Array:
    """Per-clip label indices as list<int16>: a MultiLabels without a loop over clips."""
    if isinstance(labels, MultiLabels):
        offsets = np.asarray(labels.offsets, np.int64) - labels.offsets[0]
        values = labels.indices[labels.offsets[0]:labels.offsets[-1]]
        if offsets[-1] < 2**31:
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                            pa.array(np.asarray(values, np.int16)), pa.list_(pa.int16()))
    return pa.array([np.asarray(l, np.int16) for l in labels], pa.list_(pa.int16()))


def open_store(path: str | Path) -> Store:
    """Open a store directory written by `create_store` / `SplitWriter`."""
    return Store(path)
