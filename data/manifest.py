"""The store's format: the manifest, the shards' schema and the clip-set fingerprint.

Layout of a store directory:
  manifest.json              format version, feature parameters, classes in index order, and
                             per split: shard files (rows, bytes, sha256 of the file's bytes,
                             mtime_ns as recorded), clip count, per-class counts, a fingerprint
                             of the clip-id set, the row order.
  <split>/part-00000.parquet one row a clip:
      clip_id  string
      labels   list<int16>                   class indices
      mel      fixed_size_binary[2 T F]      raw log-mel [frames, mels], zero-padded, float16
                                             little-endian bytes, frames first (format 2)
      n_frames int32                         frames before padding
  verified.json              (optional) shards whose sha256 was checked since they were last
                             changed: {file: [bytes, mtime_ns]} (data/check.py)
Format 2 writes the spectrogram column plain (no dictionary, no statistics) with a CRC-32 on
every Parquet page, which every reader verifies (data/shards.py). Format 1 (the previous
release) stored `mel` as arrow.fixed_shape_tensor<halffloat>[T, F] without page checksums; it
is read as it is, and `python -m data.convert` copies it to format 2.
The manifest is written to a temporary name and renamed, under a lock (`manifest_lock`): a
reader never sees a half-written file and two writers never lose each other's splits.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from data.cli import InputError

__all__ = ["FORMAT_VERSION", "READABLE_FORMATS", "MANIFEST", "LOCK", "HASH", "SPECTROGRAM", "StoreError",
           "schema", "fingerprint", "read_manifest", "write_json", "update_json", "manifest_lock", "convert_command"]

FORMAT_VERSION = 2          # what this release writes
READABLE_FORMATS = (1, 2)   # what it reads
MANIFEST = "manifest.json"
LOCK = ".manifest.lock"     # held (flock) by whoever reads the manifest to change it
MANIFEST_KEYS = ("format_version", "features", "classes", "splits")
HASH = "sha256"  # the shard entry's key for the content hash (hex digest of the file's bytes)
SPECTROGRAM = "mel"  # the spectrogram column


class StoreError(InputError):
    """A store that does not match its manifest; the message names the file."""


def schema(frames: int, mels: int, version: int = FORMAT_VERSION) -> pa.Schema:
    """The shards' Arrow schema for spectrograms of [frames, mels] in store format `version`."""
    if version == 1:
        mel = pa.field(SPECTROGRAM, pa.fixed_shape_tensor(pa.float16(), [frames, mels]))
    else:
        mel = pa.field(SPECTROGRAM, pa.binary(2 * frames * mels), nullable=False)
    return pa.schema([
        ("clip_id", pa.string()),
        ("labels", pa.list_(pa.int16())),
        mel,
        ("n_frames", pa.int32()),
    ])


def convert_command(root) -> str:
    """The command that copies the store at `root` to the current format, beside it."""
    return f"python -m data.convert --store {root}"


def fingerprint(clip_ids) -> str:
    """sha256 of the sorted clip ids, newline-joined: the identity of a split's clip set.
    A numpy str array is sorted by numpy (code-point order, as Python sorts str: same digest)."""
    if isinstance(clip_ids, np.ndarray) and clip_ids.dtype.kind == "U":
        ordered = np.sort(clip_ids, kind="stable").tolist()
    else:
        ordered = sorted(map(str, clip_ids))
    return "sha256:" + hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]


def read_manifest(path: Path) -> dict:
    """The manifest at `path`; a missing, undecodable or foreign file is a StoreError naming it."""
    if not path.exists():
        raise StoreError(f"{path}: no manifest (not a store directory)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise StoreError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path}: not a store manifest (a JSON {type(manifest).__name__}, not an object)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{path}: not a store manifest (no {', '.join(missing)})")
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise StoreError(f"{path}: format_version {manifest.get('format_version')!r}: this release reads "
                         f"formats {', '.join(map(str, READABLE_FORMATS))}")
    return manifest


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (a temporary file of this process, then rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def update_json(path: Path, update: Callable[[dict], dict]) -> dict:
    """Replace the JSON object at `path` ({} if absent) by `update(it)`, under the manifest lock
    of the store it is in (`path`'s directory); returns what was written."""
    with manifest_lock(path.parent):
        obj = update(json.loads(path.read_text()) if path.exists() else {})
        write_json(path, obj)
    return obj


@contextmanager
def manifest_lock(root: Path) -> Iterator[None]:
    """Hold the store's manifest lock (an exclusive flock on `root`/.manifest.lock) for a
    read-modify-write of the manifest: writers that run at once (two ingests into one store)
    take turns, each changing the manifest as the one before left it."""
    with open(Path(root) / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
