"""A labels-only store (mel [1, 1]) of the real AudioSet training labels, for the benchmarks
that need the full 2.06M clips but not their audio: built once, in rarest-label order, and
reused from `root` when its manifest exists and its shards have the row groups asked for."""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data.shards  # noqa: E402
from data.balance import rarest_label_order  # noqa: E402
from data.labels import read_class_index, read_segments  # noqa: E402
from data.manifest import MANIFEST, StoreError  # noqa: E402
from data.shards import ROW_GROUP_ROWS  # noqa: E402
from data.store import Store, create_store, open_store  # noqa: E402

AUDIOSET = Path(__file__).resolve().parents[2] / "shared" / "audioset"
SEGMENTS = ("balanced_train_segments.csv", "unbalanced_train_segments.csv.gz")


@contextmanager
def row_group_rows(rows: int):
    """Shards written inside the block have row groups of `rows` rows (`data.shards.ROW_GROUP_ROWS`,
    which `data.shards.write_shard_file` reads at each write; restored after)."""
    kept, data.shards.ROW_GROUP_ROWS = data.shards.ROW_GROUP_ROWS, rows
    try:
        yield
    finally:
        data.shards.ROW_GROUP_ROWS = kept


def check_row_groups(store: Store, split: str, rows: int) -> Store:
    """`store`, if the first shard of `split` is in row groups of `rows` rows (the last one may
    be shorter); else a StoreError naming the shard and the sizes found."""
    path = store.shard_paths(split)[0]
    meta = pq.read_metadata(path)
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    if set(sizes[:-1]) - {rows} or sizes[-1] > rows:
        raise StoreError(f"{path}: row groups of {sorted(set(sizes))} rows, not {rows}: "
                         "a store built with another row-group size (remove it or use another directory)")
    return store


def labels_only_store(root: Path, audioset: Path = AUDIOSET, rows_per_shard: int = 512,
                      group_rows: int = ROW_GROUP_ROWS) -> Store:
    """The training split (balanced + unbalanced segments) at `root`, one [1, 1] zero
    spectrogram per clip, in row groups of `group_rows` rows; built in a sibling directory and
    renamed, so a half-built store is never mistaken for a finished one. A store already at
    `root` is reused only if its row groups are `group_rows` rows (else StoreError)."""
    root = Path(root)
    if (root / MANIFEST).exists():
        return check_row_groups(open_store(root), "train", group_rows)
    t0 = time.perf_counter()
    index = read_class_index(audioset / "class_labels_indices.csv")
    segments = read_segments([audioset / name for name in SEGMENTS], index, strict=False)[0]
    labels = segments.labels
    order = rarest_label_order(labels, len(index))
    building = root.with_name(root.name + f".building-{os.getpid()}")
    store = create_store(building, [{"index": i, "mid": m, "name": n}
                                    for i, (m, n) in enumerate(zip(index.mids, index.names))],
                         {"frames": 1, "mels": 1, "labels_only": True})
    shards, mel = [], np.zeros((rows_per_shard, 1, 1), np.float16)
    with row_group_rows(group_rows):
        for i, start in enumerate(range(0, len(order), rows_per_shard)):
            rows = order[start:start + rows_per_shard]
            shards.append(store.write_shard(f"train/part-{i:05d}.parquet", segments.clip_ids[rows],
                                            [labels[j] for j in rows], mel[:len(rows)], np.ones(len(rows))))
    store.add_split("train", shards, segments.clip_ids[order], labels.take(order), "rarest_label")
    if (root / MANIFEST).exists():  # another run built it meanwhile
        shutil.rmtree(building)
    else:
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
    print(f"built {root}: {len(order):,} clips, {len(shards)} shards of {group_rows}-row groups "
          f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return check_row_groups(open_store(root), "train", group_rows)


def store_path(directory: Path, rows_per_shard: int = 512, group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Where the benchmarks cache the labels-only store of these shard and row-group sizes."""
    return Path(directory) / f"audioset-train-labels-store-{rows_per_shard}-rg{group_rows}"
