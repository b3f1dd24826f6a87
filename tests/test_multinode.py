"""The sweep on a multi-node Ray cluster: a head and two worker nodes on this machine.

`ray.cluster_utils.Cluster` starts three raylets (one CPU each, all on 127.0.0.1). The session's
local Ray (`ray_local`) must not run beside it: this module shuts it down first, and the next
test that asks for `ray_local` starts it again (tests/conftest.py). The sweep connects as it
would to a `ray up` cluster: `--set run.ray_address=<head>`.
"""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sweep.run import main
from sweep.select import settled

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster
    if ray.is_initialized():  # the session's ray_local: one Ray at a time on this machine
        ray.shutdown()
    # Every node on the loopback address only (cluster mode is off for the tests: conftest.py)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": True,
                                                      "dashboard_host": "127.0.0.1"})
    try:
        # Cluster records its address as "the" local Ray: a plain ray.init() anywhere on this
        # shared machine would join it. Forget it; the test names the address.
        reset_ray_address()
        for _ in range(2):
            c.add_node(**node)
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def test_sweep_spans_nodes(cluster, tmp_path, monkeypatch):
    """Two Train workers per trial, one CPU each, on 1-CPU nodes: every worker group spans two
    nodes (DDP over gloo between raylets), validation is scored half on each rank, both ranks
    stop on rank 0's decision, the trials finish and the sweep completes."""
    from ray.util.state import list_actors, list_nodes
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run = tmp_path / "run"
    store = tmp_path.parent / "smoke-store"
    assert main(["--config", str(SMOKE), "--run-dir", str(run), "--set", f"data.store={store}",
                 "--set", f"run.ray_address={cluster.address}", "--set", "sweep.patience=1",
                 "--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=1"]) == 0

    nodes = {n.node_id for n in list_nodes(address=cluster.address)}
    assert len(nodes) == 3
    workers = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")],
                          detail=True, limit=1000)
    groups = defaultdict(list)  # one placement group per worker group (a trial's Train run)
    for w in workers:
        groups[w.placement_group_id].append(w.node_id)
    assert len(groups) == 2, dict(groups)  # one worker group per trial, no restarts
    for group_nodes in groups.values():
        assert len(group_nodes) == 2 and len(set(group_nodes)) == 2, group_nodes  # two nodes each
    assert {n for g in groups.values() for n in g} <= nodes

    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [0.0, 1.0] and not results["failed"]
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id = json.loads((run / "sweep.json").read_text())["parent_run_id"]
    exp = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == 2
    traces = {t["trial_id"]: t for t in results["traces"]}
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags.get("error")
        trace = traces[c.data.tags["ray_trial_id"]]
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_dprime")] == trace["examples"]
        # both ranks left the loop together on rank 0's decision (settled, or the cap)
        assert c.data.tags["stopped"] in ("settled", "cap")
        assert (c.data.tags["stopped"] == "settled") == settled(np.array(trace["dprime"]), 3, 1)

    # validation sharded over the two ranks gives the metrics one process computes alone
    from data.store import open_store
    from sweep.checkpoint import load_model
    from sweep.evaluate import evaluate_split
    for row in results["rows"]:
        alone = evaluate_split(load_model(row["checkpoint"]), open_store(store), "valid", 256)["metrics"]
        trace = traces[row["trial_id"]]
        sharded = trace["dprime"][trace["examples"].index(row["examples_to_peak"])]
        assert alone["dprime"] == pytest.approx(sharded, abs=1e-6)  # batch sizes differ: float noise only
