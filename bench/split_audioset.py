"""Benchmark `data.split` carving the validation split out of the AudioSet training split.

    python bench/split_audioset.py                         # store cached under /tmp/split_bench
    python bench/split_audioset.py --cli --check           # also the CLI end to end; verify the result

Builds once (cached under --dir) a labels-only store (mel [1, 1]) of the 2,063,949 published
AudioSet training clips (balanced + unbalanced segment CSVs, read in place from --audioset with
`data.labels`), in rarest-label order, 512 rows a shard as data/ingest.py writes a training
split. Each run carves from a fresh copy of it (the copy is not timed) and prints JSON:
- seconds: load (the split's clip ids and labels), select (choosing the validation clips),
  write (everything after: the new order, both splits' shards, the manifest, deleting the old
  shards) and total, of `data.split.carve` in this process, and cpu (CPU seconds, all threads:
  on shared cores wall time follows the other load, CPU time much less);
- cli_seconds, cli_cpu_seconds (--cli): `python -m data.split --store COPY --from train --to
  valid` end to end, interpreter start included, on a second fresh copy;
- clips, imbalance_ratio, gini: per split, as the command prints them;
- check (--check): the copy validated (every shard's sha256 recorded and matching), the splits
  disjoint and together the original clips, the training split in ascending rarest-label order
  against its new class counts and in row groups of data.shards.ROW_GROUP_ROWS rows, no old
  shard left.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")   # no progress bars in the output (the CLI run too)

import data.split as split_mod  # noqa: E402
from bench.audioset_labels import AUDIOSET, labels_only_store  # noqa: E402
from data.balance import class_counts, rarest_label_count  # noqa: E402
from data.shards import ROW_GROUP_ROWS, close_shards  # noqa: E402
from data.store import open_store  # noqa: E402



def build(root: Path, audioset: Path, rows_per_shard: int) -> None:
    """The labels-only training store at `root` (bench/audioset_labels.py; reused when built
    with the same row-group size)."""
    labels_only_store(root, audioset, rows_per_shard)


def fresh_copy(source: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    return dest


def timed_carve(root: Path, cfg: split_mod.SplitConfig) -> tuple[dict, dict]:
    """carve() on the store at `root`: (its result, {load, select, write, total, cpu} seconds;
    cpu: of all the process's threads, the part of the cost that other load does not change)."""
    marks = {}
    select = split_mod.select_valid

    def timed_select(*args, **kwargs):
        marks["select_start"] = time.perf_counter()
        try:
            return select(*args, **kwargs)
        finally:
            marks["select_end"] = time.perf_counter()

    close_shards()
    split_mod.select_valid = timed_select
    try:
        t0, cpu = time.perf_counter(), time.process_time()
        out = split_mod.carve(open_store(root), cfg)
        t1, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        split_mod.select_valid = select
    seconds = {"load": marks["select_start"] - t0, "select": marks["select_end"] - marks["select_start"],
               "write": t1 - marks["select_end"], "total": t1 - t0, "cpu": cpu}
    return out, {k: round(v, 2) for k, v in seconds.items()}


def check(root: Path, original_ids: np.ndarray, cfg: split_mod.SplitConfig) -> dict:
    """The carve's guarantees, verified on the result."""
    s = open_store(root)
    hashed = s.validate()                               # rows, schema, fingerprints, sha256
    assert hashed["hashed"] == hashed["shards"], hashed
    train, valid = s.clip_ids(cfg.source), s.clip_ids(cfg.target)
    assert len(np.intersect1d(train, valid)) == 0, "splits overlap"
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.sort(original_ids)), "clips lost"
    labels = s.labels(cfg.source)
    r = rarest_label_count(labels, class_counts(labels, s.n_classes))
    assert (np.diff(r) >= 0).all(), "training split not in ascending rarest-label order"
    assert s.split_info(cfg.source)["order"] == "rarest_label"
    assert np.diff(s.row_groups(cfg.source).start).max() == ROW_GROUP_ROWS
    listed = set(s.shard_paths(cfg.source)) | set(s.shard_paths(cfg.target))
    leftovers = [p for p in root.rglob("*.parquet") if str(p) not in listed]
    assert not leftovers, f"old shards left: {leftovers[:3]}"
    return {"validated": True, "sha256_verified": hashed["hashed"], "disjoint": True,
            "rarest_label_order": True, "shards": len(listed)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/tmp/split_bench"),
                   help="cache of the built store and the working copies (default %(default)s)")
    p.add_argument("--audioset", type=Path, default=AUDIOSET,
                   help="folder of the AudioSet label files (default %(default)s)")
    p.add_argument("--rows-per-shard", type=int, default=512, help="of the built store (default %(default)s)")
    p.add_argument("--min-per-class", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cli", action="store_true", help="also time the command end to end")
    p.add_argument("--check", action="store_true", help="verify the carved store")
    a = p.parse_args(argv)
    base = a.dir / f"store-{a.rows_per_shard}-rg{ROW_GROUP_ROWS}"  # a store of other row groups is not reused
    a.dir.mkdir(parents=True, exist_ok=True)
    build(base, a.audioset, a.rows_per_shard)
    cfg = split_mod.SplitConfig(min_per_class=a.min_per_class, seed=a.seed)
    work = a.dir / f"run-{os.getpid()}"
    result = {"clips_before": int(open_store(base).split_info("train")["clips"])}
    try:
        out, seconds = timed_carve(fresh_copy(base, work), cfg)
        result.update(seconds=seconds, clips=out["clips"], imbalance_ratio=out["imbalance_ratio"],
                      gini=out["gini"])
        if a.check:
            result["check"] = check(work, open_store(base).clip_ids("train"), cfg)
        if a.cli:
            fresh_copy(base, work)
            t0 = time.perf_counter()
            before = os.times()
            subprocess.run([sys.executable, "-m", "data.split", "--store", str(work), "--from", cfg.source,
                            "--to", cfg.target, "--min-per-class", str(a.min_per_class),
                            "--seed", str(a.seed), "--json"],
                           cwd=Path(__file__).resolve().parents[1], check=True, stdout=subprocess.DEVNULL)
            result["cli_seconds"] = round(time.perf_counter() - t0, 2)
            after = os.times()
            result["cli_cpu_seconds"] = round(after.children_user + after.children_system
                                              - before.children_user - before.children_system, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
