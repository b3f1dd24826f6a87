"""Benchmark the oversampling stream on both store formats against a bare read of the same clips.

    python bench/stream.py                         # 4000 clips of [1024, 128] (1 GB a format)
    python bench/stream.py --rounds 5 --dir /tmp/bench-stream   # reuse the stores, more rounds
    python bench/stream.py --memory                # also peak memory, from x1 and x4 stores

One synthetic store is written in format 2 (data/synth.py) and copied to format 1, the
previous release's layout, with `data.convert` (the same clips and bytes the previous release
writes). In each of --rounds rounds, in turn:
- `plain_read`: one thread reads the format-2 shards' spectrograms with pyarrow (16 row groups
  a call, page checksums not verified, no Ray) as torch tensors [n, frames, mels], pass after
  pass up to --limit clips: the bare read of a plain fixed-size binary layout, the baseline;
- `plain_read_verified`: the same read verifying every page's checksum, as pyarrow readers do;
- `reader_beta0.0`: one thread, no Ray: the stream's readers' work (`read_blocks`: each block's
  row groups read from their pages straight into place, CRC-32 checked);
- `ray_only`: Ray Data alone: blocks of the same size made (not read) in the same 0.5-CPU
  tasks and consumed the same way: what moving the bytes through Ray costs;
- `stream`: the stream as the Train loop takes it, at each --betas on each format, on a local
  Ray of --cpus CPUs (started once, its workers warmed by one stream first):
  `oversampled_dataset(..., spectrograms=False)` through Ray, the spectrograms read by the
  consumer (`data.feed.spectrogram_batches`), batches as torch tensors;
- `stream_rows`: the previous release's stream, for comparison in the same run: the
  spectrograms read by Ray tasks and carried through Ray's object store, consumed by
  `iter_torch_batches` (format 2).
Rates are clips/s (wall clock) and clips per CPU-second (the CPU time of this process and every
process it started: Ray's workers, raylet and the rest), each as a ratio to the same round's
`plain_read`, then the median over rounds. "per_read_cpu" is clips/s divided by --cpus.
`--memory` adds the peak used-memory increase while streaming --limit examples at beta 1 from
each format's store and from a 4x larger one (fresh Ray each, median of 3). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.cli import add_list  # noqa: E402
from data.convert import convert  # noqa: E402
from data.feed import spectrogram_batches  # noqa: E402
from data.manifest import MANIFEST, SPECTROGRAM  # noqa: E402
from data.store import Store, open_store  # noqa: E402
from data.shards import ROW_GROUP_ROWS, mel_array  # noqa: E402
from data.stream import (_Spec, default_units_per_block, oversampled_dataset, plan_stream, read_blocks,  # noqa: E402
                         split_labels)
from data.synth import SynthConfig, make_synthetic_store  # noqa: E402

H100_EXAMPLES_PER_S = 460  # AST-base, compiled, batch 128 (DESIGN.md section 6)


def _cpu_by_pid() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds used so far)} of every process."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class TreeCpu:
    """CPU seconds (user + system) used while the block runs by this process and every process
    it started (sampled every 0.2 s, so a process that ends inside the block counts up to its
    last sample)."""

    def __enter__(self):
        self.first, self.last = {}, {}
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        stats = _cpu_by_pid()
        mine, new = set(), {os.getpid()}
        while new:
            mine |= new
            new = {p for p, (parent, _) in stats.items() if parent in mine} - mine
        initial = not self.last
        for p in mine:
            self.first.setdefault(p, stats[p][1] if initial else 0.0)  # a new process: all its time
            self.last[p] = stats[p][1]

    def _watch(self):
        while not self._stop.wait(0.2):
            self._sample()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(self.last[p] - self.first[p] for p in self.last)


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


def measured(fn) -> dict:
    """{clips_per_s, clips_per_cpu_s} of fn(), which returns the clips it delivered."""
    with TreeCpu() as cpu:
        t0 = time.perf_counter()
        n = fn()
        wall = time.perf_counter() - t0
    return {"clips_per_s": n / wall, "clips_per_cpu_s": n / cpu.seconds}


def plain_read(store: Store, verify: bool, limit: int) -> int:
    """One thread: the train shards' spectrograms as torch tensors, 16 row groups a call, pass
    after pass until at least `limit` clips (as many as a stream measurement delivers)."""
    n = 0
    while n < limit:
        for path in store.shard_paths("train"):
            pf = pq.ParquetFile(path, page_checksum_verification=verify)
            for g in range(0, pf.num_row_groups, 16):
                table = pf.read_row_groups(range(g, min(g + 16, pf.num_row_groups)), columns=[SPECTROGRAM],
                                           use_threads=False)
                for chunk in table[SPECTROGRAM].chunks:
                    n += len(torch.from_numpy(mel_array(chunk, store.frames, store.mels)))
    return n


class _Collate(NumpyBatchCollateFn):
    """Stream rows -> (mel, target) tensors, as sweep/train.py's collate makes them."""

    def __call__(self, batch):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(batch["mel"]), torch.from_numpy(batch["target"])


