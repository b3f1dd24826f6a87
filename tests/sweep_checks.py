"""What the sweep tests share: the smoke config's arguments, the MLflow children of a sweep, Ray
actors by class, the checkpoints Train has registered, a trial's checkpoints written as a trial
writes them, the check that selection evaluated exactly what it picked, and a free port on the
loopback."""
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from sweep.checkpoint import MODEL, STATE, checkpoint_dir, load_state, write_progress
from sweep.history import TrialState
from sweep.select import StoppingRule, pick, settled, smoothed
from sweep.trial import Trial

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_args(tmp_path: Path, store: Path, *overrides: str) -> list[str]:
    """`sweep.run` arguments for the smoke config in tmp_path/run, on the session's smoke store."""
    return ["--config", str(SMOKE), "--run-dir", str(tmp_path / "run"),
            "--set", f"data.store={store}", *sum((["--set", o] for o in overrides), [])]


def children(client, run_dir: Path) -> tuple[str, list]:
    """The sweep's MLflow parent run id and its child runs (one per trial)."""
    parent_id = json.loads((run_dir / "sweep.json").read_text())["parent_run_id"]
    exp = client.get_run(parent_id).info.experiment_id
    return parent_id, client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def actors(address: str, class_name: str, **kw) -> list:
    """Actors of the Ray at `address` (named: another Ray may run on the machine)."""
    from ray.util.state import list_actors
    return list_actors(address=address, filters=[("class_name", "=", class_name)], limit=10_000, **kw)


def registered_examples(train_runs: Path) -> dict[str, list[int]]:
    """Per Train run, the examples at each checkpoint Train's controller has registered."""
    out = {}
    for snap in train_runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snap.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # being written
            continue
        out[snap.parent.name] = [int(r["metrics"]["examples"]) for r in results]
    return out


def trial_on_disk(runs: Path, trial: Trial, losses: list[float], dprime: list[float], stopped: str | None = "settled",
                  every: int = 64) -> None:
    """A trial's Train run under `runs` as training leaves it: a checkpoint directory per
    evaluation (every `every` examples) holding its state.json (no weights), the last one
    `stopped` as given, and the record of what Train registered."""
    examples = [every * (i + 1) for i in range(len(losses))]
    history = {"examples": examples, "train_loss": losses, "val_mAP": [d / 4 for d in dprime], "val_AUC": dprime,
               "val_dprime": dprime}
    for i, e in enumerate(examples):
        ckpt = runs / trial.key / checkpoint_dir(e)
        ckpt.mkdir(parents=True)
        state = TrialState(trial, e, i + 1, stopped if i == len(examples) - 1 else None,
                           history={k: v[:i + 1] for k, v in history.items()})
        (ckpt / STATE).write_text(json.dumps(state.to_json()))
    write_progress(str(runs / trial.key), examples[-1])


def check_selection_is_exact(results: dict, rule: StoppingRule, cap_evals: int) -> None:
    """Every pick's evaluated checkpoint is the selected evaluation's own, the pick is the one
    sweep.select makes on the trace, and each trial stopped exactly when its pick settled (or
    at the cap)."""
    traces = {t["trial"]: t for t in results["traces"]}
    for row in results["rows"]:
        for pick_ in row["seeds"]:
            trace = traces[pick_["trial"]]
            d, ex, start = np.array(trace["dprime"]), np.array(trace["examples"]), trace["start"]
            i = pick(d, rule.window)
            assert pick_["examples_to_peak"] == trace["examples"][i] == pick_["examples_evaluated"]
            assert load_state(pick_["checkpoint"])["examples"] == pick_["examples_to_peak"]
            assert (Path(pick_["checkpoint"]) / MODEL).is_file()
            assert pick_["val_dprime"] == pytest.approx(smoothed(d, rule.window)[i])
            assert start is not None and pick_["converged"] == settled(d, ex, rule, start)
            assert not any(settled(d[:k], ex[:k], rule, start) for k in range(1, len(d)))  # stopped at once
            assert pick_["converged"] or len(d) == cap_evals
