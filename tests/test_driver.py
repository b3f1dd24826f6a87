"""The driver's fault paths that need no Ray sweep: signals before, during and after Tune's fit,
an interrupted publish, an unreachable Ray, a resume with nothing to resume or nothing left to
run, trials whose last checkpoint is gone, and the store checks made before anything starts."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from helpers import classes, write_split
from sweep_checks import SMOKE, free_port, smoke_args, trial_on_disk

from data.cli import InputError
from data.store import create_store, open_store
from sweep import tracking
from sweep.config import ConfigError, load_config, to_dict
from sweep.driver import Interrupted, _interrupted, _metric_key, _publish, _resumable, _Signals, missing_trials
from sweep.prepare import check_store, prepare
from sweep.rundir import RunDir
from sweep.run import main


def test_signals_raise_outside_fit_and_reach_tune_inside_it():
    """Before and after Tune's fit either signal raises Interrupted at once; during it the first
    one is remembered and reaches Tune as SIGUSR1 (its stop signal; here a stand-in handler),
    with Tune's own SIGINT handler switched off, and a second one raises; the handlers and the
    environment from before are back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    to_tune = []
    usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: to_tune.append(signum))
    try:
        with _Signals() as s:
            with pytest.raises(Interrupted) as e:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0)  # let the handler run
            assert e.value.signum == signal.SIGTERM and s.received == signal.SIGTERM
            s.received = None
            s.pass_to_tune()
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)
            assert to_tune == [signal.SIGUSR1] and s.received == signal.SIGINT
            with pytest.raises(Interrupted):  # a second Ctrl-C does not wait for Tune
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0)
            s.stop_raising()  # fit returned
            with pytest.raises(Interrupted) as e:
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0)
            assert e.value.signum == signal.SIGINT
    finally:
        signal.signal(signal.SIGUSR1, usr1)
    assert signal.getsignal(signal.SIGTERM) is before and "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_an_interrupted_publish_leaves_no_answer(synth_store, tmp_path):
    """SIGTERM while the report is written: no results.json, results.txt or report/ in the run
    directory, nothing left staged, interrupted.json saying training had finished, the MLflow
    parent KILLED."""
    from test_report import write_sweep_output
    import sweep.driver as driver
    run_dir = RunDir(write_sweep_output(synth_store, tmp_path / "run", lrs=(1e-3,), n_evals=12))
    summary = json.loads(run_dir.results_file.read_text())
    run_dir.results_file.unlink()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.open_store(uri)
    exp = client.create_experiment("t")
    parent = tracking.start_parent(client, exp, "t", {}, {})
    real = driver.format_results

    def terminated(s):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)
        return real(s)
    driver.format_results = terminated
    try:
        with _Signals(), pytest.raises(Interrupted) as e:
            _publish(client, run_dir, parent, summary)
    finally:
        driver.format_results = real
    names = {p.name for p in run_dir.path.iterdir()}
    assert not names & {"results.json", "results.txt", "report"} and ".publishing" in names
    _interrupted(client, {"uri": uri, "experiment_id": exp, "parent_run_id": parent}, run_dir, e.value, "resume me")
    assert ".publishing" not in {p.name for p in run_dir.path.iterdir()}
    partial = json.loads(run_dir.interrupted_file.read_text())
    assert partial["interrupted"] == "SIGTERM" and partial["selection"] is None
    assert partial["missing"].startswith("none: stopped after training") and partial["resume"] == "resume me"
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "SIGTERM"
    assert "best_val_dprime" not in run.data.metrics


