"""Copy a store to another store format, beside it; the store copied is never changed.

    python -m data.convert --store runs/audioset                 # -> runs/audioset-format2
    python -m data.convert --store runs/audioset --out /big/audioset-v2
    python -m data.convert --store runs/audioset-format2 --format 1   # for the previous release

Each shard is read once: its bytes are hashed and compared with the manifest's sha256 (a
damaged store is not copied), decoded, and written again with the same rows in the same order
under the same file name, in the new format (data/manifest.py). The manifest is copied with
the new format version and the new shards' sizes and hashes: same classes, features, splits,
clip ids, counts and fingerprints, which the copy is checked against (rows, schema, clip ids)
before it is renamed into place. The copy is built in a sibling directory: an interrupted
conversion leaves nothing at --out. The ingest report, if any, is copied; ingest journals are
not (a resumed ingest into the copy computes its shards again).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data import verified
from data.cli import add_store, parser, run
from data.manifest import (FORMAT_VERSION, HASH, MANIFEST, READABLE_FORMATS, SPECTROGRAM, StoreError, schema,
                           write_json)
from data.shards import map_shards, mel_array, mel_column, write_shard_file
from data.store import Store, check_new_store, open_store

__all__ = ["convert", "default_out", "main"]

REPORT = "ingest_report.json"  # data/ingest.py's report: copied with the store


def default_out(src: Path, version: int) -> Path:
    """Where a copy of `src` in format `version` goes by default: beside it."""
    return src.with_name(f"{src.name}-format{version}")


def _copy_shard(src: Store, building: Path, entry: dict, version: int) -> dict:
    """The shard of `entry` read once (hashed against the manifest, decoded) and written to
    `building` under the same name in format `version`; returns its new manifest entry."""
    path = src.root / entry["file"]
    data = path.read_bytes()
    if (got := hashlib.sha256(data).hexdigest()) != entry[HASH]:
        raise StoreError(f"{path}: content changed since it was written ({HASH} {got[:16]}..., manifest says "
                         f"{entry[HASH][:16]}...): not copied")
    table = pq.read_table(pa.BufferReader(data))
    mel = mel_column(mel_array(table[SPECTROGRAM], src.frames, src.mels), version)
    target = schema(src.frames, src.mels, version)
    table = table.set_column(table.schema.get_field_index(SPECTROGRAM), target.field(SPECTROGRAM), mel)
    out = building / entry["file"]
    digest = write_shard_file(out, table.replace_schema_metadata(None).cast(target), version)
    return {**entry, "bytes": out.stat().st_size, HASH: digest}


def convert(src_dir: str | Path, out_dir: str | Path | None = None, version: int = FORMAT_VERSION) -> Store:
    """Copy the store at `src_dir` to a new store at `out_dir` (default `default_out`) in store
    format `version` (module docstring); returns the copy."""
    src = open_store(src_dir)
    out = Path(out_dir) if out_dir else default_out(src.root, version)
    if version not in READABLE_FORMATS:
        raise StoreError(f"--format {version}: one of {', '.join(map(str, READABLE_FORMATS))}")
    if src.format_version == version:
        raise StoreError(f"{src.root}: already a format-{version} store; nothing to convert")
    check_new_store(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{out.name}.building-", dir=out.parent))  # new: only ours is removed
    try:
        splits = {name: dict(info) for name, info in src.manifest["splits"].items()}
        for info in splits.values():
            if "shards" in info:
                info["shards"] = map_shards(lambda e: _copy_shard(src, building, e, version), info["shards"])
        write_json(building / MANIFEST, {**src.manifest, "format_version": version, "splits": splits})
        if (src.root / REPORT).is_file():
            shutil.copyfile(src.root / REPORT, building / REPORT)
        copy = open_store(building)
        copy.validate(checksums="none")  # rows, schema, sizes and every split's clip ids
        if version >= 2:
            shards = [s for info in splits.values() for s in info.get("shards", [])]
            verified.record(building, shards, {s["file"] for s in shards})
        building.replace(out)  # `out` is an empty directory or absent
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return open_store(out)


def main(argv=None) -> int:
    p = parser(prog="python -m data.convert", description=__doc__)
    add_store(p, "the store to copy (left as it is)")
    p.add_argument("--out", metavar="DIR", help="the new store (a new or empty directory; default: "
                                                "STORE-format<N> beside the store)")
    p.add_argument("--format", type=int, default=FORMAT_VERSION, choices=READABLE_FORMATS,
                   help="store format of the copy (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    return run(_main, p, argv)


def _main(a) -> int:
    copy = convert(a.store, a.out, a.format)
    shards = [s for info in copy.manifest["splits"].values() for s in info.get("shards", [])]
    result = {"store": str(Path(a.store)), "copy": str(copy.root), "format_version": copy.format_version,
              "shards": len(shards), "bytes": sum(s["bytes"] for s in shards),
              "fingerprints": {s: copy.fingerprint(s) for s in copy.splits}}
    print(json.dumps(result) if a.json else
          f"{copy.root}: format-{copy.format_version} copy of {a.store} ({len(shards)} shards, "
          f"{result['bytes'] / 1e9:.2f} GB), same clip ids and fingerprints; {a.store} is unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
