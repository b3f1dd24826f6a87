"""The sweep on a multi-node Ray cluster: a head and two worker nodes on this machine.

`ray.cluster_utils.Cluster` starts three raylets (one CPU each, all on 127.0.0.1). The session's
local Ray (`ray_local`) must not run beside it: this module shuts it down first, and the next
test that asks for `ray_local` starts it again (tests/conftest.py). The sweep connects as it
would to a `ray up` cluster: `--set run.ray_address=<head>`.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import actors, check_selection_is_exact, children, free_port, smoke_args

from sweep.checkpoint import MODEL, list_checkpoints
from sweep.run import main
from sweep.select import StoppingRule, checkpoints_to_keep, settled, smoothed


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster
    if ray.is_initialized():  # the session's ray_local: one Ray at a time on this machine
        ray.shutdown()
    # Every node on the loopback address only (cluster mode is off for the tests: conftest.py)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    # a free dashboard port, not Ray's default 8265: another Ray on a shared machine may hold it
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                                      "dashboard_port": free_port()})
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


def test_sweep_spans_nodes(cluster, mlflow_server, smoke_store, tmp_path, monkeypatch):
    """One trial of two Train workers, one CPU each, on 1-CPU nodes, logging to a real `mlflow
    server`: the worker group spans two nodes (DDP over gloo between raylets), validation is
    scored half on each rank, both ranks stop on rank 0's decision as soon as the pick settles
    (patience 1), the weights are pruned as the trial goes (keep_checkpoints=1), and the sweep's
    answer, predictions, tables and MLflow runs are complete and agree."""
    from ray.util.state import list_nodes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "balance-multinode")  # wins over run.mlflow_experiment
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run = tmp_path / "run"
    assert main(smoke_args(tmp_path, smoke_store, f"run.ray_address={cluster.address}", "sweep.betas=[1.0]",
                           "sweep.patience=1", "train.keep_checkpoints=1",
                           "resources.num_workers=2", "resources.cpus_per_worker=1")) == 0

    nodes = {n.node_id for n in list_nodes(address=cluster.address)}
    assert len(nodes) == 3
    workers = actors(cluster.address, "RayTrainWorker", detail=True)
    assert len(workers) == 2, [(w.pid, w.state) for w in workers]  # one worker group, no restart
    assert len({w.node_id for w in workers}) == 2 and {w.node_id for w in workers} <= nodes

    results = json.loads((run / "results.json").read_text())
    assert [r["beta"] for r in results["rows"]] == [1.0] and not results["failed"]
    assert results["selection"]["beta"] == 1.0 and not (run / "mlflow.db").exists()
    rule = StoppingRule(3, 1, 2.0)  # the smoke config's window and ratio, patience 1
    check_selection_is_exact(results, rule, cap_evals=15)
    (row,), (trace,) = results["rows"], results["traces"]
    (pick_,) = row["seeds"]
    for split in ("eval_public", "eval_internal"):
        m = row["eval"][split]
        assert 0 < m["mAP"] <= 1 and 0 < m["AUC"] <= 1 and np.isfinite(m["dprime"])
        pred = np.load(run / "predictions" / "moore-beta=1" / "seed=0" / f"{split}.npz")
        assert pred["scores"].shape == pred["targets"].shape == (len(pred["clip_ids"]), 8)
    table = (run / "results.txt").read_text()
    assert "Table 4: mAP" in table and f"{row['eval']['eval_public']['mAP']:.4f}" in table
    # pruned as the trial went: weights only where selection could still pick, one optimizer
    checkpoints = list_checkpoints(str(Path(pick_["checkpoint"]).parent))
    d = np.array(trace["dprime"])
    assert checkpoints[-1][1].history["val_dprime"] == trace["dprime"]
    kept = [j for j, (path, _) in enumerate(checkpoints) if (Path(path) / MODEL).is_file()]
    assert kept == sorted(checkpoints_to_keep(d, 3, 1))
    assert [(Path(p) / "optimizer.pt").is_file() for p, _ in checkpoints].count(True) == 1

    client = MlflowClient(mlflow_server)
    parent_id, (child,) = children(client, run)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.betas"] == "[1.0]"
    assert client.get_experiment(parent.info.experiment_id).name == "balance-multinode"
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"results.json", "results.txt", "report"}
    assert child.info.status == "FINISHED", child.data.tags.get("error")
    assert child.data.params["lr"] == "0.001" and child.data.tags["dataset.fingerprint"].startswith("sha256:")
    assert child.data.tags["trial"] == trace["trial"]
    # both ranks left the loop together on rank 0's decision: settled, or the cap
    assert (child.data.tags["stopped"] == "settled") == (child.data.tags["converged"] == "true") \
        == settled(d, np.array(trace["examples"]), rule, trace["start"])
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_dprime")] == trace["examples"]
    # "smoothed" in MLflow is the centred full-window value selection uses, at its centre
    smooth = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "val_dprime_smoothed")}
    want = {e: v for e, v in zip(trace["examples"], smoothed(d, 3)) if np.isfinite(v)}
    assert smooth.keys() == want.keys() and all(smooth[e] == pytest.approx(want[e]) for e in want)
    assert "audit.epoch_inflation" in child.data.params and "audit.epoch_inflation" not in child.data.metrics
    assert any(a.path == "audit" for a in client.list_artifacts(child.info.run_id))

    # validation sharded over the two ranks gives the metrics one process computes alone
    from data.store import open_store
    from sweep.evaluate import evaluate_split, load_model
    alone = evaluate_split(load_model(pick_["checkpoint"]), open_store(smoke_store),
                           "valid", 256)["metrics"]
    sharded = trace["dprime"][trace["examples"].index(pick_["examples_to_peak"])]
    assert alone["dprime"] == pytest.approx(sharded, abs=1e-6)  # batch sizes differ: float noise only
