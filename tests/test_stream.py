"""The balancing stream, for every draw mode (repeats, replacement, subset, round robin): exact
counts, determinism, mixing, budgets and exact resume, compact plans shipped by reference, many
consumers, Ray Train sharding; the sampler audit."""
import json
import logging
import threading

import numpy as np
import pytest

from data.balance import class_counts, oversampled_counts, oversampling_factors
from data.draws import epoch_draw, exposure_stats
from data.shards import ROW_GROUP_ROWS
from data.audit import (class_mix_distance, deal_blocks, distinct_classes_per_batch, duplicates_per_batch,
                        sampler_audit)
from data.permute import keyed_permutation
from data.stream import (SplitIndex, block_rows, default_units_per_block, oversampled_dataset, plan_stream,
                         max_units_per_block, read_blocks, split_labels, stream_execution_options)


DRAWN = ["ast", "passt@300", "panns"]   # replacement, subset (300 of 1,028 clips), round robin
RECIPES = ["moore", *DRAWN]


def _order(plan):
    return np.concatenate([block_rows(plan, b) for b in range(len(plan.block_rows))])


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("units_per_block", [4, default_units_per_block(32)])
def test_a_pass_repeats_each_clip_exactly(synth_store, beta, units_per_block):
    plan = plan_stream(synth_store, "train", beta, seed=1, units_per_block=units_per_block)
    assert set(np.diff(plan.groups.start)[:-1].tolist()) == {ROW_GROUP_ROWS} == {4}  # as stores are written
    expected = oversampling_factors(synth_store.labels("train"), beta)
    np.testing.assert_array_equal(plan.index.counts(1, 0), expected)
    counts = np.bincount(_order(plan), minlength=len(expected))
    np.testing.assert_array_equal(counts, expected)
    assert plan.examples == expected.sum()


@pytest.mark.parametrize("recipe", DRAWN)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_a_drawn_pass_emits_its_epochs_draws(synth_store, recipe, beta):
    """A pass of a drawn recipe emits each clip as often as its epoch drew it (E rows), in
    blocks of units_per_block x 4 rows but the last."""
    plan = plan_stream(synth_store, "train", beta, seed=1, units_per_block=16, recipe=recipe)
    draw = epoch_draw(synth_store.labels("train"), synth_store.n_classes, recipe, beta)
    counts = plan.index.counts(1, 0)
    np.testing.assert_array_equal(counts, draw.counts(1, 0))
    np.testing.assert_array_equal(np.bincount(_order(plan), minlength=len(counts)), counts)
    assert plan.examples == draw.length == counts.sum() and set(plan.block_rows[:-1].tolist()) == {64}


@pytest.mark.parametrize("recipe", RECIPES)
def test_plan_is_deterministic_and_epochs_differ(synth_store, recipe):
    a = _order(plan_stream(synth_store, "train", 0.5, seed=1, recipe=recipe))
    b = _order(plan_stream(synth_store, "train", 0.5, seed=1, recipe=recipe))
    c = _order(plan_stream(synth_store, "train", 0.5, seed=1, epoch=1, recipe=recipe))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.9 and np.array_equal(np.sort(a), np.sort(c)) == (recipe == "moore")


@pytest.mark.parametrize("recipe", RECIPES)
def test_budget_spans_passes_and_skip_resumes(synth_store, recipe):
    one = plan_stream(synth_store, "train", 1.0, seed=2, recipe=recipe).examples
    plan = plan_stream(synth_store, "train", 1.0, seed=2, examples=int(2.5 * one), recipe=recipe)
    assert plan.examples >= 2.5 * one and set(plan.block_seeds[:, 0]) == {0, 1, 2}
    full = _order(plan)
    np.testing.assert_array_equal(np.bincount(full[:one], minlength=len(plan.index.labels)),
                                  plan.index.counts(2, 0))  # the first pass is exact on its own
    resumed = plan_stream(synth_store, "train", 1.0, seed=2, examples=1000, skip=one + 123, recipe=recipe)
    assert resumed.block_start[0] <= one + 123 < resumed.block_start[0] + resumed.block_rows[0]
    assert resumed.examples >= 1000


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_keyed_permutation_is_a_permutation_that_changes_with_the_key(n):
    a = keyed_permutation(np.arange(n), n, (3, 0))
    np.testing.assert_array_equal(np.sort(a), np.arange(n))
    np.testing.assert_array_equal(keyed_permutation(np.arange(n)[::-1], n, (3, 0)), a[::-1])  # position by position
    if n >= 64:
        assert (keyed_permutation(np.arange(n), n, (3, 1)) != a).mean() > 0.9
        assert (keyed_permutation(np.arange(n), n, (4, 0)) != a).mean() > 0.9


