"""The sweep end to end on a local Ray with the smoke config: an honest Ctrl-C, --resume, a
Train worker killed mid-trial, exact checkpoints and selection, both trials (two recipes) at once;
and the errors that stop a sweep before it starts (bad config, unreachable MLflow, a store that is
somebody's data). The grid and replicate seeds: tests/test_grid.py. The sweep on a multi-node
cluster, logging to a real `mlflow server`, with the stopping rule and checkpoint pruning:
tests/test_multinode.py."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import SMOKE, actors, check_selection_is_exact, children, free_port, registered_examples, smoke_args

from sweep.run import main
from sweep.select import StoppingRule
from sweep.tracking import TrackingError


EVERY, CAP_EVALS = 64, 10
STEPS = [EVERY * k for k in range(1, CAP_EVALS + 1)]
# every trial runs to the cap (sweep.train_to_cap; patience 20 never settles in 10 evaluations,
# so no pick is converged): a fixed number of evaluations to interrupt, resume and kill in; the
# tightest pruning (keep_checkpoints=1);
CAPPED = [f"train.max_examples={STEPS[-1]}", f"train.eval_every_examples={EVERY}", "sweep.train_to_cap=true",
          "sweep.patience=20",
          "train.keep_checkpoints=1",
          # Train's own report cadence (one evaluation per 2 s): seconds to interrupt and kill in
          "train.report_poll_s=2"]
ARMS = ["sweep.recipes=[moore, passt@100]", "sweep.betas=[1.0]"]  # two arms (repeats; 100 of the 400
# training clips drawn without replacement an epoch), two trials


def _interrupt_once_both_trials_train(args: list[str], train_runs: Path) -> str:
    """Run `python -m sweep.run` as a user would (a process of its own, attached to the session's
    Ray as on a cluster head); Ctrl-C once both trials have registered a checkpoint and neither
    has finished (they train at once). Returns the driver's stderr."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "sweep.run", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600   # two trials' start-up on a loaded 2-core machine has taken over 300 s
        while True:
            progress = registered_examples(train_runs)
            if len(progress) == 2 and all(progress.values()):
                assert all(ex[-1] < STEPS[-1] for ex in progress.values()), \
                    f"a trial finished before the other had a checkpoint: not concurrent ({progress})"
                break
            assert driver.poll() is None, "the sweep ended before it could be interrupted"
            assert time.time() < deadline, f"not both trials in progress in time: {progress}"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    assert driver.returncode == 130, err[-3000:]
    return err


class _WorkerKiller(threading.Thread):
    """SIGKILLs one resumed Train worker once a resumed trial has registered a new checkpoint and
    both are still short of the cap. The live workers' pids are learnt early from the state API
    (slow on 2 busy cores), and it is asked no more once both are known; the checkpoint snapshots
    on disk are polled fast."""

    def __init__(self, address: str, train_runs: Path):
        super().__init__(daemon=True)
        self.address, self.train_runs = address, train_runs
        self.workers_before = {a.actor_id for a in actors(address, "RayTrainWorker")}
        self.controllers_before = {a.actor_id for a in actors(address, "TrainController")}
        self.before = {run: ex[-1] for run, ex in registered_examples(train_runs).items()}
        self.stop, self.killed, self.errors = threading.Event(), {}, []

    def run(self):
        alive, last_poll = {}, 0.0
        try:
            while not self.stop.is_set() and not self.killed:
                if len(alive) < 2 and time.time() - last_poll > 0.5:
                    alive = {a.actor_id: a.pid for a in actors(self.address, "RayTrainWorker", timeout=10)
                             if a.state == "ALIVE" and a.pid and a.actor_id not in self.workers_before}
                    last_poll = time.time()
                latest = {run: ex[-1] for run, ex in registered_examples(self.train_runs).items() if ex}
                running = [run for run, ex in latest.items() if ex < STEPS[-1]]
                advanced = any(latest[run] > self.before.get(run, 0) for run in running)
                if alive and len(alive) == len(running) == 2 and advanced:
                    actor_id = min(alive)
                    os.kill(alive[actor_id], signal.SIGKILL)
                    self.killed.update(actor_id=actor_id, pid=alive[actor_id], progress=latest)
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)


