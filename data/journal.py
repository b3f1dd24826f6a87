"""Work that survives an interruption: jobs run in this process or as Ray tasks, each result
journaled as it arrives, and the files a journal lists verified before a rerun keeps them.

A journal is a JSON-lines file, one entry {name, key, ...result} a finished job; the last entry
of a name counts, and a line torn by a kill is ignored. A rerun keeps a job's entry when its
`key` (what the job was computed from) is unchanged and the files it wrote still have the
size and sha256 the entry records (`verify_files`); the rest is computed again.
"""
from __future__ import annotations

import json
import logging
from contextlib import suppress
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from data.cli import Failure
from data.manifest import HASH
from data.shards import file_hashes

__all__ = ["IN_PROCESS_CLIPS", "start_ray", "run_jobs", "read_journal", "verify_files"]

IN_PROCESS_CLIPS = 256  # work of at most this many clips runs in this process: starting Ray would take longer


def start_ray(what: str) -> None:
    """Join Ray (RAY_ADDRESS) or start a local one, quietly, unless this process has it; any
    failure (a node that times out starting on a loaded machine, a temporary directory that
    cannot be made) is a one-line Failure naming `what` was to run ("this ingest of N clips").
    Call it before anything is written."""
    import ray
    if ray.is_initialized():
        return
    try:
        ray.init(logging_level=logging.WARNING, configure_logging=True, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting is reported the same way
        with suppress(Exception):
            ray.shutdown()
        raise Failure(f"Ray did not start for {what} (more than {IN_PROCESS_CLIPS} clips run as Ray "
                      f"tasks): {type(e).__name__}: {' '.join(str(e).split())}; nothing was written: run it again "
                      "(a loaded machine can make Ray's start time out), or check RAY_ADDRESS") from None


def _results(fn: Callable, jobs: list[dict], use_ray: bool) -> Iterator[tuple[dict, object]]:
    """(job, fn(*job["args"])) as each job finishes: in order here, in finishing order as Ray
    tasks of one CPU each (the RayError as the result of a task that died)."""
    if not use_ray:
        for job in jobs:
            yield job, fn(*job["args"])
        return
    import ray
    task = ray.remote(num_cpus=1)(fn)
    pending = {task.remote(*job["args"]): job for job in jobs}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ref)
        try:
            yield job, ray.get(ref)
        except ray.exceptions.RayError as e:  # a worker died (memory?): retried on a rerun
            yield job, e


def run_jobs(fn: Callable, jobs: list[dict], journal: Path, use_ray: bool, check: Callable | None = None,
             **bar) -> tuple[dict[str, dict], list[dict]]:
    """fn(*job["args"]) -> dict for each job {name, key, args, weight}: here or as Ray tasks
    (`start_ray` first). Each result is journaled as {name, key, **result} the moment it arrives,
    then given to `check` (which may raise to stop the run); a tqdm bar (`bar`: its keywords)
    advances by each job's weight. Returns (entries by name, failed [{file, error}])."""
    done, failed = {}, []
    with tqdm(total=sum(j["weight"] for j in jobs), **bar) as progress, open(journal, "a") as log:
        for job, result in _results(fn, jobs, use_ray):
            progress.update(job["weight"])
            if isinstance(result, Exception):
                failed.append({"file": job["name"], "error": str(result).strip().splitlines()[-1]})
                continue
            entry = {"name": job["name"], "key": job["key"], **result}
            log.write(json.dumps(entry) + "\n")
            log.flush()
            done[job["name"]] = entry
            if check is not None:
                check(entry)
    return done, failed


def read_journal(path: Path) -> dict[str, dict]:
    """A journal's entries by name, the last per name; torn lines are ignored; none if no file."""
    entries = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        with suppress(json.JSONDecodeError, KeyError, TypeError):
            entry = json.loads(line)
            entries[entry["name"]] = entry
    return entries


def verify_files(files: list[dict], root: Path) -> list[str | None]:
    """For each {file (under `root`), bytes, sha256} entry: None if the file still holds those
    bytes, else why not ("missing", the sizes, or the hashes); the hashes are read only for
    files of the right size, a few files at a time."""
    why: list[str | None] = [None] * len(files)
    to_hash = []
    for i, f in enumerate(files):
        path = root / f["file"]
        if not path.is_file():
            why[i] = "missing"
        elif path.stat().st_size != f["bytes"]:
            why[i] = f"{path.stat().st_size} bytes, journal says {f['bytes']}"
        else:
            to_hash.append(i)
    for i, got in zip(to_hash, file_hashes(root / files[i]["file"] for i in to_hash)):
        if got != files[i][HASH]:
            why[i] = f"content changed ({HASH} {got[:16]}..., journal says {files[i][HASH][:16]}...)"
    return why