def test_split_labels_match_the_store(synth_store):
    from data.shards import RowGroups
    labels, groups = split_labels(synth_store, "train")
    ref, ref_groups = synth_store.labels("train"), RowGroups.of(synth_store.shard_paths("train"))
    np.testing.assert_array_equal(labels.offsets, ref.offsets)
    np.testing.assert_array_equal(labels.indices, ref.indices)
    assert groups.paths == ref_groups.paths
    for field in ("shard", "index", "start"):
        np.testing.assert_array_equal(getattr(groups, field), getattr(ref_groups, field))


def test_unit_sizes_match_the_units(synth_store):
    labels, groups = split_labels(synth_store, "train")
    index = SplitIndex.build(groups, oversampling_factors(labels, 1.0), labels)
    sizes = index.unit_sizes()
    assert len(sizes) == index.units and sizes.sum() == index.rows_per_pass
    np.testing.assert_array_equal(sizes, [len(index.unit_rows([u])) for u in range(index.units)])


@pytest.mark.parametrize("recipe", RECIPES)
def test_skip_past_whole_passes_gives_the_same_stream(synth_store, recipe):
    one = plan_stream(synth_store, "train", 0.5, seed=5, recipe=recipe).examples
    skip = 2 * one + 123
    full = _order(plan_stream(synth_store, "train", 0.5, seed=5, examples=skip + 500, recipe=recipe))
    resumed = plan_stream(synth_store, "train", 0.5, seed=5, examples=500, skip=skip, recipe=recipe)
    assert resumed.block_seeds[:, 0].min() == 2  # passes 0 and 1 are not planned at all
    got = _order(resumed)[skip - resumed.block_start[0]:][:500]
    np.testing.assert_array_equal(got, full[skip:skip + 500])


@pytest.mark.parametrize("recipe", ["moore", "passt@300"])
def test_readers_rebuild_the_plan_from_spans(synth_store, recipe):
    """What the readers get (the index, a few numbers per span) gives the planned rows and
    positions, rows before `skip` left out."""
    from data.stream import _Spec, _spans
    plan = plan_stream(synth_store, "train", 1.0, seed=6, examples=30_000, skip=777, recipe=recipe)
    spans = _spans(plan, max_spans=7)
    sizes = [s["blocks"] for s in spans]
    assert sizes[:3] == [1, 2, 4] and sum(sizes) == len(plan.block_rows)  # the first rows come soon
    assert len(spans) <= 7 + int(np.log2(max(sizes))) + 1
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip,
                 (synth_store.frames, synth_store.mels))
    batch = {k: np.array([s[k] for s in spans]) for k in ("first", "blocks", "start")}
    out = list(read_blocks(batch, plan.index, spec))
    position = np.concatenate([o["position"] for o in out])
    np.testing.assert_array_equal(position, np.arange(777, 777 + len(position)))
    assert len(position) == plan.examples >= 30_000
    expected = _order(plan)[777 - plan.block_start[0]:]
    np.testing.assert_array_equal(np.concatenate([o["clip_index"] for o in out]), expected)


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
    assert audit["max_clip_exposure"] == factors.max() > 1 and audit["exposure_deviation"] == 0


@pytest.mark.parametrize("recipe", ["ast@20000", "passt@500", "panns@20000"])
def test_drawn_batches_mix_like_a_random_order(synth_store, recipe):
    """A drawn epoch's batches (4 workers' batches of 32) against random orders of the same rows:
    a block is a uniform sample of the epoch's draws, so the ratios are 1 but for noise."""
    audit = sampler_audit(synth_store, "train", 1.0, seed=0, batch_size=128, workers=4, recipe=recipe)
    assert audit["audited_examples"] == audit["epoch_length"] == int(recipe.partition("@")[2])
    assert 0.97 <= audit["distinct_classes_ratio"] <= 1.03 and 0.95 <= audit["class_mix_ratio"] <= 1.05, audit
    assert audit["duplicates_per_batch"] <= 1.1 * audit["duplicates_per_batch_ideal"] + 1e-9
    assert (audit["duplicates_per_batch"] == 0) == recipe.startswith("passt")  # without replacement: none


