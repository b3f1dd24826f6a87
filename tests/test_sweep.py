"""The sweep end to end on a local Ray with the smoke config: MLflow (a real server and sqlite),
the stopping rule, exact checkpoints, an honest Ctrl-C and --resume, and bad configurations."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sweep.checkpoint import MODEL, list_checkpoints, load_state
from sweep.run import main
from sweep.select import checkpoints_to_keep, pick, settled, smoothed
from sweep.tracking import TrackingError

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _args(tmp_path, *overrides):
    return ["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"),
            "--set", f"data.store={tmp_path.parent / 'smoke-store'}", *sum((["--set", o] for o in overrides), [])]


def _children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (a free port); returns (process, uri) once healthy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            return server, uri
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                _stop(server)
                raise AssertionError("mlflow server did not start")
            time.sleep(1)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL what is still there after 30 s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def _check_selection_is_exact(results: dict, window: int, patience: int, cap_evals: int) -> None:
    """Every beta's evaluated checkpoint is the selected evaluation's own, the pick is the one
    sweep.select makes on the trace, and each trial stopped exactly when its pick settled (or
    at the cap)."""
    traces = {t["trial_id"]: t for t in results["traces"]}
    for row in results["rows"]:
        trace = traces[row["trial_id"]]
        d = np.array(trace["dprime"])
        i = pick(d, window)
        assert row["examples_to_peak"] == trace["examples"][i] == row["examples_evaluated"]
        assert load_state(row["checkpoint"])["examples"] == row["examples_to_peak"]
        assert (Path(row["checkpoint"]) / MODEL).is_file()
        assert row["val_dprime"] == pytest.approx(smoothed(d, window)[i])
        assert row["converged"] == settled(d, window, patience)
        assert not any(settled(d[:k], window, patience) for k in range(1, len(d)))  # stopped at once
        assert row["converged"] or len(d) == cap_evals


def test_smoke_sweep_on_an_mlflow_server_with_concurrent_trials(ray_4_cpus, tmp_path, monkeypatch):
    """Both smoke trials at once (4 logical CPUs), logging to a real MLflow server, with the
    tightest checkpoint pruning (keep_checkpoints=1) and patience 1, so trials stop as soon as
    their pick settles."""
    server, uri = _mlflow_server(tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(_args(tmp_path, "train.keep_checkpoints=1", "sweep.patience=1")) == 0
        run = tmp_path / "run"
        results = json.loads((run / "results.json").read_text())
        assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
        assert results["selection"]["beta"] in (0.0, 1.0) and not (run / "mlflow.db").exists()
        _check_selection_is_exact(results, 3, 1, cap_evals=15)
        for row in results["rows"]:
            for split in ("eval_public", "eval_internal"):
                m = row["eval"][split]
                assert 0 < m["mAP"] <= 1 and 0 < m["AUC"] <= 1 and np.isfinite(m["dprime"])
                pred = np.load(run / "predictions" / f"beta={row['beta']:g}" / f"{split}.npz")
                assert pred["scores"].shape == pred["targets"].shape == (len(pred["clip_ids"]), 8)
            # pruned as the trial went: weights only where selection could still pick
            checkpoints = list_checkpoints(str(Path(row["checkpoint"]).parent))
            d = checkpoints[-1][1]["history"]["val_dprime"]
            kept = [j for j, (path, _) in enumerate(checkpoints) if (Path(path) / MODEL).is_file()]
            assert kept == sorted(checkpoints_to_keep(d, 3, 1))
            assert [(Path(p) / "optimizer.pt").is_file() for p, _ in checkpoints].count(True) == 1
        table = (run / "results.txt").read_text()
        assert "Table 4: mAP" in table and f"{results['rows'][0]['eval']['eval_public']['mAP']:.4f}" in table

        client = MlflowClient(uri)
        parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.data.params["sweep.betas"] == "[0.0, 1.0]"
        assert {a.path for a in client.list_artifacts(parent_id)} >= {"results.json", "results.txt", "report"}
        children = _children(client, parent_id)
        assert sorted(float(c.data.params["beta"]) for c in children) == [0.0, 1.0]
        traces = {t["trial_id"]: t for t in results["traces"]}
        for c in children:
            assert c.info.status == "FINISHED", c.data.tags.get("error")
            assert c.data.params["lr"] == "0.001" and c.data.tags["dataset.fingerprint"].startswith("sha256:")
            trace = traces[c.data.tags["ray_trial_id"]]
            d = np.array(trace["dprime"])
            assert c.data.tags["converged"] == str(settled(d, 3, 1)).lower()
            history = client.get_metric_history(c.info.run_id, "val_dprime")
            assert [m.step for m in history] == trace["examples"]  # no gap, no repeat
            # "smoothed" in MLflow is the centred full-window value selection uses, at its centre
            smooth = {m.step: m.value for m in client.get_metric_history(c.info.run_id, "val_dprime_smoothed")}
            want = {e: v for e, v in zip(trace["examples"], smoothed(d, 3)) if np.isfinite(v)}
            assert smooth.keys() == want.keys() and all(smooth[e] == pytest.approx(want[e]) for e in want)
            assert "audit.epoch_inflation" in c.data.metrics
            assert any(a.path == "audit" for a in client.list_artifacts(c.info.run_id))
        starts, ends = [c.info.start_time for c in children], [c.info.end_time for c in children]
        assert max(starts) < min(ends), "the two trials did not overlap"
    finally:
        _stop(server)


def test_trial_concurrency_follows_the_cluster(caplog):
    from sweep.config import load_config
    from sweep.tune import trial_concurrency
    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    grid = len(demo.sweep.betas) * len(demo.sweep.lrs)
    assert trial_concurrency(demo, {"CPU": 2}) == 1     # CI and the development machine
    assert trial_concurrency(demo, {"CPU": 4}) == min(3, grid)  # one CPU left for reads and drivers
    assert trial_concurrency(demo, {"CPU": 64}) == grid  # never more than the grid
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


def test_unreachable_mlflow_server_fails_before_training(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.time()
    assert main(_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is unreachable" in err and err.startswith("error: ") and err.count("\n") == 1
    assert time.time() - t0 < 30 and not (tmp_path / "run" / "ray").exists()
    with pytest.raises(TrackingError):
        main([*_args(tmp_path), "--debug"])


@pytest.mark.parametrize("override, named", [
    ("sweep.betas=[-1]", "sweep.betas"), ("sweep.betas=[]", "sweep.betas"), ("sweep.betas=0.5", "sweep.betas"),
    ("train.max_examples=-5", "train.max_examples"), ("train.batch_size=1.5", "train.batch_size"),
    ("resources.use_gpu=maybe", "resources.use_gpu"), ("run.name=/some/dir", "run.name"),
    ("sweep.smoothing_window=4", "sweep.smoothing_window"), ("sweep.lrs=[0]", "sweep.lrs"),
])
def test_a_bad_config_is_one_line_before_anything_starts(tmp_path, capsys, override, named):
    assert main([*_args(tmp_path, override)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {named}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 4\n  optim: {lr: [1, 2\n")
    assert main(["--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}:")


def test_a_store_without_manifest_is_never_rebuilt(tmp_path, capsys):
    """Shards without a manifest.json are somebody's data: the sweep refuses to write a synthetic
    store over them, and leaves them as they were."""
    store = tmp_path / "store"
    (store / "train").mkdir(parents=True)
    shard = store / "train" / "part-00000.parquet"
    shard.write_bytes(b"PAR1 precious PAR1")
    assert main(["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"), "--set", f"data.store={store}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(store) in err and err.count("\n") == 1
    assert sorted(p.name for p in store.rglob("*")) == ["part-00000.parquet", "train"]
    assert shard.read_bytes() == b"PAR1 precious PAR1"


def test_sigint_reports_no_winner_and_resume_completes(ray_local, tmp_path, monkeypatch):
    """Ctrl-C once a trial has a checkpoint: exit 130, no selection anywhere (no results.json,
    interrupted.json lists what is missing, the MLflow parent is KILLED), the resume command is
    printed. `--resume` then finishes every beta, each evaluated on exactly its selected
    checkpoint after 15 evaluations with keep_checkpoints=1.

    The driver attaches to the session's Ray (as `python -m sweep.run` on a cluster head does)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = _args(tmp_path, "train.keep_checkpoints=1", "sweep.patience=20",
                 f"run.ray_address={ray_local.get_runtime_context().gcs_address}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "sweep.run", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list((run / "ray" / "train_runs").glob("smoke/*/checkpoint_manager_snapshot.json")):
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    assert driver.returncode == 130, err[-3000:]
    assert not (run / "results.json").exists() and not (run / "results.txt").exists()
    partial = json.loads((run / "interrupted.json").read_text())
    assert partial["selection"] is None and partial["missing"] and partial["interrupted"] == "SIGINT"
    assert "--resume" in partial["resume"] and "--resume" in err and "no beta is selected" in err
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and "best_beta" not in parent.data.metrics
    assert all(c.info.status != "RUNNING" for c in _children(client, parent_id))

    assert main([*args, "--resume"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
    assert not (run / "interrupted.json").exists()
    assert all(len(t["examples"]) == 15 for t in results["traces"])
    _check_selection_is_exact(results, 3, 20, cap_evals=15)
    assert client.get_run(parent_id).info.status == "FINISHED"
    children = _children(client, parent_id)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_dprime")]
        assert steps == [64 * k for k in range(1, 16)], steps  # resumed: no gap, no repeat


def test_resume_refuses_another_config(tmp_path):
    """--resume continues the sweep it names: a changed value is an error naming the key."""
    from sweep.config import ConfigError, load_config, to_dict
    from sweep.run import _same_config
    was = to_dict(load_config(SMOKE))
    _same_config(was, to_dict(load_config(SMOKE)), tmp_path / "sweep.json")
    with pytest.raises(ConfigError, match=r"--resume: sweep\.patience is 9, the sweep .* started with 3"):
        _same_config(was, to_dict(load_config(SMOKE, ["sweep.patience=9"])), tmp_path / "sweep.json")
