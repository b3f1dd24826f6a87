"""The oversampling stream: exact counts, determinism, mixing, budgets, Ray Train sharding."""
import json

import numpy as np
import pytest

from data.balance import oversampled_counts, oversampling_factors
from data.stream import (block_rows, duplicates_per_batch, oversampled_dataset, plan_stream,
                         sampler_audit)


def _order(plan):
    return np.concatenate([block_rows(plan, b) for b in range(len(plan.blocks))])


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_a_pass_repeats_each_clip_exactly(synth_store, beta):
    plan = plan_stream(synth_store, "train", beta, seed=1, units_per_block=4)
    expected = oversampling_factors(synth_store.labels("train"), beta)
    np.testing.assert_array_equal(plan.factors, expected)
    counts = np.bincount(_order(plan), minlength=len(expected))
    np.testing.assert_array_equal(counts, expected)
    assert plan.examples == expected.sum()


def test_plan_is_deterministic_and_epochs_differ(synth_store):
    a = _order(plan_stream(synth_store, "train", 0.5, seed=1))
    b = _order(plan_stream(synth_store, "train", 0.5, seed=1))
    c = _order(plan_stream(synth_store, "train", 0.5, seed=1, epoch=1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.9 and np.array_equal(np.sort(a), np.sort(c))


def test_budget_spans_passes_and_skip_resumes(synth_store):
    one = plan_stream(synth_store, "train", 1.0, seed=2).examples
    plan = plan_stream(synth_store, "train", 1.0, seed=2, examples=int(2.5 * one))
    assert plan.examples >= 2.5 * one and set(plan.block_seeds[:, 0]) == {0, 1, 2}
    full = _order(plan)
    np.testing.assert_array_equal(np.bincount(full[:one]), oversampling_factors(
        synth_store.labels("train"), 1.0))  # the first pass is exact on its own
    resumed = plan_stream(synth_store, "train", 1.0, seed=2, examples=1000, skip=one + 123)
    assert resumed.block_start[0] <= one + 123 < resumed.block_start[0] + resumed.block_rows[0]
    assert resumed.examples >= 1000


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_duplicates_per_batch_near_a_random_permutation(synth_store, beta):
    audit = sampler_audit(synth_store, "train", beta, seed=0, batch_size=32)
    assert audit["duplicates_per_batch"] <= 1.5 * audit["duplicates_per_batch_ideal"] + 1e-9
    assert audit["class_mix_distance"] <= 1.25 * audit["class_mix_distance_ideal"]
    labels = synth_store.labels("train")
    factors = oversampling_factors(labels, beta)
    assert audit["epoch_length"] == factors.sum()
    assert audit["epoch_inflation"] == pytest.approx(factors.sum() / len(factors))
    assert audit["exposure"] == oversampled_counts(labels, factors, synth_store.n_classes).tolist()
    assert audit["distinct_clips"] == len(synth_store.clip_ids("train"))
    assert audit["max_repeat"] > 1


def test_class_mix_distance_by_hand():
    from data.balance import as_multilabels
    from data.stream import class_mix_distance
    labels = as_multilabels([[0], [1]])
    assert class_mix_distance(np.array([0, 1, 0, 1]), labels, 2, 2) == 0.0  # every batch is the pass
    assert class_mix_distance(np.array([0, 0, 1, 1]), labels, 2, 2) == pytest.approx(0.5)


def test_duplicates_statistic_by_hand():
    assert duplicates_per_batch(np.array([1, 1, 2, 3, 4, 4, 4, 5]), 4) == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert duplicates_per_batch(np.arange(10), 5) == 0.0


def test_ray_dataset_is_exact_and_deterministic(ray_local, synth_store):
    def pass_ids(epoch):
        ds = oversampled_dataset(synth_store.root, "train", 1.0, seed=4, epoch=epoch)
        out = {"clip_index": [], "position": [], "clip_id": []}
        for b in ds.iter_batches(batch_size=100, batch_format="numpy"):
            for k in out:
                out[k].append(b[k])
            assert b["mel"].shape[1:] == (synth_store.frames, synth_store.mels)
            assert b["target"].shape[1] == synth_store.n_classes
        return {k: np.concatenate(v) for k, v in out.items()}
    a, b, c = pass_ids(0), pass_ids(0), pass_ids(1)
    factors = oversampling_factors(synth_store.labels("train"), 1.0)
    np.testing.assert_array_equal(np.bincount(a["clip_index"], minlength=len(factors)), factors)
    np.testing.assert_array_equal(a["clip_index"], b["clip_index"])
    np.testing.assert_array_equal(a["position"], np.arange(len(a["position"])))
    assert (a["clip_index"] != c["clip_index"]).mean() > 0.9
    ids = synth_store.clip_ids("train")
    assert (a["clip_id"] == ids[a["clip_index"]]).all()


def test_two_train_workers_see_disjoint_parts_of_the_pass(ray_local, synth_store, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config):
        ctx = ray.train.get_context()
        seen = [int(p) for b in ray.train.get_dataset_shard("train").iter_batches(
            batch_size=64, batch_format="numpy") for p in b["position"]]
        path = f"{config['out']}/rank{ctx.get_world_rank()}.json"
        with open(path, "w") as f:
            json.dump(seen, f)
        ray.train.report({"rows": len(seen)})

    trainer = TorchTrainer(
        loop, train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": lambda: oversampled_dataset(synth_store.root, "train", 0.5, seed=0)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(name="disjoint", storage_path=str(tmp_path / "ray")))
    trainer.fit()
    r0, r1 = (set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1))
    total = int(oversampling_factors(synth_store.labels("train"), 0.5).sum())
    assert r0 and r1 and not (r0 & r1)
    assert len(r0) == len(r1) and total - 1 <= len(r0 | r1) <= total  # equal split drops < 2 rows
