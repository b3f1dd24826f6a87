"""A labels-only store (mel [1, 1]) of the real AudioSet training labels, for the benchmarks
that need the full 2.06M clips but not their audio: built once, in rarest-label order, and
reused from `root` when its manifest exists."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.balance import rarest_label_order  # noqa: E402
from data.labels import read_class_index, read_segments  # noqa: E402
from data.store import MANIFEST, Store, create_store, open_store  # noqa: E402

AUDIOSET = Path(__file__).resolve().parents[2] / "shared" / "audioset"
SEGMENTS = ("balanced_train_segments.csv", "unbalanced_train_segments.csv.gz")


def labels_only_store(root: Path, audioset: Path = AUDIOSET, rows_per_shard: int = 512) -> Store:
    """The training split (balanced + unbalanced segments) at `root`, one [1, 1] zero
    spectrogram per clip; built in a sibling directory and renamed, so a half-built store is
    never mistaken for a finished one."""
    root = Path(root)
    if (root / MANIFEST).exists():
        return open_store(root)
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
    print(f"built {root}: {len(order):,} clips, {len(shards)} shards in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return open_store(root)