def stream(root, beta: float, batch: int, limit: int, units: int) -> int:
    """Clips delivered as the Train loop takes them (at most `limit`): rows without spectrograms
    through Ray, the spectrograms read here (data/feed.py), torch batches."""
    store = open_store(root)
    ds = oversampled_dataset(root, "train", beta, seed=0, examples=limit, units_per_block=units, spectrograms=False)
    batches = spectrogram_batches(ds.iter_batches(batch_size=None, batch_format="numpy"),
                                  split_labels(store, "train")[1], (store.frames, store.mels), batch)
    return sum(len(torch.from_numpy(mel)) for mel, _, _ in batches)


def stream_rows(root, beta: float, batch: int, limit: int, units: int) -> int:
    """Clips `oversampled_dataset` delivers with its spectrograms, as torch batches (at most `limit`)."""
    ds = oversampled_dataset(root, "train", beta, seed=0, examples=limit, units_per_block=units)
    return sum(len(mel) for mel, _ in ds.iter_torch_batches(batch_size=batch, collate_fn=_Collate()))


def reader(store: Store, beta: float, limit: int, units: int) -> int:
    """One thread, no Ray: the stream's blocks read as its Ray tasks read them (`read_blocks`
    over the planned spans), clips delivered."""
    plan = plan_stream(store, "train", beta, seed=0, examples=limit, units_per_block=units)
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip, (store.frames, store.mels),
                 plan.skip + limit)
    spans = {"first": np.array([plan.first_block]), "blocks": np.array([len(plan.block_rows)]),
             "start": np.array([int(plan.block_start[0])])}
    return sum(len(block["mel"]) for block in read_blocks(spans, plan.index, spec))


def _blocks_without_reads(batch: dict, rows: int, shape: tuple[int, int], classes: int):
    """Ray Data UDF: `batch["blocks"]` blocks shaped like the stream's, filled but not read."""
    for _ in range(int(batch["blocks"][0])):
        yield {"clip_index": np.arange(rows), "position": np.arange(rows),
               "mel": np.ones((rows, *shape), np.float16), "target": np.zeros((rows, classes), np.float32)}