def test_a_subset_epoch_never_draws_a_clip_twice(synth_store):
    """Five epochs of 300 of the 1,028 clips: each 300 distinct clips, other ones each epoch."""
    plan = plan_stream(synth_store, "train", 1.0, seed=3, examples=1500, recipe="passt@300")
    epochs = _order(plan).reshape(5, 300)
    assert all(len(set(e.tolist())) == 300 for e in epochs)
    assert len(set(epochs[0].tolist()) & set(epochs[1].tolist())) < 300


def test_replacement_epochs_match_expectation_within_sampling_error(synth_store):
    """20 epochs of ast (1,028 draws with replacement each) as the stream emits them: each class's
    draws, summed over its clips, are Binomial(20 E, p_k) (p_k the chance of a clip labelled k);
    every class within 4.5 sd, and the sum of squared z about the number of classes."""
    labels, k = synth_store.labels("train"), synth_store.n_classes
    plan = plan_stream(synth_store, "train", 1.0, seed=4, examples=20 * 1028, recipe="ast")
    got = class_counts(labels, k, weights=np.bincount(_order(plan), minlength=len(labels)))
    p = np.array(exposure_stats(labels, epoch_draw(labels, k, "ast", 1.0).expected(), k)["exposure"]) / 1028
    p_k = p.clip(max=1)  # p_k of a class: its expected draws / E (< 1: a draw is one clip)
    z = (got - 20 * 1028 * p_k) / np.sqrt(20 * 1028 * p_k * (1 - p_k))
    assert np.abs(z).max() < 4.5 and (z ** 2).sum() < k + 5 * np.sqrt(2 * k), z


@pytest.mark.parametrize("recipe", ["moore", "ast", "passt@300"])
def test_the_audit_sets_each_class_exposure_beside_its_expectation(synth_store, recipe):
    audit = sampler_audit(synth_store, "train", 1.0, seed=2, recipe=recipe)
    labels, k = synth_store.labels("train"), synth_store.n_classes
    draw = epoch_draw(labels, k, recipe, 1.0)
    counts = draw.counts(2, 0)
    assert (audit["recipe"], audit["draw"], audit["epoch_length"]) == (recipe, draw.draw, draw.length)
    assert audit["exposure"] == pytest.approx(class_counts(labels, k, weights=counts).tolist())
    assert audit["exposure_expected"] == pytest.approx(exposure_stats(labels, draw.expected(), k)["exposure"])
    assert audit["max_clip_exposure"] == counts.max() and audit["distinct_clips"] == (counts > 0).sum()
    assert audit["max_clip_exposure_expected"] == pytest.approx(draw.expected().max())
    e, r = np.array(audit["exposure_expected"]), np.array(audit["exposure"])
    assert audit["exposure_deviation"] == pytest.approx(np.abs(r / e - 1)[e >= 100].max(initial=0))
    assert (audit["exposure_deviation"] == 0) == (recipe == "moore")


def test_class_mix_distance_by_hand():
    from data.balance import as_multilabels
    labels = as_multilabels([[0], [1]])
    assert class_mix_distance(np.array([0, 1, 0, 1]), labels, 2, 2) == 0.0  # every batch is the pass
    assert class_mix_distance(np.array([0, 0, 1, 1]), labels, 2, 2) == pytest.approx(0.5)


def test_class_statistics_by_hand(monkeypatch):
    from data import audit
    from data.balance import as_multilabels
    labels = as_multilabels([[0], [1, 2], [2], [0, 1, 2]])
    order = np.array([0, 0, 0, 1, 2, 2, 3, 1, 0, 2])     # batches of 3: {0}, {1, 2}, {0, 1, 2}; 1 row left
    assert distinct_classes_per_batch(order, labels, 3, 3) == pytest.approx((1 + 2 + 3) / 3)
    whole = class_mix_distance(order, labels, 3, 3)
    monkeypatch.setattr(audit, "_STAT_BATCHES", 1)       # counts held one batch at a time: same answers
    assert distinct_classes_per_batch(order, labels, 3, 3) == pytest.approx(2.0)
    assert class_mix_distance(order, labels, 3, 3) == pytest.approx(whole)


