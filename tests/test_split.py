"""Validation split by iterative stratification, shards rewritten; union splits."""
import json

import numpy as np
import pytest

from data.balance import as_multilabels, class_counts, rarest_label_count
from data.split import main, stratified_split, valid_targets
from data.store import StoreError, create_store, fingerprint, open_store


def test_targets_keep_a_training_clip():
    counts = np.array([0, 1, 2, 5, 6, 40, 200])
    assert valid_targets(counts, 5, 0.1).tolist() == [0, 0, 1, 4, 5, 5, 20]
    assert valid_targets(counts, 0, 0.5).tolist() == [0, 0, 1, 2, 3, 20, 100]


def test_stratification_meets_minimum_and_fraction():
    rng = np.random.default_rng(0)
    k, n = 30, 4000
    w = (np.arange(k) + 1.0) ** -1.5
    labels = [np.unique(rng.choice(k, size=rng.integers(1, 4), p=w / w.sum())) for _ in range(n)]
    counts = class_counts(labels, k)
    valid = stratified_split(labels, k, min_per_class=5, fraction=0.1, seed=1)
    v = class_counts(as_multilabels(labels).take(np.flatnonzero(valid)), k)
    want = valid_targets(counts, 5, 0.1)
    assert (v >= want).all() and (counts - v >= np.minimum(counts, 1)).all()
    head = counts >= 200                                   # stratified: each class near 10 %
    assert np.abs(v[head] / counts[head] - 0.1).max() < 0.03
    assert 0.09 < valid.mean() < 0.13
    assert (stratified_split(labels, k, 5, 0.1, seed=1) == valid).all()


def test_co_occurring_rare_classes_keep_a_training_clip():
    # class 1 has 2 clips, both also in class 2 (3 clips); class 0 is a head class
    labels = [[0, 1, 2], [0, 1, 2], [0, 2]] + [[0]] * 40
    valid = stratified_split(labels, 3, min_per_class=5, fraction=0.1)
    train = as_multilabels(labels).take(np.flatnonzero(~valid))
    assert (class_counts(train, 3) >= 1).all()
    assert class_counts(as_multilabels(labels).take(np.flatnonzero(valid)), 3)[1] == 1


@pytest.fixture()
def store(tmp_path):
    """Train (900 clips, shards of 128 rows, rarest-label order; class 16 has 3 clips, class 17
    one) and two evaluation splits, 18 classes, 8 x 4 spectrograms."""
    rng = np.random.default_rng(2)
    k = 18
    s = create_store(tmp_path / "s", [{"index": i, "mid": f"/m/{i}", "name": f"c{i}"} for i in range(k)],
                     {"frames": 8, "mels": 4})
    w = (np.arange(16) + 1.0) ** -1.5
    for split, n in [("train", 900), ("eval_a", 60), ("eval_b", 40)]:
        labels = [np.unique(rng.choice(16, size=rng.integers(1, 4), p=w / w.sum())) for _ in range(n)]
        order = np.arange(n)
        if split == "train":
            labels[:4] = [np.array([0, 16]), np.array([16]), np.array([3, 16]), np.array([1, 17])]
            order = np.argsort(rarest_label_count(labels, class_counts(labels, k)), kind="stable")
        writer = s.writer(split, rows_per_shard=128, order="rarest_label" if split == "train" else "given")
        writer.write([f"{split}-{j}" for j in order], [labels[j] for j in order],
                     rng.normal(size=(n, 8, 4)).astype(np.float16), np.full(n, 8))
        writer.close()
    return s


def _mels(store, split):
    return {c: m for b in store.iter_batches(split, 256) for c, m in zip(b["clip_id"], b["mel"])}


def test_carve_moves_clips_and_rewrites_train(store, capsys):
    before_ids = store.clip_ids("train")
    before = _mels(store, "train")
    counts = store.class_counts("train")
    old_files = [store.root / p for p in store.shard_paths("train")]
    main(["--store", str(store.root), "--from", "train", "--to", "holdout", "--min-per-class", "5"])
    out = json.loads(capsys.readouterr().out)
    s = open_store(store.root)
    s.validate()
    train, held = s.clip_ids("train"), s.clip_ids("holdout")
    assert not set(train) & set(held) and sorted([*train, *held]) == sorted(before_ids)
    assert out["clips"] == {"holdout": len(held), "train": len(train)}
    assert out["fingerprint"]["train"] == fingerprint(train) == s.fingerprint("train")
    v = s.class_counts("holdout")
    assert (v >= np.minimum(5, counts - 1)).all() and (s.class_counts("train") >= 1).all()
    assert [(c["class"], c["clips"], c["valid"]) for c in out["short_classes"]] == [(16, 3, 2), (17, 1, 0)]
    assert 0.09 <= out["valid_fraction"] <= 0.25
    labels = s.labels("train")
    r = rarest_label_count(labels, class_counts(labels, s.n_classes))
    assert (np.diff(r) >= 0).all() and s.split_info("train")["order"] == "rarest_label"
    after = {**_mels(s, "train"), **_mels(s, "holdout")}
    assert after.keys() == before.keys() and all((after[c] == before[c]).all() for c in before)
    assert not any(p.exists() for p in old_files)
    assert s.splits == ["train", "eval_a", "eval_b", "holdout"] and len(s.shard_paths("train")) == 7
    with pytest.raises(StoreError, match="'holdout' exists already"):
        main(["--store", str(store.root), "--to", "holdout"])


def test_union_reads_as_the_concatenation(store, capsys):
    main(["--store", str(store.root), "--union", "eval_all", "--of", "eval_a", "eval_b"])
    entry = json.loads(capsys.readouterr().out)["eval_all"]
    s = open_store(store.root)
    ids = np.concatenate([s.clip_ids("eval_a"), s.clip_ids("eval_b")])
    assert s.clip_ids("eval_all").tolist() == ids.tolist()
    assert entry["fingerprint"] == s.fingerprint("eval_all") == fingerprint(ids)
    assert s.class_counts("eval_all").tolist() == (s.class_counts("eval_a")
                                                    + s.class_counts("eval_b")).tolist()
    batches = list(s.iter_batches("eval_all", 100))
    assert np.concatenate([b["clip_id"] for b in batches]).tolist() == ids.tolist()
    assert s.shard_paths("eval_all") == s.shard_paths("eval_a") + s.shard_paths("eval_b")
    s.validate()
    with pytest.raises(StoreError, match="share"):
        s.add_union("twice", ["eval_a", "eval_all"])
    with pytest.raises(StoreError, match="holds data"):
        s.add_union("train", ["eval_a"])
    with pytest.raises(StoreError, match="part of one"):
        main(["--store", str(store.root), "--from", "eval_a", "--to", "v2"])
    with pytest.raises(SystemExit):
        main(["--store", str(store.root), "--union", "x"])