def test_an_unreachable_ray_is_one_line_and_moves_nothing(smoke_store, tmp_path, monkeypatch, capsys):
    """RAY_ADDRESS pointing nowhere: an error within seconds, naming it; the earlier sweep's
    answer stays where it was and no MLflow parent is opened."""
    import ray
    if ray.is_initialized():  # the session's Ray; the next test that needs it starts it again
        ray.shutdown()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"selection": "earlier"}')
    assert main(smoke_args(tmp_path, smoke_store)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Ray at {address}") and "does not answer" in err and err.count("\n") == 1
    assert (run / "results.json").read_text() == '{"selection": "earlier"}' and not (run / "previous").exists()
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_resume_with_nothing_recorded_starts_afresh_and_says_so(tmp_path, capsys):
    cfg = load_config(SMOKE)
    assert _resumable(RunDir(tmp_path), cfg, {}, resume=True) == []
    assert capsys.readouterr().out == f"note: --resume: {tmp_path} holds no earlier sweep; starting afresh\n"
    assert _resumable(RunDir(tmp_path), cfg, {}, resume=False) == []


def test_resume_of_a_finished_sweep_prints_its_answer_and_changes_nothing(smoke_store, tmp_path, monkeypatch,
                                                                          capsys):
    """--resume after the answer: the answer again, no Ray, nothing logged or rewritten."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = smoke_args(tmp_path, smoke_store)
    cfg = prepare(load_config(SMOKE, [f"data.store={smoke_store}", f"run.run_dir={tmp_path / 'run'}"]))
    store = open_store(smoke_store)
    fingerprints = {s: store.fingerprint(s) for s in ["train", "valid", *cfg.data.eval_splits]}
    run_dir = RunDir(Path(cfg.run.run_dir))
    run_dir.path.mkdir()
    run_dir.record("parent", "0", to_dict(cfg), fingerprints, [cfg.train.max_examples])
    answer = {"selection": {"label": "beta=1", "lr": 1e-3, "val_dprime": 1.5, "seeds": [0], "examples_to_peak": 640,
                            "not_converged": []}, "p_best": {"beta=0": 0.01, "beta=1": 0.99},
              "verdict": {"resolved": True, "provisional": False, "word": "resolved", "text": "beta=1 is best"},
              "rows": [{"learned": True}], "failed": [], "diverged": [], "wall_seconds": 12.5,
              "config": to_dict(cfg)}
    run_dir.results_file.write_text(json.dumps(answer))
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "has finished; its answer:\np_best (probability of being best on validation): beta=0 0.01, beta=1 0.99\n" \
        "verdict: resolved: beta=1 is best\nselected: beta=1 lr=0.001" in out
    assert json.loads(run_dir.results_file.read_text()) == json.loads(json.dumps(answer))  # all unchanged
    assert not (run_dir.path / "ray").exists()


def test_a_trial_whose_final_checkpoint_is_gone_is_named(tmp_path):
    """Tune restores a trial as finished, but its last checkpoint (the one that says why it
    stopped) was deleted: it is missing, named by its arm, lr and seed (not an interruption)."""
    from sweep.winners import finished
    cfg = load_config(SMOKE, ["sweep.betas=[0, 1]"])
    runs = tmp_path / "train_runs"
    done_trial, cut_short = cfg.sweep.trials
    trial_on_disk(runs, done_trial, [0.7], [0.5], stopped="settled")
    trial_on_disk(runs, cut_short, [0.7], [0.5], stopped=None)
    done = finished(cfg, cfg.sweep.trials, {}, str(runs))
    assert done == {done_trial} and missing_trials(cfg.sweep.trials, done) == [cut_short]
    assert finished(cfg, cfg.sweep.trials, {cut_short: "TrialError: ..."}, str(runs)) == {done_trial, cut_short}


def _store(root: Path, splits: dict[str, list[list[int]]], frames: int = 16, mels: int = 16):
    """A store of 3 classes with the given labels per split (random spectrograms)."""
    store = create_store(root, classes(3), {"frames": frames, "mels": mels})
    for split, labels in splits.items():
        write_split(store, split, labels)
    return store


def _cfg(store):
    return load_config(SMOKE, [f"data.store={store.root}", "data.synth=null", "data.eval_splits=[eval]"])


TRAIN = [[0], [1], [2], [0, 1]] * 3


def test_a_split_with_nothing_to_score_is_refused_before_anything_starts(tmp_path):
    store = _store(tmp_path / "one", {"train": TRAIN, "valid": [[0]], "eval": [[0], [1], [2]]})
    with pytest.raises(ConfigError, match=r"split 'valid' of .*: 1 clip\(s\) and no class with both positive "
                                          r"and negative clips: nothing to score"):
        check_store(store, _cfg(store))


def test_spectrograms_smaller_than_a_patch_are_refused(tmp_path):
    store = _store(tmp_path / "small", {"train": TRAIN, "valid": TRAIN, "eval": TRAIN}, frames=8, mels=8)
    with pytest.raises(ConfigError, match=r"spectrograms of 8 frames x 8 mels; the AST needs at least 16 x 16"):
        check_store(store, _cfg(store))


def test_an_eval_class_without_positives_is_warned_about(tmp_path, capsys):
    store = _store(tmp_path / "s", {"train": TRAIN, "valid": TRAIN, "eval": [[0], [1], [0, 1]]})
    check_store(store, _cfg(store))
    assert capsys.readouterr().err == ("warning: 1 of 3 classes have no positive clip in the evaluation split "
                                       "'eval': they are left out of its metrics\n")


def test_a_diverged_trial_is_left_out(tmp_path):
    """A trial whose training loss exploded (or is not finite) is not traced."""
    from sweep.trial import Trial
    from sweep.winners import traces
    runs = tmp_path / "runs"
    exploded, nan, fine = (Trial("moore", 1.0, lr, 0) for lr in (10.0, 1.0, 0.1))
    trial_on_disk(runs, exploded, [0.7, 300.0, 2200.0], [0.0, 0.05, 0.04])
    trial_on_disk(runs, nan, [0.7, float("nan"), 0.6], [0.0, 0.1, 0.2])
    trial_on_disk(runs, fine, [0.7, 0.5, 0.4], [0.5, 1.0, 1.2])
    cfg = load_config(SMOKE)
    found, failed, diverged = traces(cfg, [exploded, nan, fine], {}, str(runs))
    assert [t.trial for t in found] == [fine] and not failed
    assert [(d["trial"], d["train_loss"]) for d in diverged[:1]] == [(exploded.key, 300.0)]
    assert diverged[1]["trial"] == nan.key and np.isnan(diverged[1]["train_loss"])


def test_a_closed_terminal_stops_the_sweep_like_sigterm():
    """SIGHUP (a terminal closed over SSH) raises Interrupted as SIGINT and SIGTERM do: the
    sweep ends KILLED with interrupted.json and the resume line, not Python's exit 129."""
    with _Signals(), pytest.raises(Interrupted) as e:
        os.kill(os.getpid(), signal.SIGHUP)
        signal.sigtimedwait([], 0)
    assert e.value.signum == signal.SIGHUP


def test_a_busy_run_directory_is_refused_before_anything_is_printed(smoke_store, tmp_path, monkeypatch, capsys):
    """A second sweep on a run directory another sweep holds: one line naming the holder, before
    the header, the store check or MLflow."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with RunDir(tmp_path / "run").lock():
        assert main(smoke_args(tmp_path, smoke_store)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {tmp_path / 'run'} is in use by another sweep (PID")
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_the_resume_command_can_be_pasted_anywhere():
    """Shell-quoted, the working directory named, a higher cap added as a --set that wins."""
    import shlex
    from sweep.driver import resume_command
    command = resume_command(["--run-dir", "my runs/a b", "--set", "run.name=x y", "--set", "train.max_examples=100",
                              "--resume"], cap=4096)
    cd, _, rest = command.partition(" && ")
    assert shlex.split(cd) == ["cd", os.getcwd()]
    assert shlex.split(rest) == ["python", "-m", "sweep.run", "--run-dir", "my runs/a b", "--set", "run.name=x y",
                                 "--set", "train.max_examples=4096", "--resume"]


def test_an_empty_state_json_is_named(tmp_path):
    from sweep.checkpoint import STATE, load_state
    (tmp_path / STATE).write_text("")
    with pytest.raises(InputError, match=rf"{tmp_path / STATE}: not a readable checkpoint state"):
        load_state(tmp_path)


def test_an_arm_label_is_a_metric_name_mlflow_takes():
    """p_best.<arm> metrics: the characters MLflow refuses in a metric name (a recipe's `@E`, `=`)
    and spaces become underscores; the names of earlier sweeps' arms are unchanged."""
    from mlflow.utils.validation import _validate_metric_name
    assert [_metric_key(a) for a in ("beta=0", "psla beta=0.5", "passt@100 beta=1")] == [
        "beta_0", "psla_beta_0.5", "passt_100_beta_1"]
    _validate_metric_name(f"p_best.{_metric_key('passt@100 beta=1')}")


def test_a_sweep_failed_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """The sweep failed (here with the cut-short pickle Tune leaves on a full disk) and ending the
    MLflow parent fails too: one line, never the traceback of that second failure. With the run
    directory's disk full it names the directory and says to free space and --resume; a failure
    of another kind on a disk with room, the store working, keeps its traceback (None)."""
    import pickle
    import types
    import sqlalchemy
    import sweep.driver as driver
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.open_store(uri)
    exp = client.create_experiment("t")
    error = pickle.UnpicklingError("pickle data was truncated")

    def info():
        return {"uri": uri, "experiment_id": exp, "parent_run_id": tracking.start_parent(client, exp, "t", {}, {})}
    ok = info()
    assert driver._ended_failed(client, ok, run_dir, uri, error) is None
    assert MlflowClient(uri).get_run(ok["parent_run_id"]).info.status == "FAILED"

    def store_fails(*args, **kwargs):  # an error raised by SQLAlchemy itself, as a full disk's is
        sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}").connect()
    monkeypatch.setattr(tracking, "finish_run", store_fails)
    explained = driver._ended_failed(client, info(), run_dir, uri, error)
    assert isinstance(explained, tracking.TrackingError) and "mlflow.db" in str(explained)
    monkeypatch.setattr(driver.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=3 << 20))
    full = driver._ended_failed(client, info(), run_dir, uri, error)
    assert isinstance(full, driver.DiskFull)
    assert str(run_dir.path) in str(full) and "3.0 MiB free" in str(full) and "--resume" in str(full)
