"""Failures during a sweep (DESIGN.md section 7), on the session's local Ray and the smoke config.

- A Train worker SIGKILLed mid-trial: Train restarts the worker group, the trial resumes from
  its last checkpoint and its MLflow history has no gap and no repeat.
- A train shard damaged inside a column (same size, intact footer): the sweep refuses to start,
  naming the shard (its content hash no longer matches the manifest), before anything trains.
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
STEPS = [160, 320, 480, 640]  # 640 examples, evaluated every 160, never settled before the cap
FULL_RUN = ["train.max_examples=640", "train.eval_every_examples=160", "sweep.patience=20"]


def _args(tmp_path, store, *overrides):
    return ["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"), "--set", f"data.store={store}",
            *sum((["--set", o] for o in [*FULL_RUN, *overrides]), [])]


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
    trace may count it (sweep.checkpoint.list_checkpoints reads Train's snapshot)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = _smoke_store(tmp_path)
    workers_before = {a.actor_id for a in _actors("RayTrainWorker")}
    controllers_before = {a.actor_id for a in _actors("TrainController")}
    train_runs = tmp_path / "run" / "ray" / "train_runs" / "smoke"
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
    snap = json.loads((train_runs / killed["run"] / "checkpoint_manager_snapshot.json").read_text())
    assert [int(r["metrics"]["examples"]) for r in snap["checkpoint_results"]] == STEPS


def _damage_column_chunk(path: str, group: int, column: str) -> None:
    """Overwrite, in place, the bytes of one column chunk of one row group with garbage. The
    footer stays intact: metadata, schema, row counts and the clip ids are unchanged, so only
    the content hash or a reader of this chunk can see the damage."""
    rg = pq.read_metadata(path).row_group(group)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema.startswith(column))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    garbage = np.random.default_rng(0).integers(0, 256, col.total_compressed_size, dtype=np.uint8)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(garbage.tobytes())


def test_damaged_shard_stops_the_sweep_before_training(tmp_path, monkeypatch, capsys):
    """The spectrograms of one row group are garbage in a shard of the right size whose footer,
    ids and labels are intact: the sweep fails at once with one line naming the shard, starts
    no Ray and no MLflow run, and leaves the store as it was."""
    from data.store import StoreError, open_store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store_dir = tmp_path / "store"
    shutil.copytree(_smoke_store(tmp_path), store_dir)
    shard = open_store(store_dir).shard_paths("train")[0]
    _damage_column_chunk(shard, 1, "mel")
    damaged = Path(shard).read_bytes()
    open_store(store_dir).validate(checksums=False)  # footers, ids and labels still match
    with pytest.raises(StoreError, match="content changed"):
        open_store(store_dir).validate()

    assert main(_args(tmp_path, store_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and shard in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "ray").exists() and not (tmp_path / "run" / "mlflow.db").exists()
    assert Path(shard).read_bytes() == damaged
