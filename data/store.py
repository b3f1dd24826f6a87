"""The spectrogram store: a directory of Parquet shards and a JSON manifest (layout in
data/manifest.py; shard files in data/shards.py). `Store` opens one, reads what its shards hold,
validates them against the manifest and records splits written or edited.

The training split is written in ascending order of each clip's rarest-label count (r_j), which
makes "the clips repeated at least c times" a prefix of the split for every beta (see
data/stream.py). `Store.validate` checks each shard's size and footer, each split's clip-id
fingerprint and the shards' sha256 against the manifest's: of every shard, or of those changed
since they were last verified (data/verified.py). `Store.labels`, `Store.clip_ids` and
`Store.row_groups` come from threaded passes over the shards that read only the columns asked
for, each once per Store object. A store of an earlier format (data/manifest.py) is read as it
is and never written to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from data.balance import MultiLabels, class_counts, priors_from_counts
from data import verified
from data.manifest import (FORMAT_VERSION, HASH, LOCK, MANIFEST, SPECTROGRAM, StoreError, convert_command,
                           fingerprint, manifest_lock, read_manifest, schema, write_json)
from data.shards import (RowGroups, check_shard, file_hashes, find_mel, labels_array, map_shards, mel_array,
                         mel_column, multi_hot, read_shard, shard_batches, write_shard_file)

__all__ = ["Store", "SplitWriter", "open_store", "create_store", "check_new_store", "CHECKSUMS"]

CHECKSUMS = ("all", "changed", "none")  # `Store.validate`: which shards' sha256 it compares


def create_store(root: str | Path, classes: list[dict], features: dict) -> "Store":
    """Start a store: `classes` are {index, mid, name} in index order, `features` the frontend
    parameters (must include `frames` and `mels`). `root` must be new or an empty directory
    (`check_new_store`)."""
    root = Path(root)
    check_new_store(root)
    root.mkdir(parents=True, exist_ok=True)
    with manifest_lock(root):
        check_new_store(root)  # not created meanwhile by another writer
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
    if root.exists() and (held := sorted(p.name for p in root.iterdir() if p.name != LOCK)):
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
    """A store directory (layout in data/manifest.py): what its manifest says and its shards
    hold, their validation, and the splits written or edited."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root / MANIFEST)

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

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    def format_note(self) -> str | None:
        """One line for a store of an earlier format (None for the current one): what it costs
        and the command that copies it to the current format."""
        if self.format_version == FORMAT_VERSION:
            return None
        return (f"{self.root} is a format-{self.format_version} store: read as it is, but its spectrograms "
                f"decode slower and every check hashes all its shards; `{convert_command(self.root)}` "
                f"writes a format-{FORMAT_VERSION} copy beside it")

    def check_writable(self) -> None:
        """A StoreError unless this release can write to the store (its own format)."""
        if self.format_version != FORMAT_VERSION:
            raise StoreError(f"{self.root}: a format-{self.format_version} store is read, never written to; "
                             f"copy it to format {FORMAT_VERSION} first: {convert_command(self.root)}")

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

    def priors(self, split: str) -> np.ndarray:
        """The split's class priors (eq. 1: clips labelled k / clips), float64 [classes]."""
        return priors_from_counts(self.class_counts(split), self.split_info(split)["clips"])

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
            parts = map_shards(lambda p: read_shard(p, missing), paths)
            empty = schema(self.frames, self.mels, self.format_version).empty_table()
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
            mel = find_mel(path, clip_id, self.frames, self.mels)
            if mel is not None:
                return mel
        raise KeyError(f"clip {clip_id!r} not in split {split!r} of {self.root}")

    def iter_batches(self, split: str, batch_size: int) -> Iterator[dict]:
        """The split in row order, `batch_size` clips at a time: {clip_id [b] str,
        mel [b, frames, mels] float16 (read-only), target [b, n_classes] float32 multi-hot}.
        A shard pyarrow cannot decode is a StoreError naming the file and the row group."""
        def convert(batch: pa.RecordBatch) -> dict:
            return {"clip_id": batch.column("clip_id").to_numpy(zero_copy_only=False),
                    "mel": mel_array(batch.column(SPECTROGRAM), self.frames, self.mels),
                    "target": multi_hot(batch.column("labels"), self.n_classes)}
        for path in self.shard_paths(split):
            yield from shard_batches(path, batch_size, ["clip_id", "labels", "mel"], convert)

    def validate(self, split: str | None = None, checksums: str = "all") -> dict:
        """Check the shards of `split` (default: every split) against the manifest. By
        `checksums`: "all", each shard's size, rows and schema (stat and footer), each split's
        clip-id fingerprint and every shard's sha256 (a read of the store, a few files at a
        time); "none", the same without the hashes; "changed", the same for the shards not
        verified since they last changed and their splits (data/verified.py): a shard unchanged
        since its sha256 matched costs a stat, and its pages are checked by their checksums as
        they are read (store format 2; a format-1 store has none: every shard, as "all"). The
        shards hashed and found intact are recorded as verified (when the store can be written).

        Raises StoreError naming the first shard that does not match. Returns {shards, hashed,
        recorded (False when the record could not be written)}.
        """
        if checksums not in CHECKSUMS:
            raise ValueError(f"checksums={checksums!r}: one of {', '.join(CHECKSUMS)}")
        names = dict.fromkeys(p for n in ([split] if split else self.splits) for p in self._parts(n))
        entries = {n: self._entries(n) for n in names}
        if checksums == "changed" and self.format_version >= 2:
            entries = {n: verified.stale(self.root, e) for n, e in entries.items()}
        for name, shards in entries.items():
            if shards:
                self._check_split(name, shards)
        to_hash = [] if checksums == "none" else [e for shards in entries.values() for e in shards]
        for entry, got in zip(to_hash, file_hashes(self.root / e["file"] for e in to_hash)):
            if got != entry[HASH]:
                raise StoreError(f"{self.root / entry['file']}: content changed since it was written "
                                 f"({HASH} {got[:16]}..., manifest says {entry[HASH][:16]}...)")
        recorded = not to_hash or self.format_version < 2 or verified.record(self.root, to_hash, self._files())
        return {"shards": sum(len(self.split_info(n)["shards"]) for n in names), "hashed": len(to_hash),
                "recorded": recorded}

    def _entries(self, name: str) -> list[dict]:
        """The shard entries of split `name` (one that holds data); one without a hash is a
        StoreError naming the shard."""
        shards = self.split_info(name)["shards"]
        for shard in shards:
            if HASH not in shard:
                raise StoreError(f"{self.root / shard['file']}: the manifest's entry for this shard has no {HASH}")
        return list(shards)

    def _check_split(self, name: str, shards: list[dict]) -> None:
        """`shards` of split `name` checked from their sizes and footers (a few at a time), and
        the split's clip ids against its fingerprint."""
        expected = schema(self.frames, self.mels, self.format_version)
        map_shards(lambda s: check_shard(self.root / s["file"], s["rows"], expected, s.get("bytes")), shards)
        self._index_cache.pop(name, None)
        if fingerprint(self.clip_ids(name)) != self.split_info(name)["fingerprint"]:
            raise StoreError(f"{self.root / name}: clip ids do not match the manifest's fingerprint")

    def _files(self) -> set[str]:
        """Every shard file the manifest lists."""
        return {s["file"] for info in self.manifest["splits"].values() for s in info.get("shards", [])}

    def _parts(self, split: str) -> list[str]:
        """The splits that hold `split`'s data: itself, or the parts of a union."""
        info = self.split_info(split)
        return [p for part in info["union_of"] for p in self._parts(part)] if "union_of" in info else [split]

    # --- writing ----------------------------------------------------------------------
    def write_shard(self, name: str, clip_ids, labels, mel: np.ndarray, n_frames) -> dict:
        """Write one shard atomically from ids [n], label-index arrays [n], mel [n, frames, mels]
        and n_frames [n]; returns its manifest entry {file, rows, bytes, sha256} (sha256 of the
        bytes as written)."""
        table = pa.table({
            "clip_id": pa.array(list(clip_ids), pa.string()),
            "labels": labels_array(labels),
            SPECTROGRAM: mel_column(mel),
            "n_frames": pa.array(np.asarray(n_frames, np.int32)),
        }, schema=schema(self.frames, self.mels))
        return self.write_table(name, table)

    def write_table(self, name: str, table: pa.Table) -> dict:
        """Write a table of the store's schema (say rows `RowGroups.read` took from other
        shards) as one shard, atomically; returns its manifest entry as `write_shard` does,
        whose files it writes byte for byte. A table of another schema is a StoreError."""
        self.check_writable()
        path = self.root / name
        expected = schema(self.frames, self.mels)
        if not table.schema.remove_metadata().equals(expected):
            def line(sch):
                return ", ".join(f"{f.name}: {f.type}" for f in sch)
            raise StoreError(f"{path}: table schema ({line(table.schema)}) != the store's ({line(expected)})")
        # exactly the store's schema (a table read back names the list items "element", not
        # "item", which would change the Arrow schema stored in the file): a zero-copy cast
        digest = write_shard_file(path, table.replace_schema_metadata(None).cast(expected))
        return {"file": name, "rows": len(table), "bytes": path.stat().st_size, HASH: digest}

    def add_split(self, split: str, shards: list[dict], clip_ids, labels, order: str) -> dict:
        """Record a written split in the manifest (atomically); returns its entry."""
        return self.add_splits({split: (shards, clip_ids, labels, order)})[split]

    def add_splits(self, splits: dict[str, tuple], fingerprints: dict[str, str] | None = None) -> dict[str, dict]:
        """Record several written splits {name: (shards, clip_ids, labels, order)} in one atomic
        manifest write (a split moving clips to another is never seen half done); returns entries.
        `fingerprints`: {name: `fingerprint(clip_ids)`} where the caller computed it already."""
        self.check_writable()
        fingerprints = fingerprints or {}
        entries = {name: {"shards": shards, "clips": len(clip_ids), "order": order,
                          "class_counts": class_counts(labels, self.n_classes).tolist(),
                          "fingerprint": fingerprints.get(name) or fingerprint(clip_ids)}
                   for name, (shards, clip_ids, labels, order) in splits.items()}
        self._record(entries)
        return entries

    def _record(self, entries: dict[str, dict]) -> None:
        """Put split entries in the manifest as it is on disk now and write it atomically, under
        the manifest lock: a split another writer recorded meanwhile is kept. The entries'
        shards, hashed as they were written, are recorded as verified."""
        with manifest_lock(self.root):
            self.manifest = read_manifest(self.root / MANIFEST)
            self.manifest["splits"].update(entries)
            write_json(self.root / MANIFEST, self.manifest)
        shards = [s for e in entries.values() for s in e.get("shards", [])]
        if shards:
            verified.record(self.root, shards, self._files())
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
        self.check_writable()
        return SplitWriter(self, split, rows_per_shard, order)


def open_store(path: str | Path) -> Store:
    """Open a store directory written by `create_store` / `SplitWriter`."""
    return Store(path)
