"""The sweep's grid: schemes x betas x seeds multiply the trials, and every output reports each
arm once with its spread over seeds (end to end on a local Ray with the smoke config); how many
trials run at once on a cluster of a given size."""
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import check_selection_is_exact, children, smoke_args

from sweep.run import main
from sweep.select import StoppingRule


@pytest.mark.end_to_end
def test_schemes_and_seeds_multiply_the_grid_and_report_spread(ray_4_cpus, smoke_store, tmp_path, monkeypatch):
    """Two schemes at beta 1 and two seeds: four trials, two arms in every output,
    each arm's two seeds evaluated on their own picks, the spread over seeds and p_best per arm;
    each trial streams its own scheme (the sampler audit MLflow logs differs between them)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = smoke_args(tmp_path, smoke_store, "sweep.schemes=[moore, psla]", "sweep.betas=[1.0]", "sweep.seeds=[0, 1]",
                      "train.max_examples=384", f"run.ray_address={ray_4_cpus.get_runtime_context().gcs_address}")
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    arms = ["moore beta=1", "psla beta=1"]
    assert [r["label"] for r in results["rows"]] == arms and not results["failed"]
    assert len(results["traces"]) == 4 and set(results["p_best"]) == set(arms)
    assert sum(results["p_best"].values()) == pytest.approx(1.0) and results["confidence"]["seeds"] == 2
    for r in results["rows"]:
        assert [s["seed"] for s in r["seeds"]] == [0, 1] and r["seeds"][0]["trial_id"] != r["seeds"][1]["trial_id"]
        split = results["eval_splits"][0]
        values = [s["eval"][split]["mAP"] for s in r["seeds"]]
        assert r["eval"][split]["mAP"] == pytest.approx(np.mean(values))
        assert r["eval_sd"][split]["mAP"] == pytest.approx(np.std(values)) and r["eval_sd"][split]["mAP"] > 0
        for seed in (0, 1):
            assert (run / "predictions" / f"{r['scheme']}-beta={r['beta']:g}" / f"seed={seed}" / f"{split}.npz").is_file()
    check_selection_is_exact(results, StoppingRule(3, 3, 2.0), cap_evals=6)
    assert "mean +- sd over 2 seeds" in (run / "results.txt").read_text()
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id, trials = children(client, run)
    assert sorted(c.data.tags["mlflow.runName"].split(" lr=")[0] for c in trials) == sorted(arms * 2)
    audit = {c.data.params["scheme"]: c.data.metrics["audit.epoch_inflation"] for c in trials}
    assert set(audit) == {"moore", "psla"} and audit["moore"] != audit["psla"]
    metrics = client.get_run(parent_id).data.metrics
    assert {"p_best.moore_beta_1", "p_best.psla_beta_1"} <= set(metrics)


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
