"""Failures during a sweep (DESIGN.md section 7), on the session's local Ray and the smoke config.

- A Train worker SIGKILLed mid-trial: Train restarts the worker group, the trial resumes from
  its last checkpoint and its MLflow history has no gap and no repeat.
- A train shard damaged where validation does not look: the trial that reads it fails with an
  error naming the file, the others finish, and the sweep reports the failure.
(An unreachable MLflow server is tests/test_sweep.py::test_unreachable_mlflow_server_fails_before_training.)
"""
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from sweep.run import main

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
STEPS = [160, 320, 480, 640]  # the smoke config: 640 examples, evaluated every 160


def _args(tmp_path, store, *overrides):
    return ["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"), "--set", f"data.store={store}",
            *sum((["--set", o] for o in overrides), [])]


def _smoke_store(tmp_path) -> Path:
    """The session's smoke store (shared with tests/test_sweep.py), built here if missing."""
    from data.synth import make_synthetic_store
    from sweep.config import load_config
    store = tmp_path.parent / "smoke-store"
    if not (store / "manifest.json").exists():
        make_synthetic_store(store, load_config(SMOKE).data.synth)
    return store


def _children(run_dir: Path):
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent_id = json.loads((run_dir / "sweep.json").read_text())["parent_run_id"]
    exp = client.get_run(parent_id).info.experiment_id
    return client, client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _actors(class_name: str, **kw):
    """Actors of this Ray (named by address: another Ray may run on the machine)."""
    import ray
    from ray.util.state import list_actors
    return list_actors(address=ray.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", class_name)], limit=10_000, **kw)


def _latest_checkpoint(train_runs: Path) -> dict[str, int]:
    """Examples at the latest checkpoint Train's controller has registered, per Train run."""
    out = {}
    for snap in train_runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snap.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        if results:
            out[snap.parent.name] = max(int(r["metrics"]["examples"]) for r in results)
    return out


def test_killed_train_worker_resumes_from_its_checkpoint(ray_local, tmp_path, monkeypatch):
    """SIGKILL the trial's RayTrainWorker once Train has registered a checkpoint (and before the
    last): Train's FailureConfig restarts the worker group within the same trial (no Tune retry),
    the stream and the model resume from that checkpoint, and the sweep completes. The kill
    usually lands after the worker persisted its next checkpoint but before the controller
    registered it: that directory is left behind, and neither the resumed stream nor the
    trace may count it (sweep.evaluate.list_checkpoints reads Train's snapshot)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = _smoke_store(tmp_path)
    workers_before = {a.actor_id for a in _actors("RayTrainWorker")}
    controllers_before = {a.actor_id for a in _actors("TrainController")}
    train_runs = tmp_path / "run" / "ray" / "train_runs"
    stop, killed, errors = threading.Event(), {}, []

    def watch():
        """Learn the live worker's pid early (the state API is slow on 2 busy cores), then poll
        the checkpoint snapshots on disk (fast) and kill as soon as one is registered."""
        alive, last_poll = {}, 0.0
        try:
            while not stop.is_set() and not killed:
                if time.time() - last_poll > 0.5:
                    alive = {a.actor_id: a.pid for a in _actors("RayTrainWorker", timeout=10)
                             if a.state == "ALIVE" and a.pid and a.actor_id not in workers_before}
                    last_poll = time.time()
                progress = _latest_checkpoint(train_runs)
                running = {run: ex for run, ex in progress.items() if ex < STEPS[-1]}
                if running and len(alive) == 1:  # trials run one at a time on 2 CPUs
                    (actor_id, pid), = alive.items()
                    (run, examples), = running.items()
                    os.kill(pid, signal.SIGKILL)
                    killed.update(actor_id=actor_id, pid=pid, run=run, examples=examples)
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # batch 4: 40 steps between evaluations, a window of seconds to kill the worker in
        assert main(_args(tmp_path, store, "train.batch_size=4", "sweep.max_failures=2")) == 0
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not errors, errors
    assert killed, "no Train worker was killed: no checkpoint was seen before a trial's last"
    assert killed["examples"] < STEPS[-1]

    # the restart happened inside Train: a new worker for the killed trial, the same controller
    workers = {a.actor_id: a for a in _actors("RayTrainWorker", detail=True) if a.actor_id not in workers_before}
    controllers = [a for a in _actors("TrainController") if a.actor_id not in controllers_before]
    assert len(controllers) == 2, "a Tune-level retry: Train did not restart the worker group itself"
    assert len(workers) == 3, [(a.pid, a.state) for a in workers.values()]  # 2 trials + 1 restart
    assert workers[killed["actor_id"]].state == "DEAD"
    assert {a.pid for a in workers.values()} - {killed["pid"]}, "no new worker process"

    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
    client, children = _children(run)
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags.get("error")
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_dprime")]
        assert steps == STEPS, steps  # the killed trial too: no gap, no repeat
        trace = next(t for t in results["traces"] if t["trial_id"] == c.data.tags["ray_trial_id"])
        assert trace["examples"] == STEPS
        # a redone step is the same step (step_seed, exact stream resume): the value MLflow got
        # before the kill is the one in the checkpoint that selection reads
        values = [m.value for m in client.get_metric_history(c.info.run_id, "val_dprime")]
        assert values == pytest.approx(trace["dprime"], abs=1e-9), (values, trace["dprime"])
    # the killed trial's checkpoints: one per evaluation, none repeated after the restart
    snap = json.loads((run / "ray" / "train_runs" / killed["run"] / "checkpoint_manager_snapshot.json").read_text())
    assert [int(r["metrics"]["examples"]) for r in snap["checkpoint_results"]] == STEPS


def _groups_read(store, beta: float, cfg) -> set[int]:
    """Row groups of the train split a trial at `beta` reads: those of the planned blocks (the
    plan stops at the budget, and Ray Data reads nothing else)."""
    from data.stream import plan_stream
    plan = plan_stream(store, cfg.data.train_split, beta, seed=cfg.train.seed, examples=cfg.train.examples,
                       units_per_block=cfg.data.units_per_block)
    return {int(g) for block in plan.blocks for g, _ in block if g >= 0}


def _damage_column_chunk(path: str, group: int, column: str) -> None:
    """Overwrite, in place, the bytes of one column chunk of one row group with garbage. The
    footer stays intact: metadata, schema, row counts and the clip ids (what the store's
    validation reads) are unchanged, so only a reader of this chunk can see the damage."""
    rg = pq.read_metadata(path).row_group(group)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema.startswith(column))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    garbage = np.random.default_rng(0).integers(0, 256, col.total_compressed_size, dtype=np.uint8)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(garbage.tobytes())


def test_damaged_shard_fails_only_the_trial_that_reads_it(ray_local, tmp_path, monkeypatch):
    """The spectrograms of one row group are garbage, in a shard that passes validation: the
    trial whose stream reads that group (beta = 0 reads every group in 640 examples; beta = 1,
    whose oversampled pass is longer, reads only some) fails with a StoreError
    naming the file, its MLflow run is FAILED with it, the other trial finishes, and results.json
    lists the failure. Which trial reads which group follows from the stream's plan (seeded and
    cut at the budget), so the setup is deterministic; the test checks it before running."""
    from data.store import open_store
    from sweep.config import load_config
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store_dir = tmp_path / "store"
    shutil.copytree(_smoke_store(tmp_path), store_dir)
    cfg = load_config(SMOKE)
    store = open_store(store_dir)
    read = {beta: _groups_read(store, beta, cfg) for beta in cfg.sweep.betas}
    only_beta0 = sorted(read[0.0] - read[1.0])
    assert only_beta0, f"every row group beta=0 reads is read by beta=1 too: {read}"
    shard = store.shard_paths(cfg.data.train_split)
    assert len(shard) == 1  # the smoke store's 400 training clips: one shard of 7 row groups
    shard, group = shard[0], only_beta0[-1]
    _damage_column_chunk(shard, group, "mel")
    open_store(store_dir).validate()  # the damage is where validation does not look

    # no Train restarts: the data error is deterministic (Tune still retries the trial once)
    assert main(_args(tmp_path, store_dir, "sweep.max_failures=0")) == 0

    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [1.0]
    assert len(results["failed"]) == 1 and results["failed"][0]["beta"] == 0.0
    assert shard in results["failed"][0]["error"] and "StoreError" in results["failed"][0]["error"]
    client, children = _children(run)
    status = {float(c.data.params["beta"]): c for c in children}
    assert sorted(status) == [0.0, 1.0]
    failed, ok = status[0.0], status[1.0]
    assert failed.info.status == "FAILED"
    assert shard in failed.data.tags["error"], failed.data.tags["error"]
    assert f"row group {group} is unreadable" in failed.data.tags["error"]
    assert ok.info.status == "FINISHED", ok.data.tags.get("error")
    assert [m.step for m in client.get_metric_history(ok.info.run_id, "val_dprime")] == STEPS
    parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "FINISHED"