@pytest.mark.end_to_end
def test_interrupt_resume_and_a_killed_worker(ray_local, smoke_store, tmp_path, monkeypatch):
    """The sweep's failure paths on one smoke grid of two recipes at beta 1 (moore, each clip M_j
    times a pass, and passt@100, epochs of 100 distinct clips: two arms), both trials at once (the session Ray's 4 logical CPUs):

    1. Ctrl-C while both trials train: exit 130, no selection anywhere (no results.json;
       interrupted.json lists both trials as missing; the MLflow parent is KILLED, no child is
       left RUNNING), the resume command printed.
    2. `--resume` continues both trials from their checkpoints; a Train worker SIGKILLed
       mid-trial is restarted by Train inside the same trial (its FailureConfig, not a Tune
       retry) from its last registered checkpoint. The kill usually lands after the worker
       persisted its next checkpoint but before the controller registered it: that directory
       is left behind, and neither the resumed stream nor the trace may count it.
    3. The answer: every trial has exactly one evaluation per 64 examples up to the cap, in its
       checkpoints and in MLflow (no gap, no repeat, the redone values equal: the stream and
       augmentation resume exactly); the picks are NOT CONVERGED (patience 20) and say so;
       each arm is evaluated on exactly its selected checkpoint, and each trial streamed its own
       recipe (MLflow's recipe and draw params, and the sampler audit's epoch length)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    address = ray_local.get_runtime_context().gcs_address
    run = tmp_path / "run"
    train_runs = run / "ray" / "train_runs" / "smoke"
    args = smoke_args(tmp_path, smoke_store, *CAPPED, *ARMS, f"run.ray_address={address}")

    err = _interrupt_once_both_trials_train(args, train_runs)
    assert not (run / "results.json").exists() and not (run / "results.txt").exists()
    partial = json.loads((run / "interrupted.json").read_text())
    assert partial["selection"] is None and partial["interrupted"] == "SIGINT"
    assert sorted((m["scheme"], m["beta"]) for m in partial["missing"]) == [("moore", 1.0), ("passt@100", 1.0)]
    assert "--resume" in partial["resume"] and "--resume" in err and "no beta is selected" in err
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id, trials = children(client, run)
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED" and "best_beta" not in parent.data.metrics
    assert len(trials) == 2 and all(c.info.status == "KILLED" for c in trials)

    killer = _WorkerKiller(address, train_runs)
    killer.start()
    try:
        assert main([*args, "--resume"]) == 0
    finally:
        killer.stop.set()
        killer.join(timeout=30)
    assert not killer.errors, killer.errors
    assert killer.killed, "no Train worker was killed: no resumed trial registered a checkpoint before its last"
    # the restart happened inside Train: a new worker for the killed trial, the same controller
    workers = {a.actor_id: a for a in actors(address, "RayTrainWorker", detail=True)
               if a.actor_id not in killer.workers_before}
    controllers = [a for a in actors(address, "TrainController") if a.actor_id not in killer.controllers_before]
    assert len(controllers) == 2, "a Tune-level retry: Train did not restart the worker group itself"
    assert len(workers) == 3, [(a.pid, a.state) for a in workers.values()]  # 2 trials + 1 restart
    assert workers[killer.killed["actor_id"]].state == "DEAD"

    results = json.loads((run / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["moore beta=1", "passt@100 beta=1"] and not results["failed"]
    assert not (run / "interrupted.json").exists()
    assert all(t["examples"] == STEPS for t in results["traces"])
    check_selection_is_exact(results, StoppingRule(3, 20, 2.0), cap_evals=CAP_EVALS)
    assert not any(r["converged"] for r in results["rows"]) and "NOT CONVERGED" in (run / "results.txt").read_text()
    # one registered checkpoint per evaluation, none repeated after the restart or the resume
    assert all(ex == STEPS for ex in registered_examples(train_runs).values())
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "interrupted" not in parent.data.tags  # the resumed sweep finished
    assert list(results["p_best"]) == ["moore beta=1", "passt@100 beta=1"]  # the grid's order, after a resume too
    assert (run / "results.txt").read_text().endswith(")\n")  # ends with the answer's line
    _, trials = children(client, run)
    audit = {c.data.params["recipe"]: (c.data.params["draw"], c.data.params["audit.epoch_length"]) for c in trials}
    assert audit == {"moore": ("repeats", audit["moore"][1]), "passt@100": ("subset", "100")}
    traces = {t["trial"]: t for t in results["traces"]}
    for c in trials:
        assert c.info.status == "FINISHED", c.data.tags.get("error")
        assert (c.data.tags["stopped"], c.data.tags["converged"]) == ("cap", "false")
        history = client.get_metric_history(c.info.run_id, "val_dprime")
        trace = traces[c.data.tags["trial"]]
        assert [m.step for m in history] == STEPS  # resumed and restarted: no gap, no repeat
        # a redone step is the same step (step_seed, exact stream resume): the value MLflow got
        # before the kill or the Ctrl-C is the one in the checkpoint that selection reads
        assert [m.value for m in history] == pytest.approx(trace["dprime"], abs=1e-9)


def test_unreachable_mlflow_server_fails_before_training(tmp_path, smoke_store, monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(smoke_args(tmp_path, smoke_store)) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is unreachable" in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "run" / "ray").exists()
    with pytest.raises(TrackingError):
        main([*smoke_args(tmp_path, smoke_store), "--debug"])


@pytest.mark.parametrize("override, named", [
    ("sweep.betas=[-1]", "sweep.betas"), ("sweep.betas=[]", "sweep.betas"), ("sweep.betas=0.5", "sweep.betas"),
    ("train.max_examples=-5", "train.max_examples"), ("train.batch_size=1.5", "train.batch_size"),
    ("resources.use_gpu=maybe", "resources.use_gpu"), ("run.name=/some/dir", "run.name"),
    ("sweep.smoothing_window=4", "sweep.smoothing_window"), ("sweep.lrs=[0]", "sweep.lrs"),
    ("train.report_poll_s=0", "train.report_poll_s"),
])
def test_a_bad_config_is_one_line_before_anything_starts(tmp_path, smoke_store, capsys, override, named):
    assert main([*smoke_args(tmp_path, smoke_store, override)]) == 2
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


def test_trials_stopped_from_outside_are_killed_and_given_up_ones_failed(tmp_path):
    """A trial whose actors were taken away (Ctrl-C, a lost node) ends KILLED, tagged with how,
    not FAILED; a trial Tune gave up on is FAILED with its error, whatever its driver wrote."""
    from ray.exceptions import ActorDiedError
    from sweep import tracking
    from sweep.config import load_config
    from sweep.tune import _finish_child
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = tracking.start_parent(client, exp, "t", {}, {})
    runs = [tracking.child_run(client, exp, parent, f"trial_{i}", f"trial {i}", {}, {}) for i in range(3)]
    cfg = load_config(SMOKE)
    _finish_child(cfg, uri, runs[0], str(tmp_path / "none"), ActorDiedError())
    _finish_child(cfg, uri, runs[1], str(tmp_path / "none"), RuntimeError("loss is NaN"))
    _finish_child(cfg, uri, runs[2], str(tmp_path / "none"), None)
    status = [client.get_run(r).info.status for r in runs]
    assert status == ["KILLED", "FAILED", "KILLED"]
    assert "ActorDiedError" in client.get_run(runs[0]).data.tags["stopped_by"]
    assert client.get_run(runs[1]).data.tags["error"] == "RuntimeError: loss is NaN"
    tracking.fail_children(client, exp, parent, [{"trial": "trial_0", "error": "TrialError: gave up"}])
    assert client.get_run(runs[0]).info.status == "FAILED"
    assert client.get_run(runs[0]).data.tags["error"] == "TrialError: gave up"
