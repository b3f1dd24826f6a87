"""Benchmark the oversampling stream's plan and throughput at AudioSet scale.

    python bench/stream_audioset.py                       # stores cached under /tmp
    python bench/stream_audioset.py --dir runs --rows 500000 --consumers 1 2
    python bench/stream_audioset.py --parts mixing        # no Ray: the worker batches' mixing

Builds once (cached under --dir, one store per row-group size, the size in the directory name
and checked when reused) a labels-only store (mel [1, 1]) of the 2,063,949 published AudioSet
training clips (balanced + unbalanced segment CSVs, read in place from --audioset) in
rarest-label order, written as data/ingest.py writes a training split (512 rows a shard). The
plan, stream, consumers and budget parts use the store of --row-group-rows rows a group and
blocks of --units-per-block units (by default data.shards.ROW_GROUP_ROWS and
`default_units_per_block(128)`, what a trial of 8 workers x 128 streams). Then prints JSON:
- mixing: for each --mix-settings ROWS:UNITS (by default the AudioSet config before, 16-row
  groups in blocks of 32 units, and now, `ROW_GROUP_ROWS` and `default_units_per_block`) and
  beta in --mix-betas, `sampler_audit` of the first --mix-examples examples as --workers
  Train workers of --worker-batch rows each get them: distinct classes per worker batch and
  class-mix distance, each against a random permutation of the same rows, the ratios, and
  whether they meet the targets (>= 0.9x the distinct classes, <= 1.15x the distance), with
  the seconds the audit took (labels read once per store, in the first beta's);
- plan: time and peak-RSS increase of `plan_stream` in a fresh process (and its tracemalloc
  peak in another: tracing slows the plan) at beta = 1 for one full pass and for a
  --budget-example run, with the labels read from the shards and again with them cached in
  the process, and the pickled sizes of the plan and of the part of it the readers get (the
  index, put in the object store once); `--parts plan` alone starts no Ray;
- stream: time to first batch and rows/s of `oversampled_dataset` at beta 0, 0.5 and 1, for
  --rows rows each (Ray's workers started beforehand; the labels are read once per process, so
  the first beta's `dataset_built_s` includes reading them and the others' do not);
- consumers: 1, 2 and 4 consumers (Ray actors) of `ds.streaming_split(n, equal=True)`: total
  rows/s and rows per consumer (min / max);
- budget_dataset: the dataset of a --budget-example run at beta = 1 (what a trial streams
  from): plan time, time to its first batch, and the bytes of the map UDF Ray Data ships;
- udf_size_warning: whether Ray Data printed "The UDF of operator ... is too large" anywhere
  (the driver's log handler and every log file of the Ray session).
BENCH_STREAM_MODULE=old_stream (a module on sys.path) measures another data/stream.py version
(all parts but mixing, which is data.audit's `sampler_audit`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audioset_labels import AUDIOSET, labels_only_store, store_path  # noqa: E402
from data.cli import add_list  # noqa: E402
from data.shards import ROW_GROUP_ROWS  # noqa: E402
from data.store import open_store  # noqa: E402
from data.audit import sampler_audit  # noqa: E402
from data.stream import default_units_per_block  # noqa: E402

UDF_WARNING = "is too large"
TARGETS = {"distinct_classes_ratio_min": 0.9, "class_mix_ratio_max": 1.15}
MIXING_KEYS = ("workers", "worker_batch_size", "audited_examples", "distinct_classes_per_batch",
               "distinct_classes_per_batch_ideal", "distinct_classes_ratio", "class_mix_distance",
               "class_mix_distance_ideal", "class_mix_ratio", "duplicates_per_batch", "duplicates_per_batch_ideal")


def build_store(directory: Path, audioset: Path, group_rows: int, rows_per_shard: int = 512):
    """The labels-only training store of `group_rows`-row groups (bench/audioset_labels.py;
    reused when built with that size)."""
    return labels_only_store(store_path(directory, rows_per_shard, group_rows), audioset, rows_per_shard,
                             group_rows)


def mixing(directory: Path, audioset: Path, settings: list[str], betas: list[float], workers: int,
           worker_batch: int, examples: int, seed: int) -> dict:
    """{ROWS:UNITS: {beta: the audit's mixing of worker batches, its ratios, the targets met}}."""
    out = {}
    for setting in settings:
        rows, units = (int(x) for x in setting.split(":"))
        store = build_store(directory, audioset, rows)
        out[setting] = {"row_group_rows": rows, "units_per_block": units,
                        "rows_per_block_beta0": rows * units}
        for beta in betas:
            t0 = time.perf_counter()
            a = sampler_audit(store, "train", beta, seed=seed, batch_size=workers * worker_batch,
                              units_per_block=units, workers=workers, max_examples=examples)
            out[setting][str(beta)] = {**{k: a[k] for k in MIXING_KEYS}, "seconds": time.perf_counter() - t0,
                                       "meets_targets": a["distinct_classes_ratio"] >= TARGETS["distinct_classes_ratio_min"]
                                       and a["class_mix_ratio"] <= TARGETS["class_mix_ratio_max"]}
    return {"targets": TARGETS, **out}


def _shipped_bytes(plan) -> dict:
    """Bytes of what travels to the readers: the pickled plan (inside the UDF) and, if the
    plan keeps its bulk in the object store, that object."""
    out = {"plan_pickled_bytes": len(pickle.dumps(plan, protocol=5))}
    index = getattr(plan, "index", None)  # what goes to the object store, once
    if index is not None:
        out["index_pickled_bytes"] = len(pickle.dumps(index, protocol=5))
    return out


def _stream_module():
    """data.stream, or the module named by BENCH_STREAM_MODULE (to measure another version,
    e.g. a copy of an older data/stream.py on sys.path, with the same functions)."""
    import importlib
    return importlib.import_module(os.environ.get("BENCH_STREAM_MODULE", "data.stream"))


def measure_plan(store_dir: Path, beta: float, examples: int | None, seed: int, units_per_block: int,
                 trace: bool = False) -> dict:
    """Plan time and peak-RSS increase in this (fresh) process, then the time again with the
    labels cached; with `trace`, only the tracemalloc peak of the plan (tracing slows Python
    allocations: it is never on while the plan is timed)."""
    plan_stream = _stream_module().plan_stream
    store = open_store(store_dir)
    if trace:
        tracemalloc.start()
        plan_stream(store, "train", beta, seed=seed, examples=examples, units_per_block=units_per_block)
        return {"tracemalloc_peak_MB": tracemalloc.get_traced_memory()[1] / 1e6}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = plan_stream(store, "train", beta, seed=seed, examples=examples, units_per_block=units_per_block)
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan_stream(store, "train", beta, seed=seed, examples=examples,
                units_per_block=units_per_block)  # labels cached: the plan alone
    return {"beta": beta, "examples": examples, "planned_examples": int(plan.examples),
            "blocks": int(len(plan.block_rows)), "seconds": seconds,
            "seconds_labels_cached": time.perf_counter() - t0,
            "peak_rss_increase_MB": (rss1 - rss0) / 1e3, **_shipped_bytes(plan)}


def plan_in_fresh_process(store_dir: Path, beta: float, examples: int | None, seed: int,
                          units_per_block: int) -> dict:
    """`measure_plan` in a fresh process, and its tracemalloc peak in another."""
    cmd = [sys.executable, __file__, "--plan-only", "--store", str(store_dir), "--beta", str(beta),
           "--seed", str(seed), "--units-per-block", str(units_per_block)] + (
        [] if examples is None else ["--examples", str(examples)])
    out = {}
    for extra in ([], ["--trace"]):
        run = subprocess.run(cmd + extra, check=True, capture_output=True, text=True)
        out.update(json.loads(run.stdout))
    return out


def _same(batch):
    return batch


class _Catch(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        if UDF_WARNING in record.getMessage():
            self.seen.append(record.getMessage())


def stream_rate(store_dir: Path, beta: float, rows: int, batch: int, seed: int, units_per_block: int) -> dict:
    oversampled_dataset = _stream_module().oversampled_dataset
    t0 = time.perf_counter()
    ds = oversampled_dataset(store_dir, "train", beta, seed=seed, examples=rows, units_per_block=units_per_block)
    built = time.perf_counter() - t0
    n, first = 0, None
    for b in ds.iter_batches(batch_size=batch, batch_format="numpy"):
        n += len(b["clip_index"])
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"rows": n, "dataset_built_s": built, "first_batch_s": first, "seconds": total,
            "rows_per_s": n / total, "rows_per_s_after_first": (n - batch) / max(total - first, 1e-9)}


def consumers_rate(store_dir: Path, beta: float, rows: int, batch: int, seed: int, n: int,
                   units_per_block: int) -> dict:
    import ray
    oversampled_dataset = _stream_module().oversampled_dataset

    @ray.remote(num_cpus=0)
    class Consumer:
        def run(self, it, batch):
            t0, rows, first = time.perf_counter(), 0, None
            for b in it.iter_batches(batch_size=batch, batch_format="numpy"):
                rows += len(b["clip_index"])
                first = first or time.perf_counter() - t0
            return rows, first, time.perf_counter() - t0

    t0 = time.perf_counter()
    ds = oversampled_dataset(store_dir, "train", beta, seed=seed, examples=rows, units_per_block=units_per_block)
    its = ds.streaming_split(n, equal=True)
    actors = [Consumer.remote() for _ in range(n)]
    got = ray.get([a.run.remote(it, batch) for a, it in zip(actors, its)])
    wall = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    per = [g[0] for g in got]
    return {"consumers": n, "rows": sum(per), "seconds": wall, "rows_per_s": sum(per) / wall,
            "rows_per_consumer": per, "balance_min_over_max": min(per) / max(max(per), 1),
            "first_batch_s": [g[1] for g in got]}


def udf_at_budget(store_dir: Path, beta: float, examples: int, batch: int, seed: int,
                  units_per_block: int) -> dict:
    """The dataset of a whole run's budget (what a trial's worker group streams from): plan
    time, time to its first batch, and the size of the map UDF that Ray Data puts in the
    object store (what its "UDF ... is too large" warning measures, at 100 MiB)."""
    sizes = []
    try:
        import ray
        from ray.data._internal.execution.operators.map_operator import MapOperator
        warn = MapOperator._warn_large_udf

        def record(self, udf):
            sizes.append(ray.experimental.get_local_object_locations([udf])[udf]["object_size"])
            return warn(self, udf)
        MapOperator._warn_large_udf = record
    except (ImportError, AttributeError):  # another Ray: sizes stay unknown
        warn = None
    t0 = time.perf_counter()
    ds = _stream_module().oversampled_dataset(store_dir, "train", beta, seed=seed, examples=examples,
                                              units_per_block=units_per_block)
    built = time.perf_counter() - t0
    next(iter(ds.iter_batches(batch_size=batch, batch_format="numpy")))
    first = time.perf_counter() - t0
    if warn is not None:
        MapOperator._warn_large_udf = warn
    return {"beta": beta, "examples": examples, "dataset_built_s": built, "first_batch_s": first,
            "udf_bytes": sizes}


def session_log_warnings() -> int:
    """Lines with the UDF-size warning in every log file of the running Ray session."""
    import ray
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    hits = 0
    for path in logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt"):
            try:
                hits += path.read_text(errors="ignore").count(UDF_WARNING)
            except OSError:
                pass
    return hits


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp", help="where the store is built and cached")
    p.add_argument("--audioset", default=str(AUDIOSET), help="the AudioSet label files")
    p.add_argument("--rows", type=int, default=2_000_000, help="rows streamed per measurement")
    p.add_argument("--batch", type=int, default=1024)
    add_list(p, "--betas", type=float, default=[0.0, 0.5, 1.0])
    add_list(p, "--consumers", type=int, default=[1, 2, 4])
    p.add_argument("--budget", type=int, default=100_000_000, help="the planned run's examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS,
                   help="row groups of the store the plan, stream, consumers and budget parts use")
    p.add_argument("--units-per-block", type=int, default=default_units_per_block(128),
                   help="their blocks (default: default_units_per_block(128))")
    add_list(p, "--mix-settings", default=["16:32", f"{ROW_GROUP_ROWS}:{default_units_per_block(128)}"],
             help="ROWS:UNITS row-group rows and units per block audited by the mixing part")
    add_list(p, "--mix-betas", type=float, default=[0.0, 1.0])
    p.add_argument("--workers", type=int, default=8, help="Train workers (mixing)")
    p.add_argument("--worker-batch", type=int, default=128, help="rows a worker batch (mixing)")
    p.add_argument("--mix-examples", type=int, default=1_000_000, help="examples audited (mixing)")
    add_list(p, "--parts", default=["mixing", "plan", "stream", "consumers", "budget"],
             choices=["mixing", "plan", "stream", "consumers", "budget"], help="what to measure")
    p.add_argument("--plan-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--examples", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    a = _args()
    if a.plan_only:
        print(json.dumps(measure_plan(Path(a.store), a.beta, a.examples, a.seed, a.units_per_block, a.trace)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    if "mixing" in a.parts:
        out["mixing"] = mixing(Path(a.dir), Path(a.audioset), a.mix_settings, a.mix_betas, a.workers,
                               a.worker_batch, a.mix_examples, a.seed)
    if set(a.parts) == {"mixing"}:
        out["load_average_end"] = os.getloadavg()
        print(json.dumps(out, indent=1))
        return
    store = build_store(Path(a.dir), Path(a.audioset), a.row_group_rows)
    out.update({"store": str(store.root), "clips": int(store.split_info("train")["clips"]),
                "shards": len(store.shard_paths("train")), "row_group_rows": a.row_group_rows,
                "units_per_block": a.units_per_block})
    if "plan" in a.parts:
        upb = a.units_per_block
        out["plan"] = {"beta1_one_pass": plan_in_fresh_process(store.root, 1.0, None, a.seed, upb),
                       f"beta1_{a.budget}_examples": plan_in_fresh_process(store.root, 1.0, a.budget, a.seed, upb)}
    if set(a.parts) <= {"plan", "mixing"}:  # no Ray needed
        out["load_average_end"] = os.getloadavg()
        print(json.dumps(out, indent=1))
        return
    import ray
    import ray.data  # configures Ray Data's loggers: the handler goes on after
    catch = _Catch()
    logging.getLogger("ray.data").addHandler(catch)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.range(8, override_num_blocks=4).map_batches(_same, num_cpus=0.5).take_all()  # start workers
    if "stream" in a.parts:
        out["stream"] = {str(b): stream_rate(store.root, b, a.rows, a.batch, a.seed, a.units_per_block)
                         for b in a.betas}
    if "consumers" in a.parts:
        out["consumers"] = {str(n): consumers_rate(store.root, 1.0, a.rows, a.batch, a.seed, n, a.units_per_block)
                            for n in a.consumers}
    if "budget" in a.parts:
        out["budget_dataset"] = udf_at_budget(store.root, 1.0, a.budget, a.batch, a.seed, a.units_per_block)
    time.sleep(2)  # let the actors' logs reach their files
    out["udf_size_warning"] = {"driver": bool(catch.seen), "session_log_lines": session_log_warnings()}
    out["load_average_end"] = os.getloadavg()
    ray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