def test_blocks_are_dealt_to_the_consumer_with_fewest_rows():
    assert deal_blocks(np.array([5, 5, 5, 5, 5]), 2).tolist() == [0, 1, 0, 1, 0]  # round-robin
    assert deal_blocks(np.array([10, 1, 1, 1, 3, 8, 2]), 3).tolist() == [0, 1, 2, 1, 2, 1, 2]
    assert deal_blocks(np.array([4, 4]), 1).tolist() == [0, 0]


def test_default_units_per_block():
    assert [default_units_per_block(b) for b in (1, 16, 32, 128)] == [64, 64, 128, 512]


def test_audit_measures_each_workers_batches(synth_store):
    """With 4 workers and a global batch of 128, the audit's statistics are those of each
    worker's batches of 32 rows, the blocks (16 rows here) dealt round-robin, by hand; the
    same statistics of consecutive rows of the stream are other numbers."""
    plan = plan_stream(synth_store, "train", 0.0, seed=3, units_per_block=4)
    assert set(plan.block_rows[:-1].tolist()) == {16}
    audit = sampler_audit(synth_store, "train", 0.0, seed=3, batch_size=128, units_per_block=4, workers=4)
    blocks = [block_rows(plan, b) for b in range(len(plan.block_rows))]
    mine = [np.concatenate(blocks[w::4]) for w in range(4)]
    batches = [m[a:a + 32] for m in mine for a in range(0, len(m) - 31, 32)]
    labels = synth_store.labels("train")
    distinct = np.mean([len(set(np.concatenate([labels[j] for j in b]).tolist())) for b in batches])
    assert (audit["workers"], audit["worker_batch_size"], audit["audited_examples"]) == (4, 32, plan.examples)
    assert audit["distinct_classes_per_batch"] == pytest.approx(distinct)
    per_worker = np.concatenate(batches)
    assert audit["class_mix_distance"] == pytest.approx(class_mix_distance(per_worker, labels, 24, 32))
    consecutive = np.concatenate(blocks)
    assert distinct_classes_per_batch(consecutive, labels, 24, 32) != pytest.approx(distinct)
    assert class_mix_distance(consecutive, labels, 24, 32) != pytest.approx(audit["class_mix_distance"])
    assert audit["distinct_classes_per_batch_ideal"] > 0 and audit["distinct_classes_ratio"] == pytest.approx(
        audit["distinct_classes_per_batch"] / audit["distinct_classes_per_batch_ideal"])


