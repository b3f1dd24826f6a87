"""The sweep's grid: schemes x betas x learning rates x seeds multiply the trials (Tune's own
expansion of the search space); replicate seeds end to end on a local Ray with the smoke config,
each arm reported once with its spread over seeds (two schemes end to end: tests/test_sweep.py);
how many trials run at once on a cluster of a given size."""
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.search.variant_generator import generate_variants
from sweep_checks import SMOKE, check_selection_is_exact, children, smoke_args

from sweep.config import load_config
from sweep.trial import Trial
from sweep.run import main
from sweep.select import StoppingRule
from sweep.tune import param_space


def test_the_search_space_is_the_product_of_its_axes():
    """Tune expands the search space into one trial per scheme x beta x lr x seed, each once."""
    cfg = load_config(SMOKE, ["sweep.schemes=[moore, psla]", "sweep.betas=[0.0, 0.5, 1.0]",
                              "sweep.lrs=[0.001, 0.0003]", "sweep.seeds=[0, 1]"])
    points = [Trial.from_tune(config) for _, config in generate_variants(param_space(cfg))]
    want = {Trial(a.scheme, a.beta, lr, seed) for a in cfg.sweep.arms for lr in (1e-3, 3e-4) for seed in (0, 1)}
    assert len(points) == len(set(points)) == len(want) and set(points) == want == set(cfg.sweep.trials)
    assert {t.scheme for t in points} == {"moore", "psla"}


@pytest.mark.end_to_end
def test_seeds_are_replicates_of_one_arm_and_report_spread(ray_local, smoke_store, tmp_path, monkeypatch):
    """One arm (beta 1) and two seeds: two trials, one row in every output, each seed evaluated on
    its own pick, the mean and the spread over seeds, p_best per arm in MLflow."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = smoke_args(tmp_path, smoke_store, "sweep.betas=[1.0]", "sweep.seeds=[0, 1]", "train.max_examples=384",
                      f"run.ray_address={ray_local.get_runtime_context().gcs_address}")
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["beta=1"] and not results["failed"]
    assert len(results["traces"]) == 2 and set(results["p_best"]) == {"beta=1"}
    assert results["confidence"]["seeds"] == 2
    (row,) = results["rows"]
    assert [s["seed"] for s in row["seeds"]] == [0, 1] and row["seeds"][0]["trial"] != row["seeds"][1]["trial"]
    for split in results["eval_splits"]:
        values = [s["eval"][split]["mAP"] for s in row["seeds"]]
        assert row["eval"][split]["mAP"] == pytest.approx(np.mean(values))
        assert row["eval_sd"][split]["mAP"] == pytest.approx(np.std(values)) and row["eval_sd"][split]["mAP"] > 0
        for seed in (0, 1):
            assert (run / "predictions" / "moore-beta=1" / f"seed={seed}" / f"{split}.npz").is_file()
    check_selection_is_exact(results, StoppingRule(3, 3, 2.0), cap_evals=6)
    assert "mean +- sd over 2 seeds" in (run / "results.txt").read_text()
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    parent_id, trials = children(client, run)
    assert sorted(c.data.tags["mlflow.runName"] for c in trials) == ["beta=1 lr=0.001 seed=0", "beta=1 lr=0.001 seed=1"]
    p_best = "provisional_p_best" if results["verdict"]["provisional"] else "p_best"  # named as sure as it is
    parent = client.get_run(parent_id)
    assert f"{p_best}.beta_1" in parent.data.metrics and parent.data.tags["p_best"] in ("provisional", "final")
    assert parent.info.run_name.endswith(f": beta=1, {results['verdict']['word']}")


def test_trial_concurrency_follows_the_cluster(caplog):
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