def ray_only(store: Store, batch: int, limit: int, units: int) -> int:
    """What Ray Data costs alone: blocks of the stream's size (units x 4 rows) made in the same
    0.5-CPU tasks, 4 at a time, and consumed the same way, with no read at all."""
    import ray
    rows = units * ROW_GROUP_ROWS
    tasks = max(1, -(-limit // rows) // 2)
    ds = ray.data.from_items([{"blocks": 2}] * tasks, override_num_blocks=tasks)
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    ds = ds.map_batches(_blocks_without_reads, batch_size=1, batch_format="numpy", num_cpus=0.5,
                        fn_kwargs={"rows": rows, "shape": (store.frames, store.mels), "classes": store.n_classes})
    return sum(len(mel) for mel, _ in ds.iter_torch_batches(batch_size=batch, collate_fn=_Collate()))


def start_ray(cpus: int) -> None:
    import ray
    ray.init(address="local", num_cpus=cpus, include_dashboard=True, log_to_driver=False,
             configure_logging=False)


def stores(root: Path, cfg: SynthConfig) -> dict[int, Store]:
    """{format: store} of the same clips: format 2 written by data.synth, format 1 its copy."""
    v2, v1 = root / "format2", root / "format1"
    if not (v2 / MANIFEST).exists():
        make_synthetic_store(v2, cfg)
    if not (v1 / MANIFEST).exists():
        convert(v2, v1, version=1)
    return {1: open_store(v1), 2: open_store(v2)}


def one_round(layouts: dict[int, Store], a) -> dict:
    """One measurement of the baselines and of every (format, beta) stream, in turn."""
    out = {"plain_read": measured(lambda: plain_read(layouts[2], False, a.limit)),
           "plain_read_verified": measured(lambda: plain_read(layouts[2], True, a.limit)),
           "reader_beta0.0": measured(lambda: reader(layouts[2], 0.0, a.limit, a.units)),
           "ray_only": measured(lambda: ray_only(layouts[2], a.batch, a.limit, a.units))}
    for version, store in layouts.items():
        for beta in a.betas:
            out[f"stream_format{version}_beta{beta}"] = measured(
                lambda: stream(store.root, float(beta), a.batch, a.limit, a.units))
    for beta in a.betas:
        out[f"stream_rows_format2_beta{beta}"] = measured(
            lambda: stream_rows(layouts[2].root, float(beta), a.batch, a.limit, a.units))
    return out


def summary(rounds: list[dict], cpus: int) -> dict:
    """Per measurement: medians over rounds of the rates and of their ratios to the round's
    plain_read."""
    out = {}
    for name in rounds[0]:
        rate = np.array([r[name]["clips_per_s"] for r in rounds])
        cpu = np.array([r[name]["clips_per_cpu_s"] for r in rounds])
        base = np.array([r["plain_read"]["clips_per_s"] for r in rounds])
        base_cpu = np.array([r["plain_read"]["clips_per_cpu_s"] for r in rounds])
        out[name] = {"clips_per_s": float(np.median(rate)), "runs": rate.round(1).tolist(),
                     "clips_per_cpu_s": float(np.median(cpu)),
                     "ratio_to_plain_read": float(np.median(rate / base)),
                     "cpu_ratio_to_plain_read": float(np.median(cpu / base_cpu))}
        if name.startswith("stream"):
            out[name]["per_read_cpu"] = out[name]["clips_per_s"] / cpus
    return out


def peak_memory(stores_: dict, a) -> dict:
    """Peak used-memory increase (GB, median of 3 fresh-Ray runs) streaming --limit examples at
    beta 1 from each format's x1 and x4 stores."""
    import ray
    out = {}
    for name, store in stores_.items():
        runs = []
        for _ in range(3):
            start_ray(a.cpus)
            with PeakMemory() as m:
                stream(store.root, 1.0, a.batch, a.limit, a.units)
            ray.shutdown()
            runs.append(m.increase / 1e9)
        out[name] = {"GB_median": float(np.median(runs)), "GB_runs": runs}
    return out


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=4000, help="training clips (4000 x 256 KiB = 1 GB)")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--mels", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="rows a torch batch")
    p.add_argument("--limit", type=int, default=6000, help="examples streamed per measurement")
    p.add_argument("--units", type=int, default=None,
                   help="units a block (default: default_units_per_block(--batch))")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (medians)")
    add_list(p, "--betas", default=["0.0", "1.0"], help="betas streamed")
    p.add_argument("--memory", action="store_true", help="also peak memory from x1 and x4 stores")
    p.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir)")
    a = p.parse_args()
    a.units = a.units or default_units_per_block(a.batch)
    return a


def main() -> None:
    a = _args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-stream-"))
    cfg = SynthConfig(clips=a.clips, classes=24, frames=a.frames, mels=a.mels, seed=1)
    layouts = stores(root / "x1", cfg)
    out = {"clips": a.clips, "shape": [a.frames, a.mels], "batch": a.batch, "units_per_block": a.units,
           "limit": a.limit, "cpus": a.cpus, "rounds": a.rounds, "load_average": os.getloadavg(),
           "GB": {f"format{v}": sum(os.path.getsize(p) for p in s.shard_paths("train")) / 1e9
                  for v, s in layouts.items()}}
    start_ray(a.cpus)  # one Ray for every round (its idle daemons run through the plain reads too)
    import ray
    for warm in (stream, stream_rows):  # Ray's workers started and warm
        warm(layouts[2].root, 0.0, a.batch, a.limit, a.units)
    out["measurements"] = summary([one_round(layouts, a) for _ in range(a.rounds)], a.cpus)
    ray.shutdown()
    slowest = min(v["clips_per_cpu_s"] for k, v in out["measurements"].items() if k.startswith("stream_format2"))
    out["cpu_cores_per_h100"] = {"h100_examples_per_s": H100_EXAMPLES_PER_S,
                                 "cores_needed": round(H100_EXAMPLES_PER_S / slowest, 2)}
    if a.memory:
        x4 = stores(root / "x4", SynthConfig(clips=4 * a.clips, classes=24, frames=a.frames, mels=a.mels, seed=4))
        out["peak_memory_increase"] = peak_memory(
            {f"format{v}_x{k}": s for k, group in ((1, layouts), (4, x4)) for v, s in group.items()}, a)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