def test_worker_batches_mix_like_a_random_order_on_audioset_labels(audioset, tmp_path):
    """The first 200,000 clips of AudioSet's unbalanced training CSV (a random tenth: the file
    is sorted by YouTube id), in rarest-label order in the store's row groups: batches of 128
    for each of 8 workers hold >= 0.9x the distinct classes of a random order of the same rows
    and <= 1.15x its class-mix distance with the default blocks, and not with 16-row groups in
    blocks of 32 (the settings before)."""
    import gzip
    import itertools

    from data.balance import rarest_label_order
    from data.labels import read_class_index, read_segments
    from data.shards import RowGroups
    from data.audit import mixing_audit
    from data.stream import StreamPlan
    with gzip.open(audioset / "unbalanced_train_segments.csv.gz", "rt") as f:
        (tmp_path / "part.csv").write_text("".join(itertools.islice(f, 200_003)))  # 3 header lines
    index = read_class_index(audioset / "class_labels_indices.csv")
    labels = read_segments([tmp_path / "part.csv"], index, strict=False)[0].labels
    labels = labels.take(rarest_label_order(labels, len(index)))
    n = len(labels)

    def audit(beta, rows, units):
        groups = RowGroups.from_sizes(["unread"], [[rows] * (n // rows) + [n % rows] * (n % rows > 0)])
        split = SplitIndex.build(groups, oversampling_factors(labels, beta), labels)
        plan = StreamPlan(split, *split.plan_blocks(0, 0, 300_000, 0, units), 0, 0, units, len(index))
        return mixing_audit(plan, labels, batch_size=1024, workers=8, max_examples=300_000)
    for beta in (0.0, 1.0):
        new = audit(beta, ROW_GROUP_ROWS, default_units_per_block(128))
        assert new["distinct_classes_ratio"] >= 0.9 and new["class_mix_ratio"] <= 1.15, new
        old = audit(beta, 16, 32)
        assert old["distinct_classes_ratio"] < 0.8 and old["class_mix_ratio"] > 1.15, old


@pytest.mark.parametrize("scheme", ["psla", "passt"])
def test_a_sum_scheme_pass_is_exact_on_audioset_labels(audioset, scheme):
    """AudioSet's balanced training segments (22,160 real clips) in rarest-label order, in 4-row
    groups: under a sum scheme M_j is not monotone within a row group (a unit is not a prefix of
    it), yet a pass emits every clip exactly M_j times, each unit's size is what the plan counts,
    and a stream resumed mid-pass continues the same order."""
    from data.balance import rarest_label_order
    from data.labels import read_class_index, read_segments
    from data.shards import RowGroups
    from data.stream import StreamPlan
    index = read_class_index(audioset / "class_labels_indices.csv")
    labels = read_segments([audioset / "balanced_train_segments.csv"], index, strict=False)[0].labels
    labels = labels.take(rarest_label_order(labels, len(index)))
    n = len(labels)
    groups = RowGroups.from_sizes(["unread"], [[ROW_GROUP_ROWS] * (n // ROW_GROUP_ROWS) + [n % ROW_GROUP_ROWS] *
                                               (n % ROW_GROUP_ROWS > 0)])
    factors = oversampling_factors(labels, 1.0, method=scheme)
    split = SplitIndex.build(groups, factors, labels)
    group_of = np.repeat(np.arange(len(groups.start) - 1), np.diff(groups.start))
    assert (np.diff(factors)[group_of[1:] == group_of[:-1]] > 0).any()  # rises within a group
    assert factors.max() > 1 and split.rows_per_pass > n

    def plan(skip=0):
        blocks = split.plan_blocks(3, 0, split.rows_per_pass - skip, skip, 64)
        return StreamPlan(split, *blocks, 3, 0, 64, len(index), skip)
    full = _order(plan())
    np.testing.assert_array_equal(np.bincount(full, minlength=n), factors)
    assert len(full) == split.rows_per_pass == plan().examples
    sizes = split.unit_sizes()
    for u in np.random.default_rng(0).choice(split.units, 300, replace=False):
        assert sizes[u] == len(split.unit_rows(np.array([u])))
    k = split.rows_per_pass // 3 + 5
    resumed = plan(skip=k)
    np.testing.assert_array_equal(_order(resumed)[k - resumed.block_start[0]:], full[k:])


def test_duplicates_statistic_by_hand():
    assert duplicates_per_batch(np.array([1, 1, 2, 3, 4, 4, 4, 5]), 4) == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert duplicates_per_batch(np.arange(10), 5) == 0.0


@pytest.mark.parametrize("recipe", ["moore", "passt@300"])
def test_ray_dataset_is_exact_and_deterministic(ray_local, synth_store, monkeypatch, recipe):
    from ray.data import DataContext
    # the order comes from the dataset's own context, whatever the process-wide one says
    monkeypatch.setattr(DataContext.get_current().execution_options, "preserve_order", False)

    def pass_ids(epoch):
        ds = oversampled_dataset(synth_store.root, "train", 1.0, seed=4, epoch=epoch, recipe=recipe)
        out = {"clip_index": [], "position": [], "mel": [], "target": []}
        for b in ds.iter_batches(batch_size=100, batch_format="numpy"):
            for k in out:
                out[k].append(b[k])
            assert b["mel"].shape[1:] == (synth_store.frames, synth_store.mels)
            assert b["target"].shape[1] == synth_store.n_classes
        return {k: np.concatenate(v) for k, v in out.items()}
    a, b, c = pass_ids(0), pass_ids(0), pass_ids(1)
    factors = plan_stream(synth_store, "train", 1.0, seed=4, recipe=recipe).index.counts(4, 0)
    np.testing.assert_array_equal(np.bincount(a["clip_index"], minlength=len(factors)), factors)
    np.testing.assert_array_equal(a["clip_index"], b["clip_index"])
    np.testing.assert_array_equal(a["position"], np.arange(len(a["position"])))
    assert (a["clip_index"] != c["clip_index"]).mean() > 0.9
    stored = list(synth_store.iter_batches("train", 10_000))  # the split in row order
    np.testing.assert_array_equal(a["mel"], np.concatenate([x["mel"] for x in stored])[a["clip_index"]])
    np.testing.assert_array_equal(a["target"], np.concatenate([x["target"] for x in stored])[a["clip_index"]])


def test_the_process_wide_data_context_is_left_alone(ray_local, synth_store):
    from ray.data import DataContext
    ctx = DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ds = oversampled_dataset(synth_store.root, "train", 0.5, seed=0, examples=100)
    assert DataContext.get_current() is ctx
    assert (ctx.execution_options.preserve_order, ctx.enable_progress_bars) == before
    assert ds.context is not ctx
    assert ds.context.execution_options.preserve_order and not ds.context.enable_progress_bars
    options = stream_execution_options()  # what Ray Train is given for this dataset
    assert options.preserve_order and ctx.execution_options.preserve_order == before[0]


def test_train_ingest_keeps_the_stream_order(ray_local, synth_store, monkeypatch):
    """Ray Train replaces a dataset's execution options with its DataConfig's
    (`DataConfig.configure`, which Train's dataset manager calls; by default options taken from
    the process-wide context): given `stream_execution_options`, a worker gets the stream in its
    planned order."""
    import ray.train
    from ray.data import DataContext
    monkeypatch.setattr(DataContext.get_current().execution_options, "preserve_order", False)

    def shard(config):
        ds = oversampled_dataset(synth_store.root, "train", 1.0, seed=4, examples=5000)
        [iterators] = config.configure({"train": ds}, world_size=1, worker_handles=None, worker_node_ids=None)
        return iterators["train"]
    default = shard(ray.train.DataConfig(datasets_to_split=["train"]))
    assert not default.get_context().execution_options.preserve_order  # the dataset's own is gone
    del default
    it = shard(ray.train.DataConfig(datasets_to_split=["train"],
                                    execution_options={"train": stream_execution_options()}))
    assert it.get_context().execution_options.preserve_order
    position = np.concatenate([b["position"] for b in it.iter_batches(batch_size=100, batch_format="numpy")])
    np.testing.assert_array_equal(position, np.arange(5000))


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
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options={"train": stream_execution_options()}),
        run_config=ray.train.RunConfig(name="disjoint", storage_path=str(tmp_path / "ray")))
    trainer.fit()
    r0, r1 = (set(json.loads((tmp_path / f"rank{r}.json").read_text())) for r in (0, 1))
    total = int(oversampling_factors(synth_store.labels("train"), 0.5).sum())
    assert r0 and r1 and not (r0 & r1)
    assert len(r0) == len(r1) and total - 1 <= len(r0 | r1) <= total  # equal split drops < 2 rows


class _Records(logging.Handler):
    def __init__(self, text: str):
        super().__init__(logging.WARNING)
        self.text, self.seen = text, []

    def emit(self, record):
        if self.text in record.getMessage():
            self.seen.append(record.getMessage())


def _shipped_sizes(monkeypatch) -> list:
    """Bytes of what each `Dataset.map_batches` call ships to its tasks (the function and its
    fn_args / fn_kwargs, pickled by ray.cloudpickle as Ray pickles a UDF), recorded at the public
    API as the dataset is built."""
    import ray.cloudpickle
    from ray.data import Dataset
    sizes, real = [], Dataset.map_batches

    def recording(self, fn, *args, **kwargs):
        sizes.append(len(ray.cloudpickle.dumps((fn, kwargs.get("fn_args"), kwargs.get("fn_kwargs")))))
        return real(self, fn, *args, **kwargs)
    monkeypatch.setattr(Dataset, "map_batches", recording)
    return sizes


def test_udf_stays_small_whatever_the_budget(ray_local, synth_store, monkeypatch):
    """The index travels by reference: the map UDF is the same few hundred bytes for 1 pass or
    30 (but for the budget's own digits), smaller than the index itself (so it would fail with
    the index, or the plan, passed by value), and Ray Data never warns that a UDF "is too large"."""
    import ray.cloudpickle
    from data.stream import _Spec
    sizes = _shipped_sizes(monkeypatch)
    warned = _Records("is too large")
    logging.getLogger("ray.data").addHandler(warned)
    try:
        plan = plan_stream(synth_store, "train", 0.5, seed=0)
        for examples in (plan.examples, 30 * plan.examples):
            ds = oversampled_dataset(synth_store.root, "train", 0.5, seed=0, examples=examples)
            next(iter(ds.iter_batches(batch_size=10, batch_format="numpy")))
    finally:
        logging.getLogger("ray.data").removeHandler(warned)
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip,
                 (synth_store.frames, synth_store.mels))
    by_value = len(ray.cloudpickle.dumps((read_blocks, None, {"index": plan.index, "spec": spec})))
    bound = 2048
    assert by_value > bound  # the bound tells the two apart on this store
    assert len(sizes) == 2 and max(sizes) < bound and abs(sizes[0] - sizes[1]) <= 8, (sizes, by_value)  # the budget's digits
    assert not warned.seen


@pytest.mark.parametrize("beta,equal", [(0.5, True), (0.25, False)])
def test_many_consumers_union_is_exact(ray_local, synth_store, beta, equal):
    """A pass split among 2 consumers (`streaming_split`, as Ray Train does): together they get
    clip j exactly M_j times and every stream position once. (equal=True drops the remainder
    of the pass's length mod 2, so it is checked on a pass of even length.)"""
    factors = oversampling_factors(synth_store.labels("train"), beta)
    assert not equal or factors.sum() % 2 == 0
    ds = oversampled_dataset(synth_store.root, "train", beta, seed=8)
    got = [{"clip_index": [], "position": []} for _ in range(2)]

    def consume(it, out):
        for b in it.iter_batches(batch_size=64, batch_format="numpy"):
            out["clip_index"].append(b["clip_index"])
            out["position"].append(b["position"])
    threads = [threading.Thread(target=consume, args=(it, out))
               for it, out in zip(ds.streaming_split(2, equal=equal), got)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    parts = [{k: np.concatenate(v) for k, v in g.items()} for g in got]
    assert all(len(p["clip_index"]) for p in parts)
    if equal:
        assert len(parts[0]["clip_index"]) == len(parts[1]["clip_index"])
    union = np.concatenate([p["clip_index"] for p in parts])
    np.testing.assert_array_equal(np.bincount(union, minlength=len(factors)), factors)
    np.testing.assert_array_equal(np.sort(np.concatenate([p["position"] for p in parts])),
                                  np.arange(factors.sum()))


def test_units_per_block_is_bounded_by_the_bytes_of_a_block(synth_store, monkeypatch):
    """A block holds at most MAX_BLOCK_BYTES of spectrograms, however many units are asked for
    (1e9 would make the whole pass one block): the plan takes the bound, its blocks stay under
    it, and the pass is still exact."""
    import data.stream
    row = 2 * synth_store.frames * synth_store.mels
    assert max_units_per_block(synth_store, "train") == data.stream.MAX_BLOCK_BYTES // (ROW_GROUP_ROWS * row)
    monkeypatch.setattr(data.stream, "MAX_BLOCK_BYTES", 100 * ROW_GROUP_ROWS * row)  # 100 units
    plan = plan_stream(synth_store, "train", 1.0, seed=0, units_per_block=10**9)
    assert plan.units_per_block == 100 and plan.blocks_per_pass == -(-plan.index.units // 100) > 1
    assert plan.block_rows.max() * row <= data.stream.MAX_BLOCK_BYTES
    factors = plan.index.counts(0, 0)
    np.testing.assert_array_equal(np.bincount(_order(plan), minlength=len(factors)), factors)
    assert sampler_audit(synth_store, "train", 1.0, units_per_block=10**9)["units_per_block"] == 100


def test_a_damaged_page_stops_the_stream_naming_shard_and_row_group(ray_local, tmp_path):
    """Bits rotten under an unchanged file (same size and times: the sweep-start check does not
    hash it again): the Ray stream fails when a reader reaches the page, naming the shard and
    the row group, and delivers no row of it."""
    import os
    import pyarrow.parquet as pq
    from data.synth import SynthConfig, make_synthetic_store
    store = make_synthetic_store(tmp_path / "s", SynthConfig(clips=80, classes=4, frames=16, mels=8, seed=1))
    shard = store.shard_paths("train")[0]
    col = pq.read_metadata(shard).row_group(3).column(2)
    assert col.path_in_schema == "mel"
    st = os.stat(shard)
    with open(shard, "r+b") as f:
        f.seek(col.data_page_offset + col.total_compressed_size - 20)
        f.write(b"\x01\x02\x03\x04")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.validate(checksums="changed")["hashed"] == 0
    with pytest.raises(Exception, match=rf"{shard}: row group 3 is unreadable \(.*CRC"):
        for _ in oversampled_dataset(store.root, "train", 0.0, seed=0).iter_batches(batch_size=16):
            pass
