"""Benchmark the oversampling stream against a bare Parquet scan and the usual PyTorch sampler.

    python bench/stream.py                  # ~1 GB store at [1024, 128] (and 4x for memory)
    python bench/stream.py --clips 400      # quick

Prints JSON: examples/s of `oversampled_dataset` at beta 0, 0.5, 1.0 consumed as torch
batches; examples/s of a bare pyarrow scan of the same shards in the same run (the ceiling)
and the ratio; duplicates per batch against a random permutation; peak memory increase
(median of fresh-Ray runs) while streaming a fixed number of examples from the store, from a
4x larger one, and twice as many examples from the store; and
PyTorch DataLoader + WeightedRandomSampler over the same Parquet rows.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from data.stream import oversampled_dataset, plan_stream, sampler_audit
from data.synth import SynthConfig, make_synthetic_store


def used_memory() -> int:
    """Bytes in use system-wide (MemTotal - MemAvailable, Linux)."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


class PeakMemory:
    """System-wide used memory increase (bytes) while the block runs, sampled every 50 ms
    (the RSS sum over Ray processes double-counts shared object-store pages)."""

    def __enter__(self):
        self.base = self.peak = used_memory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, used_memory())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.increase = self.peak - self.base


def start_ray() -> None:
    import ray
    ray.init(address="local", include_dashboard=True, log_to_driver=False, configure_logging=False)


def peak_memory(store_dir, batch: int, limit: int) -> int:
    """Peak used-memory increase (bytes) of streaming `limit` examples at beta = 1, in a fresh
    Ray instance (its idle daemons excluded) so pages a previous measurement left in the
    object store do not hide growth."""
    import ray
    start_ray()
    with PeakMemory() as m:
        stream_rate(store_dir, 1.0, batch, limit)
    ray.shutdown()
    return m.increase


def stream_rate(store_dir, beta: float, batch: int, limit: int | None) -> float:
    ds = oversampled_dataset(store_dir, "train", beta, seed=0, examples=limit)
    n, t0 = 0, time.perf_counter()
    for b in ds.iter_torch_batches(batch_size=batch, collate_fn=_MelOnly()):
        n += len(b)
    return n / (time.perf_counter() - t0)


class _MelOnly:
    def __call__(self, batch):
        return torch.from_numpy(batch["mel"])


def scan_rate(store, batch: int) -> float:
    n, t0 = 0, time.perf_counter()
    for path in store.shard_paths("train"):
        for rb in pq.ParquetFile(path).iter_batches(batch, columns=["mel", "labels"]):
            n += len(torch.from_numpy(rb.column("mel").to_numpy_ndarray()))
    return n / (time.perf_counter() - t0)


class ParquetRows(torch.utils.data.Dataset):
    """Random access to stored rows, the way a map-style Dataset reads them."""

    def __init__(self, shards):
        self.index = [(p, g, r) for p in shards for g in range(pq.ParquetFile(p).num_row_groups)
                      for r in range(pq.ParquetFile(p).metadata.row_group(g).num_rows)]

    def __len__(self):
        return len(self.index)

    @staticmethod
    @lru_cache(maxsize=8)
    def _group(path, g):
        return pq.ParquetFile(path).read_row_group(g, columns=["mel"])["mel"].combine_chunks().to_numpy_ndarray()

    def __getitem__(self, i):
        path, g, r = self.index[i]
        return torch.from_numpy(self._group(path, g)[r].copy())


def weighted_sampler_rate(store, beta: float, batch: int, samples: int) -> float:
    factors = plan_stream(store, "train", beta, seed=0).factors
    sampler = torch.utils.data.WeightedRandomSampler(factors.astype(np.float64), samples, replacement=True)
    loader = torch.utils.data.DataLoader(ParquetRows(store.shard_paths("train")), batch_size=batch,
                                         sampler=sampler, num_workers=1)
    n, t0 = 0, time.perf_counter()
    for b in loader:
        n += len(b)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=4000, help="training clips (4000 x 256 KiB = 1 GB)")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mels", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit", type=int, default=8000, help="examples streamed per measurement")
    p.add_argument("--memory-repeats", type=int, default=3, help="fresh-Ray memory runs per size (median)")
    p.add_argument("--sampler-samples", type=int, default=1000, help="WeightedRandomSampler draws")
    p.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir)")
    a = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    start_ray()
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-stream-"))
    stores = {}
    for scale in (1, 4):
        cfg = SynthConfig(clips=a.clips * scale, classes=24, frames=a.frames, mels=a.mels, seed=scale)
        path = root / f"x{scale}"
        stores[scale] = make_synthetic_store(path, cfg) if not (path / "manifest.json").exists() else \
            __import__("data.store", fromlist=["open_store"]).open_store(path)
    store = stores[1]
    row_mb = a.frames * a.mels * 2 / 2**20
    out = {"clips": a.clips, "shape": [a.frames, a.mels], "row_MiB": row_mb, "batch": a.batch,
           "cpus": os.cpu_count(), "store_GB": sum(s["bytes"] for s in store.split_info("train")["shards"]) / 1e9}
    out["scan_examples_per_s"] = max(scan_rate(store, a.batch) for _ in range(2))  # warm cache
    out["stream"] = {}
    for beta in (0.0, 0.5, 1.0):
        rate = stream_rate(store.root, beta, a.batch, a.limit)
        audit = sampler_audit(store, "train", beta, batch_size=a.batch)
        out["stream"][str(beta)] = {
            "examples_per_s": rate, "MB_per_s": rate * row_mb * 1.048576,
            "ratio_to_scan": rate / out["scan_examples_per_s"],
            "duplicates_per_batch": audit["duplicates_per_batch"],
            "duplicates_per_batch_ideal": audit["duplicates_per_batch_ideal"],
            "epoch_length": audit["epoch_length"]}
    ray.shutdown()
    cases = {"x1": (stores[1], a.limit), "x4": (stores[4], a.limit), "x1_2x_examples": (stores[1], 2 * a.limit)}
    runs = {name: [peak_memory(s.root, a.batch, n) / 1e9 for _ in range(a.memory_repeats)]
            for name, (s, n) in cases.items()}
    memory = {f"{name}_GB_runs": r for name, r in runs.items()}
    memory.update({f"{name}_GB_median": float(np.median(r)) for name, r in runs.items()})
    memory["ratio_4x_data"] = memory["x4_GB_median"] / max(memory["x1_GB_median"], 1e-9)
    memory["ratio_2x_examples"] = memory["x1_2x_examples_GB_median"] / max(memory["x1_GB_median"], 1e-9)
    out["peak_memory_increase"] = memory
    sampler = weighted_sampler_rate(store, 1.0, a.batch, a.sampler_samples)
    out["weighted_random_sampler"] = {"examples_per_s": sampler,
                                      "stream_beta1_over_sampler": out["stream"]["1.0"]["examples_per_s"] / sampler}
    rate = min(v["examples_per_s"] for v in out["stream"].values())  # the slowest beta
    out["cpu_cores_per_h100"] = {"h100_examples_per_s": 460,
                                 "cores_needed": round(460 / (rate / max(1, os.cpu_count())), 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
