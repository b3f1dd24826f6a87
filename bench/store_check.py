"""Time the sweep-start check of a store against the full sha256 pass the previous release ran.

    python bench/store_check.py                     # a 4 GB store of [1024, 128] clips in a temp dir
    python bench/store_check.py --gb 1 --rounds 5 --dir /tmp/bench-check
    python bench/store_check.py --audioset-labels /tmp/bench-check   # also at AudioSet's 2.06M clips

Writes (or reuses) a store of about --gb GB: one train split of [frames, mels] float16 noise
with random labels, in shards of 1,024 clips, through the store's own writer (format 2, every
shard recorded as verified as it is written). Then, --rounds times in turn:
- `full_sha256`: `Store.validate(checksums="all")`, what every sweep start ran before: sizes,
  footers, fingerprints and the sha256 of every shard;
- `sweep_start`: `Store.validate(checksums="changed")`, what a sweep start runs now: the same
  without hashing the shards unchanged since they were verified;
- `sweep_start_one_changed`: the same after one shard was rewritten in place (it is hashed).
Medians and the ratio to `full_sha256` of the same round. The store is read from the page
cache here (it was just written or read): on a cold disk the full pass is slower still.
Then what the cheap check leaves to the page checksums: a byte flipped inside a spectrogram
page with the file's times put back passes `sweep_start` and is named (shard and row group)
by the first read of that row group; flipped in place, `sweep_start` names the shard.
--audioset-labels DIR also times `sweep_start` and the check without hashes ("none": every
footer and clip id) on the 2,063,949 AudioSet training clips in 2,016 shards of 1,024 clips
(bench/audioset_labels.py's labels-only store, built once in DIR): the sweep start's cost on a
540 GB AudioSet store but for its spectrograms. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audioset_labels import labels_only_store, store_path  # noqa: E402
from data.manifest import MANIFEST, SPECTROGRAM, StoreError  # noqa: E402
from data.shards import RowGroups, close_shards  # noqa: E402
from data.store import Store, create_store, open_store  # noqa: E402

CLASSES = 32
SHARD_CLIPS = 1024


def noise_store(root: Path, gb: float, frames: int, mels: int) -> Store:
    """A store of about `gb` GB of float16 noise spectrograms (reused when it exists)."""
    if (root / MANIFEST).exists():
        return open_store(root)
    store = create_store(root, [{"index": k, "mid": f"/m/{k}", "name": f"c{k}"} for k in range(CLASSES)],
                         {"frames": frames, "mels": mels})
    clips = int(gb * 1e9 // (2 * frames * mels))
    rng = np.random.default_rng(0)
    writer = store.writer("train", rows_per_shard=SHARD_CLIPS)
    for first in range(0, clips, SHARD_CLIPS):
        n = min(SHARD_CLIPS, clips - first)
        mel = rng.standard_normal((n, frames, mels), dtype=np.float32).astype(np.float16)
        labels = [rng.choice(CLASSES, size=rng.integers(1, 4), replace=False) for _ in range(n)]
        writer.write([f"clip{first + i:08d}" for i in range(n)], labels, mel, np.full(n, frames))
    writer.close()
    return open_store(root)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rewrite_in_place(path: str, keep_times: bool, offset: int = 0, data: bytes | None = None) -> None:
    """Write `data` at `offset` in place (default: the byte there, as it is); with `keep_times`
    the file's times are put back."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(1) if data is None else data
        f.seek(offset)
        f.write(data)
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def one_round(root: Path) -> dict:
    """The three checks' seconds, each on a fresh Store object."""
    out = {"full_sha256": timed(lambda: open_store(root).validate(checksums="all")),
           "sweep_start": timed(lambda: open_store(root).validate(checksums="changed"))}
    rewrite_in_place(open_store(root).shard_paths("train")[0], keep_times=False)  # same bytes, a new mtime
    out["sweep_start_one_changed"] = timed(lambda: open_store(root).validate(checksums="changed"))
    return out


def _error(fn) -> str | None:
    """The StoreError fn() raises, as text (None if it raises none)."""
    try:
        fn()
    except StoreError as e:
        return str(e)
    return None


def damage_is_caught(root: Path) -> dict:
    """A byte flipped in the spectrogram page of row group 1 of the first shard: with the
    file's times put back (not seen by the cheap check, named by the first read of the group),
    then written again in place (named by the cheap check). The shard is restored after."""
    store = open_store(root)
    shard = store.shard_paths("train")[0]
    rg = pq.read_metadata(shard).row_group(1)
    col = next(c for c in map(rg.column, range(rg.num_columns)) if c.path_in_schema == SPECTROGRAM)
    offset = col.data_page_offset + col.total_compressed_size - 1000
    original = Path(shard).read_bytes()[offset:offset + 1]
    damaged = bytes([original[0] ^ 0x10])
    rewrite_in_place(shard, True, offset, damaged)
    out = {"times_kept_sweep_start_hashed": open_store(root).validate(checksums="changed")["hashed"]}
    close_shards()
    out["times_kept_read_error"] = _error(lambda: RowGroups.of([shard]).read(np.array([rg.num_rows + 1])))
    rewrite_in_place(shard, False, offset, damaged)  # the same bytes, written again: a new mtime
    out["in_place_sweep_start_error"] = _error(lambda: open_store(root).validate(checksums="changed"))
    rewrite_in_place(shard, False, offset, original)
    open_store(root).validate(checksums="changed")  # intact again, recorded
    return out


def audioset_check(directory: Path) -> dict:
    """Seconds of the sweep-start check and of the check without hashes on the labels-only
    AudioSet training store (shards of 1,024 clips, as ingest writes them)."""
    store = labels_only_store(store_path(directory, 1024), rows_per_shard=1024)
    return {"clips": store.split_info("train")["clips"], "shards": len(store.shard_paths("train")),
            **{f"{mode}_s": timed(lambda: open_store(store.root).validate(checksums=mode))
               for mode in ("changed", "none")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=4.0, help="store size (default %(default)s GB)")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mels", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to build the store (default: a temp dir)")
    p.add_argument("--audioset-labels", metavar="DIR", help="also time the check on AudioSet's training clips")
    a = p.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-check-")) / "store"
    t0 = time.perf_counter()
    store = noise_store(root, a.gb, a.frames, a.mels)
    built = time.perf_counter() - t0
    rounds = [one_round(root) for _ in range(a.rounds)]
    seconds = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    ratios = {k: float(np.median([r[k] / r["full_sha256"] for r in rounds])) for k in rounds[0]}
    shards = store.split_info("train")["shards"]
    print(json.dumps({
        "store": str(root), "GB": sum(s["bytes"] for s in shards) / 1e9, "shards": len(shards),
        "clips": store.split_info("train")["clips"], "build_s": round(built, 1), "rounds": a.rounds,
        "load_average": os.getloadavg(), "seconds": seconds, "ratio_to_full_sha256": ratios,
        "runs": rounds, "damage": damage_is_caught(root),
        "audioset_labels": a.audioset_labels and audioset_check(Path(a.audioset_labels))}, indent=1))


if __name__ == "__main__":
    main()
