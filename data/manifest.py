"""The store's format: the manifest, the shards' schema and the clip-set fingerprint.

Layout of a store directory:
  manifest.json              format version, feature parameters, classes in index order, and
                             per split: shard files (rows, bytes, sha256 of the file's bytes),
                             clip count, per-class counts, a fingerprint of the clip-id set, the
                             row order.
  <split>/part-00000.parquet one row a clip:
      clip_id  string
      labels   list<int16>                               class indices
      mel      arrow.fixed_shape_tensor<halffloat>[T, F] raw log-mel [frames, mels], zero-padded
      n_frames int32                                     frames before padding
The manifest is written to a temporary name and renamed: a reader never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = ["FORMAT_VERSION", "MANIFEST", "HASH", "StoreError", "schema", "fingerprint",
           "read_manifest", "write_json"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("format_version", "features", "classes", "splits")
HASH = "sha256"  # the shard entry's key for the content hash (hex digest of the file's bytes)


class StoreError(ValueError):
    """A store that does not match its manifest; the message names the file."""


def schema(frames: int, mels: int) -> pa.Schema:
    """The shards' Arrow schema for spectrograms of [frames, mels]."""
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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
    return manifest


def write_json(path: Path, obj: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
