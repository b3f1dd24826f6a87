"""What the end-to-end sweep tests (tests/test_sweep.py, tests/test_grid.py,
tests/test_multinode.py) share: the smoke config's arguments, the MLflow children of a sweep,
Ray actors by class, the checkpoints Train has registered, the check that selection evaluated
exactly what it picked, and a free port on the loopback."""
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from sweep.checkpoint import MODEL, load_state
from sweep.select import StoppingRule, pick, settled, smoothed

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


def check_selection_is_exact(results: dict, rule: StoppingRule, cap_evals: int) -> None:
    """Every pick's evaluated checkpoint is the selected evaluation's own, the pick is the one
    sweep.select makes on the trace, and each trial stopped exactly when its pick settled (or
    at the cap)."""
    traces = {t["trial_id"]: t for t in results["traces"]}
    for row in results["rows"]:
        for pick_ in row["seeds"]:
            trace = traces[pick_["trial_id"]]
            d, ex = np.array(trace["dprime"]), np.array(trace["examples"])
            i = pick(d, rule.window)
            assert pick_["examples_to_peak"] == trace["examples"][i] == pick_["examples_evaluated"]
            assert load_state(pick_["checkpoint"])["examples"] == pick_["examples_to_peak"]
            assert (Path(pick_["checkpoint"]) / MODEL).is_file()
            assert pick_["val_dprime"] == pytest.approx(smoothed(d, rule.window)[i])
            assert pick_["converged"] == settled(d, ex, rule)
            assert not any(settled(d[:k], ex[:k], rule) for k in range(1, len(d)))  # stopped at once
            assert pick_["converged"] or len(d) == cap_evals
