"""A sweep continued to a higher cap, end to end on a local Ray with the smoke config: `--resume`
with a higher train.max_examples trains each unsettled trial on from its latest checkpoint, only
the examples between the caps, and gives the trace a sweep run to the higher cap at once gives."""
import json
import time

import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import children, registered_examples, smoke_args

from sweep.run import main

EVERY, A, B = 64, 312, 640
STOP = 320  # A falls inside a batch of 16: the first run's stream ends on the batch boundary after it
# one trial that cannot settle within either cap (patience 20): NOT CONVERGED at A, continued to B
ONE_TRIAL = ["sweep.betas=[1.0]", f"train.eval_every_examples={EVERY}", "sweep.patience=20"]


@pytest.mark.end_to_end
def test_a_higher_cap_continues_every_unsettled_trial(ray_local, smoke_store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    address = f"run.ray_address={ray_local.get_runtime_context().gcs_address}"
    run, ref = tmp_path / "run", tmp_path / "ref"
    args = smoke_args(tmp_path, smoke_store, *ONE_TRIAL, address)
    assert main([*args, "--set", f"train.max_examples={A}"]) == 0
    out = capsys.readouterr().out
    first = json.loads((run / "results.json").read_text())
    assert first["verdict"]["provisional"] and first["selection"]["status"] == "provisional"
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("to make it final, continue every unsettled trial to"))
    command = lines[i + 1].strip()
    assert command.startswith("cd ") and command.endswith("--resume") and "--set train.max_examples=" in command
    resumed_at = time.time()
    assert main([*args, "--set", f"train.max_examples={B}", "--resume"]) == 0
    assert main([*smoke_args(tmp_path, smoke_store, *ONE_TRIAL, address, f"train.max_examples={B}"),
                 "--run-dir", str(ref)]) == 0

    continued = json.loads((run / "results.json").read_text())
    reference = json.loads((ref / "results.json").read_text())
    (trace,), (want,) = continued["traces"], reference["traces"]
    assert trace["examples"] == want["examples"] == list(range(EVERY, B + 1, EVERY))
    assert trace["dprime"] == want["dprime"] and trace["start"] == want["start"]  # exactly: the same training
    assert continued["rows"][0]["seeds"][0]["examples_to_peak"] == reference["rows"][0]["seeds"][0]["examples_to_peak"]
    # only the examples between the caps were trained: the checkpoints up to A are the first run's
    (snapshots,) = registered_examples(run / "ray" / "train_runs" / "smoke").values()
    assert snapshots == trace["examples"]
    (trial_dir,) = (run / "ray" / "train_runs" / "smoke").iterdir()
    written = {int(d.name.removeprefix("checkpoint_")): d.stat().st_mtime for d in trial_dir.glob("checkpoint_*")
               if d.is_dir()}
    assert all((written[e] < resumed_at) == (e <= STOP) for e in trace["examples"])
    # the answer at A is kept; the MLflow run continued, one point per evaluation
    kept = next((run / "previous").glob(f"*.cap-{A}"))
    assert json.loads((kept / "results.json").read_text())["traces"][0]["examples"][-1] == STOP
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id, (child,) = children(client, run)
    assert client.get_run(parent_id).info.status == "FINISHED" and child.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_dprime")] == trace["examples"]
    assert json.loads((run / "sweep.json").read_text())["caps"] == [A, B]
