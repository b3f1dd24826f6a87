"""sweep/rundir.py: one sweep at a time in a run directory, --resume only onto the same config
and the same store, and an earlier sweep moved whole to previous/ (checkpoints included),
never deleted."""
import json
import os
import subprocess
import sys

import pytest

from sweep.config import ConfigError, load_config, to_dict
from sweep.rundir import RunDir
from sweep_checks import SMOKE


def test_one_sweep_at_a_time_and_a_dead_holder_holds_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from sweep.rundir import RunDir\n"
        f"with RunDir({str(tmp_path / 'run')!r}).lock():\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"{run.path} is in use by another sweep \(PID {holder.pid}\)"):
            with run.lock():
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with run.lock():  # the holder died: its lock went with it
        assert (run.path / ".lock").read_text() == str(os.getpid())


def test_resume_needs_the_same_config_and_the_same_clips(tmp_path):
    run = RunDir(tmp_path)
    cfg = to_dict(load_config(SMOKE))
    fps = {"train": "sha256:aaaa", "valid": "sha256:bbbb"}
    with pytest.raises(ConfigError, match="holds no earlier sweep"):
        run.check_resumable(cfg, fps)
    run.record("0a1b", "1", cfg, fps, [960])
    assert run.check_resumable(cfg, fps)["parent_run_id"] == "0a1b"
    with pytest.raises(ConfigError, match=r"--resume: sweep\.patience is 9, the sweep .* started with 3"):
        run.check_resumable(to_dict(load_config(SMOKE, ["sweep.patience=9"])), fps)
    older = json.loads(run.state_file.read_text())
    del older["config"]["model"]["arch"]  # recorded before model.arch existed: it was the default
    run.state_file.write_text(json.dumps(older))
    assert run.check_resumable(cfg, fps)["parent_run_id"] == "0a1b"
    higher = to_dict(load_config(SMOKE, ["train.max_examples=2000"]))
    assert run.check_resumable(higher, fps)["caps"] == [960]  # a higher cap continues the sweep
    with pytest.raises(ConfigError, match=r"--resume: train\.max_examples is 500, below the 960 .* can only be raised"):
        run.check_resumable(to_dict(load_config(SMOKE, ["train.max_examples=500"])), fps)
    with pytest.raises(ConfigError, match=r"sweep\.patience is 9.*\(only train\.max_examples may be raised\)"):
        run.check_resumable(to_dict(load_config(SMOKE, ["train.max_examples=2000", "sweep.patience=9"])), fps)
    with pytest.raises(ConfigError, match=r"--resume: split 'train' of the store is sha256:cccc, .* started on "
                                          r"sha256:aaaa: the store changed"):
        run.check_resumable(cfg, {**fps, "train": "sha256:cccc"})


@pytest.mark.parametrize("parent_id, named", [("0a1b2c", True), ("../../escape", False)])
def test_an_earlier_sweep_moves_whole_to_previous(tmp_path, parent_id, named):
    """results, report, predictions, sweep.json and its Tune and Train runs go to previous/<parent
    run id>/ (one path part: an id that is not one becomes a timestamp); the checkpoint paths in
    its results.json follow them; the store and the MLflow database stay."""
    run, storage = tmp_path / "run", tmp_path / "run" / "ray"
    checkpoint = storage / "train_runs" / "smoke" / "moore-beta=1-lr=0.001-seed=0" / "checkpoint_000000000064"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"w")
    (storage / "smoke").mkdir()
    (storage / "smoke" / "tuner.pkl").write_bytes(b"t")
    (storage / "train_runs" / "smoke" / "racing.json").write_text("{}")
    (storage / "train_runs" / "other").mkdir()           # another run.name's: not this sweep's
    for d in ("report", "predictions/beta=0", "store"):
        (run / d).mkdir(parents=True)
    (run / "mlflow.db").write_bytes(b"db")
    (run / "results.json").write_text(json.dumps({"rows": [{"seeds": [{"checkpoint": str(checkpoint)}]}]}))
    (run / "sweep.json").write_text(json.dumps({"parent_run_id": parent_id}))
    moved = RunDir(run).retire(str(storage), "smoke")
    assert moved.parent == run / "previous" and (moved.name == parent_id) == named
    assert sorted(p.name for p in moved.iterdir()) == ["predictions", "ray", "report", "results.json", "sweep.json"]
    new = moved / "ray" / "train_runs" / "smoke" / "moore-beta=1-lr=0.001-seed=0" / "checkpoint_000000000064"
    assert (new / "model.pt").read_bytes() == b"w" and (moved / "ray" / "smoke" / "tuner.pkl").exists()
    assert (moved / "ray" / "train_runs" / "smoke" / "racing.json").exists()
    results = json.loads((moved / "results.json").read_text())
    assert results["rows"][0]["seeds"][0]["checkpoint"] == str(new)  # where sweep.evaluate --checkpoint finds it
    assert sorted(p.name for p in run.iterdir()) == ["mlflow.db", "previous", "ray", "store"]
    assert (storage / "train_runs" / "other").exists() and not (tmp_path / "escape").exists()
    assert RunDir(run).retire(str(storage), "smoke") is None  # nothing left to move


def test_what_is_not_a_sweep_is_left_alone(tmp_path):
    run, storage = tmp_path / "run", tmp_path / "storage"
    (storage / "smoke").mkdir(parents=True)
    (storage / "smoke" / "data.csv").write_text("somebody's")
    with pytest.raises(ConfigError, match=r"is not an earlier sweep's Ray storage; leaving it alone"):
        RunDir(run).retire(str(storage), "smoke")
    assert (storage / "smoke" / "data.csv").read_text() == "somebody's"
