"""Benchmark the oversampling stream against a bare Parquet scan and the usual PyTorch sampler.

    python bench/stream.py                  # ~1 GB stores at [1024, 128] (and 4x for memory)
    python bench/stream.py --clips 1000 --settings 16:32 4:128   # the row-group size alone: 512-row blocks
    python bench/stream.py --frames 256 --clips 6000 --limit 12000   # the defaults' 2,048-row blocks, smaller rows

For each --settings ROWS:UNITS (by default the AudioSet config before, 16-row groups in blocks
of 32 units, and now, data.shards.ROW_GROUP_ROWS and `default_units_per_block(128)` for 8
workers x 128) the same synthetic store is written in row groups of ROWS rows and streamed in
blocks of UNITS units. Prints JSON, per setting: examples/s of `oversampled_dataset` at beta
0, 0.5, 1.0 consumed as torch batches; examples/s of a bare pyarrow scan of the same shards
in the same run (the ceiling) and the ratio; duplicates per batch against a random
permutation; peak memory increase (median of fresh-Ray runs) while streaming a fixed number of
examples from the store, from a 4x larger one, and twice as many examples from the store.
The scans and streams of all settings are measured in turn, --rounds times (medians; on a
shared machine the load changes between settings, so `last_over_first` takes the ratios of
the last setting to the first round by round, then their median). Then PyTorch DataLoader +
WeightedRandomSampler over the last setting's Parquet rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audioset_labels import check_row_groups, row_group_rows  # noqa: E402
from data.cli import add_list  # noqa: E402
from data.shards import ROW_GROUP_ROWS  # noqa: E402
from data.store import open_store  # noqa: E402
from data.stream import default_units_per_block, oversampled_dataset, plan_stream, sampler_audit  # noqa: E402
from data.synth import SynthConfig, make_synthetic_store  # noqa: E402


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


def peak_memory(store_dir, batch: int, limit: int, units_per_block: int) -> int:
    """Peak used-memory increase (bytes) of streaming `limit` examples at beta = 1, in a fresh
    Ray instance (its idle daemons excluded) so pages a previous measurement left in the
    object store do not hide growth."""
    import ray
    start_ray()
    with PeakMemory() as m:
        stream_rate(store_dir, 1.0, batch, limit, units_per_block)
    ray.shutdown()
    return m.increase


def stream_rate(store_dir, beta: float, batch: int, limit: int | None, units_per_block: int) -> float:
    ds = oversampled_dataset(store_dir, "train", beta, seed=0, examples=limit, units_per_block=units_per_block)
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


def synthetic_store(path: Path, cfg: SynthConfig, group_rows: int):
    """The synthetic store at `path`, written in row groups of `group_rows` rows (reused when
    built with that size)."""
    if (path / "manifest.json").exists():
        return check_row_groups(open_store(path), "train", group_rows)
    with row_group_rows(group_rows):
        return make_synthetic_store(path, cfg)


def peak_memories(stores: dict, a, units: int) -> dict:
    """Peak memory increase (GB) streaming from the x1 and x4 stores, and twice the examples
    from x1 (medians of --memory-repeats fresh-Ray runs), and the ratios."""
    cases = {"x1": (stores[1], a.limit), "x4": (stores[4], a.limit), "x1_2x_examples": (stores[1], 2 * a.limit)}
    runs = {name: [peak_memory(s.root, a.batch, n, units) / 1e9 for _ in range(a.memory_repeats)]
            for name, (s, n) in cases.items()}
    memory = {f"{name}_GB_runs": r for name, r in runs.items()}
    memory.update({f"{name}_GB_median": float(np.median(r)) for name, r in runs.items()})
    memory["ratio_4x_data"] = memory["x4_GB_median"] / max(memory["x1_GB_median"], 1e-9)
    memory["ratio_2x_examples"] = memory["x1_2x_examples_GB_median"] / max(memory["x1_GB_median"], 1e-9)
    return memory


BETAS = ("0.0", "0.5", "1.0")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=4000, help="training clips (4000 x 256 KiB = 1 GB)")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mels", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit", type=int, default=8000, help="examples streamed per measurement")
    p.add_argument("--rounds", type=int, default=1,
                   help="scan + stream measurements of every setting in turn (medians; ratios per round)")
    p.add_argument("--memory-repeats", type=int, default=3, help="fresh-Ray memory runs per size (median)")
    p.add_argument("--sampler-samples", type=int, default=1000, help="WeightedRandomSampler draws")
    p.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir)")
    add_list(p, "--settings", default=["16:32", f"{ROW_GROUP_ROWS}:{default_units_per_block(128)}"],
             help="ROWS:UNITS: rows a row group, units a block")
    return p.parse_args()


def main() -> None:
    a = _args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-stream-"))
    row_mb = a.frames * a.mels * 2 / 2**20
    out = {"clips": a.clips, "shape": [a.frames, a.mels], "row_MiB": row_mb, "batch": a.batch,
           "cpus": os.cpu_count(), "rounds": a.rounds, "load_average": os.getloadavg(), "settings": {}}
    settings = {name: tuple(int(x) for x in name.split(":")) for name in a.settings}
    stores = {name: {scale: synthetic_store(root / f"x{scale}-rg{rows}", SynthConfig(
        clips=a.clips * scale, classes=24, frames=a.frames, mels=a.mels, seed=scale), rows) for scale in (1, 4)}
        for name, (rows, _) in settings.items()}
    scan = {name: [] for name in settings}
    rate = {name: {b: [] for b in BETAS} for name in settings}
    for _ in range(a.rounds):
        start_ray()
        for name, (_, units) in settings.items():
            scan[name].append(max(scan_rate(stores[name][1], a.batch) for _ in range(2)))  # warm cache
            for b in BETAS:
                rate[name][b].append(stream_rate(stores[name][1].root, float(b), a.batch, a.limit, units))
        ray.shutdown()
    for name, (rows, units) in settings.items():
        store = stores[name][1]
        o = {"row_group_rows": rows, "units_per_block": units, "rows_per_block_beta0": rows * units,
             "store_GB": sum(s["bytes"] for s in store.split_info("train")["shards"]) / 1e9,
             "shards": len(store.shard_paths("train")),
             "scan_examples_per_s": float(np.median(scan[name])), "scan_runs": scan[name], "stream": {}}
        for b in BETAS:
            audit = sampler_audit(store, "train", float(b), batch_size=a.batch, units_per_block=units)
            r = np.array(rate[name][b])
            o["stream"][b] = {
                "examples_per_s": float(np.median(r)), "runs": r.tolist(),
                "MB_per_s": float(np.median(r)) * row_mb * 1.048576,
                "ratio_to_scan": float(np.median(r / np.array(scan[name]))),
                "duplicates_per_batch": audit["duplicates_per_batch"],
                "duplicates_per_batch_ideal": audit["duplicates_per_batch_ideal"],
                "epoch_length": audit["epoch_length"]}
        o["peak_memory_increase"] = peak_memories(stores[name], a, units)
        out["settings"][name] = o
    first, last = a.settings[0], a.settings[-1]
    if first != last:
        def over(runs: dict) -> float:  # median over rounds of the last setting's / the first's
            return float(np.median(np.asarray(runs[last]) / np.asarray(runs[first])))
        out["last_over_first"] = {
            "scan": over(scan),
            **{f"stream_beta{b}": over({n: rate[n][b] for n in settings}) for b in BETAS},
            **{f"ratio_to_scan_beta{b}": over({n: np.array(rate[n][b]) / np.array(scan[n]) for n in settings})
               for b in BETAS},
            "peak_memory_x1": out["settings"][last]["peak_memory_increase"]["x1_GB_median"]
            / max(out["settings"][first]["peak_memory_increase"]["x1_GB_median"], 1e-9)}
    best = out["settings"][last]
    sampler = weighted_sampler_rate(stores[last][1], 1.0, a.batch, a.sampler_samples)
    out["weighted_random_sampler"] = {"examples_per_s": sampler,
                                      "stream_beta1_over_sampler": best["stream"]["1.0"]["examples_per_s"] / sampler}
    slowest = min(v["examples_per_s"] for v in best["stream"].values())
    out["cpu_cores_per_h100"] = {"h100_examples_per_s": 460,
                                 "cores_needed": round(460 / (slowest / max(1, os.cpu_count())), 1)}
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
