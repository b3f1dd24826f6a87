"""The record of shards whose content was checked: STORE/verified.json, {file: [bytes, mtime_ns,
inode, sha256]} of each shard as it was when its sha256 last matched the manifest's (hashed
from its bytes as they were written, or read back and hashed by a check).

A shard whose size, modification time, inode and manifest hash are still those recorded has
not been written since (a write in place, a replacement or a copy changes one of them), so a
sweep start need not hash it again: the damage it can no longer see (bits that rot under an
unchanged file) is what format 2's page checksums catch, in the page that is read. The record is
a cache: deleting it only makes the next check hash every shard again. It is changed under the
manifest lock; a store the user cannot write keeps no record (every check hashes every shard).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from data.manifest import HASH, manifest_lock, write_json

__all__ = ["VERIFIED", "stale", "record"]

VERIFIED = "verified.json"


def _stamp(path: Path, sha256: str) -> list | None:
    """[bytes, mtime_ns, inode, sha256] of the file at `path` now (None if it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, sha256]


def _read(root: Path) -> dict:
    """The record ({} when absent or unreadable: a cache, never a reason to fail)."""
    try:
        record = json.loads((root / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stale(root: Path, entries: list[dict]) -> list[dict]:
    """The manifest's shard entries {file, sha256, ...} whose file is not as recorded."""
    record = _read(root)
    return [e for e in entries if record.get(e["file"]) != _stamp(root / e["file"], e[HASH])]


def record(root: Path, entries: list[dict], listed: set[str]) -> bool:
    """Record the shards of `entries` as checked, as they are now, and forget files the manifest
    no longer lists (`listed`); False if the store cannot be written (read-only)."""
    try:
        with manifest_lock(root):
            kept = {f: s for f, s in _read(root).items() if f in listed}
            kept.update({e["file"]: _stamp(root / e["file"], e[HASH]) for e in entries})
            write_json(root / VERIFIED, kept)
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno == errno.EROFS:
            return False
        raise
    return True
