"""The sweep end to end on a local Ray: the smoke config, MLflow (sqlite and a real server)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sweep.run import main
from sweep.tracking import TrackingError

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _run(tmp_path, *overrides):
    args = ["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"),
            "--set", f"data.store={tmp_path.parent / 'smoke-store'}", *sum((["--set", o] for o in overrides), [])]
    return main(args)


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_smoke_sweep_end_to_end(ray_local, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _run(tmp_path) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
    for row in results["rows"]:
        assert set(row) >= {"beta", "lr", "checkpoint", "val_dprime", "examples_to_peak", "eval"}
        assert Path(row["checkpoint"]).is_dir()
        for split in ("eval_public", "eval_internal"):
            m = row["eval"][split]
            assert 0 < m["mAP"] <= 1 and 0 < m["AUC"] <= 1 and np.isfinite(m["dprime"])
            pred = np.load(run / "predictions" / f"beta={row['beta']:g}" / f"{split}.npz")
            assert pred["scores"].shape == pred["targets"].shape and len(pred["clip_ids"]) == len(pred["scores"])
    assert results["selection"]["beta"] in (0.0, 1.0)

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.betas"] == "[0.0, 1.0]"
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"results.json", "results.txt"}
    children = _children(client, parent_id)
    assert sorted(float(c.data.params["beta"]) for c in children) == [0.0, 1.0]
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags.get("error")
        assert c.data.params["lr"] == "0.001" and c.data.tags["dataset.fingerprint"].startswith("sha256:")
        history = client.get_metric_history(c.info.run_id, "val_dprime")
        assert [m.step for m in history] == [160, 320, 480, 640]  # every 160 examples, no gap or repeat
        assert len(client.get_metric_history(c.info.run_id, "val_dprime_ma")) == 4
        assert "audit.epoch_inflation" in c.data.metrics


def test_trial_concurrency_follows_the_cluster(caplog):
    from sweep.config import load_config
    from sweep.tune import trial_concurrency
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")  # 8 trials, 0.5 CPU each
    assert trial_concurrency(demo, {"CPU": 2}) == 1     # CI and the development machine
    assert trial_concurrency(demo, {"CPU": 4}) == 3     # one CPU left for the reads and drivers
    assert trial_concurrency(demo, {"CPU": 64}) == 8    # never more than the grid
    gpu = load_config(Path(__file__).resolve().parents[1] / "configs" / "audioset.yaml")
    grid = len(gpu.sweep.betas) * len(gpu.sweep.lrs)
    per_trial = gpu.resources.num_workers
    assert trial_concurrency(gpu, {"CPU": 8}) == grid   # no GPU yet: the autoscaler adds them
    assert trial_concurrency(gpu, {"CPU": 8, "GPU": 2 * per_trial}) == min(2, grid)
    forced = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                         ["resources.max_concurrent_trials=2"])
    with caplog.at_level("WARNING", logger="sweep.tune"):
        assert trial_concurrency(forced, {"CPU": 2}) == 2
    assert "only 1 trial(s) fit" in caplog.text


def test_trials_run_concurrently_when_the_cpus_allow(ray_4_cpus, tmp_path, monkeypatch):
    """With CPUs to spare (4 logical here) both smoke trials run at once, each its own Train run
    and Ray Data stream in one Ray, and the sweep is as complete as when they run in turn."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _run(tmp_path) == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    children = _children(client, json.loads((run / "sweep.json").read_text())["parent_run_id"])
    assert len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags.get("error")
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_dprime")] == [160, 320, 480, 640]
    starts, ends = [c.info.start_time for c in children], [c.info.end_time for c in children]
    assert max(starts) < min(ends), "the two trials did not overlap"


def test_sweep_logs_to_a_real_mlflow_server(ray_local, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert _run(tmp_path, "sweep.betas=[0.0, 0.5]", "train.examples=320") == 0
        client = MlflowClient(uri)
        parent_id = json.loads((tmp_path / "run" / "sweep.json").read_text())["parent_run_id"]
        children = _children(client, parent_id)
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        assert any(a.path == "audit" for a in client.list_artifacts(children[0].info.run_id))
        assert not (tmp_path / "run" / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_unreachable_mlflow_server_fails_before_training(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.time()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port} is unreachable"):
        _run(tmp_path)
    assert time.time() - t0 < 30 and not (tmp_path / "run" / "ray").exists()


def test_resume_after_an_interrupted_sweep(ray_local, tmp_path, monkeypatch):
    """Kill the sweep driver once one trial has finished; --resume runs the rest only.

    The driver attaches to the session's Ray (as `python -m sweep.run` on a cluster head
    does), so its death takes its trials with it while the cluster stays up."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = ["--config", str(SMOKE), "--run-dir", str(run), "--set", f"data.store={tmp_path.parent / 'smoke-store'}",
            "--set", "sweep.betas=[0.0, 0.5, 1.0]",
            "--set", f"run.ray_address={ray_local.get_runtime_context().gcs_address}"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "sweep.run", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = []
    try:
        deadline = time.time() + 300
        while not finished:
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(2)
            if (run / "mlflow.db").exists() and (run / "sweep.json").exists():
                client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
                parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
                finished = [c for c in _children(client, parent_id) if c.info.status == "FINISHED"]
    finally:
        os.killpg(driver.pid, 9)
        driver.wait(timeout=30)
    done = {c.info.run_id: c.info.end_time for c in finished}
    assert not (run / "results.json").exists()

    assert main([*args, "--resume"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 0.5, 1.0]
    children = _children(client, parent_id)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        if c.info.run_id in done:  # finished before the kill: not run again
            assert c.info.end_time == done[c.info.run_id]
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_dprime")]
        assert steps == [160, 320, 480, 640], steps  # resumed trials: no gap, no repeat
