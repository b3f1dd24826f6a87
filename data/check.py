"""Check a store against its manifest: what a sweep checks at its start, or everything.

    python -m data.check --store runs/audioset            # as a sweep starts: seconds
    python -m data.check --store runs/audioset --full     # every shard's sha256: a read of the store
    python -m data.check --store runs/audioset --split train --json

Without --full (what `python -m sweep.run` does before anything starts): each shard exists, has
the size, rows and schema the manifest records (its footer), each split's clip ids match its
fingerprint, and the sha256 of the shards changed since they were last verified (a write in
place, a replacement, a copy: data/verified.py) matches the manifest. An unchanged shard is
not hashed again: a page damaged under it is caught by the page's own checksum when it is read
(store format 2), naming the shard and the row group. A format-1 store has no page checksums:
every shard is hashed. --full hashes every shard. Shards found intact are recorded as verified.
Exit 2 with one line naming the first shard (and what) that does not match.
"""
from __future__ import annotations

import json
import sys
import time

from data.cli import add_store, parser, run
from data.store import open_store

__all__ = ["main"]


def main(argv=None) -> int:
    p = parser(prog="python -m data.check", description=__doc__)
    add_store(p, "the store to check")
    p.add_argument("--split", help="check this split only (default: every split)")
    p.add_argument("--full", action="store_true", help="hash every shard (default: those changed since verified)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    return run(_main, p, argv)


def _main(a) -> int:
    t0 = time.perf_counter()
    store = open_store(a.store)
    if note := store.format_note():
        print(f"note: {note}", file=sys.stderr)
    result = store.validate(a.split, checksums="all" if a.full else "changed")
    result = {"store": a.store, "format_version": store.format_version, **result,
              "seconds": round(time.perf_counter() - t0, 2)}
    if a.json:
        print(json.dumps(result))
    else:
        unchanged = result["shards"] - result["hashed"]
        print(f"{a.store}: {result['shards']} shards match the manifest ({result['hashed']} hashed, {unchanged} "
              f"unchanged since their hash last matched) in {result['seconds']} s")
    if not result["recorded"]:
        print(f"note: {a.store} cannot be written: its verified shards are not recorded, so the next check "
              "hashes them again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
