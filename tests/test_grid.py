"""The sweep's grid: schemes x betas x learning rates x seeds multiply the trials (Tune's own
expansion of the search space); replicate seeds end to end on a local Ray with the smoke config,
each arm reported once with its spread over seeds (two schemes end to end: tests/test_sweep.py);
how many trials run at once on a cluster of a given size."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sweep_checks import SMOKE, check_selection_is_exact, children, smoke_args

from sweep.config import load_config
from sweep.refine import refine
from sweep.scheduler import RefiningGrid, refined
from sweep.trial import Arm, Trial
from sweep.run import main
from sweep.select import StoppingRule


def test_the_grid_is_the_product_of_its_axes_each_trial_once():
    """Tune's searcher (sweep/scheduler.py RefiningGrid) yields one trial per scheme x beta x lr x
    seed, each once, then says it has finished."""
    from ray.tune.search import Searcher
    cfg = load_config(SMOKE, ["sweep.schemes=[moore, psla]", "sweep.betas=[0.0, 0.5, 1.0]",
                              "sweep.lrs=[0.001, 0.0003]", "sweep.seeds=[0, 1]"])
    grid = RefiningGrid(cfg, "/nonexistent", standing=None)
    points = []
    while (config := grid.suggest(f"t{len(points)}")) not in (None, Searcher.FINISHED):
        points.append(Trial.from_tune(config))
    assert config is None  # every trial still running: the grid waits for them
    for i in range(len(points)):
        grid.on_trial_complete(f"t{i}")
    assert grid.suggest("last") == Searcher.FINISHED
    want = {Trial(a.scheme, a.beta, lr, seed) for a in cfg.sweep.arms for lr in (1e-3, 3e-4) for seed in (0, 1)}
    assert len(points) == len(set(points)) == len(want) and set(points) == want == set(cfg.sweep.trials)
    assert points == cfg.sweep.trials and {t.scheme for t in points} == {"moore", "psla"}


def test_the_grid_refines_where_the_best_beta_may_lie(tmp_path):
    """A coarse grid 0, 0.5, 1 with a finest step of 0.125 and at most 6 arms: beta 0.5 is best
    with its upper neighbour within noise and beta 0 out of it. Round 1 adds the midpoints on
    both sides of each arm within noise (0.25, 0.75; recorded); round 2 those around 0.5 and 0.75
    (0.375, 0.625, 0.875), the most likely first, until the grid has 6 arms; then it is done.
    A resolved verdict refines nothing."""
    from ray.tune.search import Searcher
    cfg = load_config(SMOKE, ["sweep.betas=[0.0, 0.5, 1.0]", "sweep.beta_step=0.125", "sweep.max_arms=6"])
    asked = []

    def standing(c):
        asked.append(sorted(c.sweep.betas))
        best = Arm("moore", 0.5)
        near = min(b for b in c.sweep.betas if b > 0.5)  # the neighbour above
        return best, {best: 0.6, Arm("moore", near): 0.4, Arm("moore", 0.0): 0.0}, False
    grid, n = RefiningGrid(cfg, str(tmp_path), standing), 0
    while (config := grid.suggest(f"t{n}")) != Searcher.FINISHED:
        assert config is not None
        grid.on_trial_complete(f"t{n}")
        n += 1
    assert asked == [[0.0, 0.5, 1.0], [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.375, 0.5, 0.75, 1.0]] and n == 6
    assert refined(cfg, str(tmp_path)).sweep.betas == [0.0, 0.25, 0.375, 0.5, 0.75, 1.0]
    assert refine(cfg.sweep.arms, Arm("moore", 0.5), {Arm("moore", 1.0): 0.5}, True, 0.125, 6) == []


def test_a_new_arm_skips_a_learning_rate_eliminated_on_both_sides(tmp_path):
    """Racing eliminated lr 1e-5 as not its arm's best at beta 0 and at beta 0.5, lr 3e-4 only at
    0.5, and beta 1 whole (level "arm": that says nothing of a rate). Refinement adds 0.25 and
    0.75: 0.25 does not train 1e-5 (recorded before it starts: level "neighbours", examples 0, the
    larger p of its neighbours, named), but every other new trial runs; every new trial is still
    yielded (it ends at once when eliminated), and a beta at an end of the grid has no
    neighbours."""
    from ray.tune.search import Searcher
    from sweep.checkpoint import write_record
    from sweep.refine import neighbours, ruled_out
    from sweep.scheduler import RACING, eliminated
    cfg = load_config(SMOKE, ["sweep.betas=[0.0, 0.5, 1.0]", "sweep.beta_step=0.25", "sweep.max_arms=5",
                              "sweep.lrs=[0.001, 0.0003, 0.00001]"])

    def out(beta, lr, p, level):
        return {"trial": Trial("moore", beta, lr, 0).key, "scheme": "moore", "beta": beta, "lr": lr, "seed": 0,
                "examples": 30_000, "p": p, "level": level, "against": "lr=0.001"}
    write_record(str(tmp_path), RACING, {"eliminated": [out(0.0, 1e-5, 0.002, "lr"), out(0.5, 1e-5, 0.004, "lr"),
                                                        out(0.5, 3e-4, 0.0, "lr"), out(1.0, 1e-5, 0.0, "arm")]})
    best = Arm("moore", 0.5)
    grid, n = RefiningGrid(cfg, str(tmp_path), lambda c: (best, {best: 0.5, Arm("moore", 0.0): 0.3,
                                                                 Arm("moore", 1.0): 0.2}, False)), 0
    yielded = []
    while (config := grid.suggest(f"t{n}")) != Searcher.FINISHED:
        yielded.append(Trial.from_tune(config))
        grid.on_trial_complete(f"t{n}")
        n += 1
    assert {(t.beta, t.lr) for t in yielded[9:]} == {(b, lr) for b in (0.25, 0.75) for lr in (1e-3, 3e-4, 1e-5)}
    record = eliminated(str(tmp_path))
    new = [e for e in record.values() if e["level"] == "neighbours"]
    assert [(e["beta"], e["lr"], e["examples"], e["p"], e["against"]) for e in new] == \
        [(0.25, 1e-5, 0, 0.004, "beta=0 and beta=0.5")]
    arms = [Arm("moore", b) for b in (0.0, 0.25, 0.5)]
    assert neighbours(Arm("moore", 0.0), arms) is None and ruled_out(Arm("moore", 0.0), arms, {}) == {}


@pytest.mark.end_to_end
def test_seeds_are_replicates_of_one_arm_and_report_spread(ray_local, smoke_store, tmp_path, monkeypatch):
    """One arm (beta 1) and two seeds: two trials, one row in every output, each seed evaluated on
    its own pick, the mean and the spread over seeds, p_best per arm in MLflow. Run one at a
    time, the second trial runs in the first one's driver process (Tune's `pid`:
    resources.reuse_actors), and each logs where its start-up went."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    args = smoke_args(tmp_path, smoke_store, "sweep.betas=[1.0]", "sweep.seeds=[0, 1]", "train.max_examples=384",
                      "resources.max_concurrent_trials=1",
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
    progress = list((run / "ray").glob("*/trial_driver_*/progress.csv"))  # Tune's, one per trial
    pids = {row["pid"] for path in progress for row in csv.DictReader(path.read_text().splitlines())}
    assert len(progress) == 2 and len(pids) == 1
    phases = {"driver", "workers", "import", "model", "first_batch", "total"}
    for c in trials:
        startup = {k[len("startup."):-len("_s")]: v for k, v in c.data.metrics.items() if k.startswith("startup.")}
        assert set(startup) == phases and all(v >= 0 for v in startup.values())
        assert startup["total"] == pytest.approx(sum(v for k, v in startup.items() if k != "total"), abs=0.05)


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


def test_a_trial_that_cannot_start_is_named():
    """resources.use_gpu on a machine without GPUs, or more workers than CPUs: the key and what
    the cluster has (the driver refuses on a Ray it started, before Tune would wait forever)."""
    from sweep.tune import unfit_trial
    cfg = load_config(SMOKE)
    assert unfit_trial(cfg, {"CPU": 2}) is None
    gpu = load_config(SMOKE, ["resources.use_gpu=true"])
    assert unfit_trial(gpu, {"CPU": 2}).startswith("resources.use_gpu=true with resources.num_workers=1: a trial "
                                                   "needs 1 GPU(s), the cluster has 0")
    many = load_config(SMOKE, ["resources.num_workers=8"])
    assert "a trial needs 4.5 CPUs, the cluster has 2" in unfit_trial(many, {"CPU": 2})
