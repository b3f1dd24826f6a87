import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data.balance import class_counts, rarest_label_count
from data.store import StoreError, create_store, open_store
from data.synth import SynthConfig, make_synthetic_store


def _small_store(root, n=10):
    store = create_store(root, [{"index": i, "mid": f"/m/{i}", "name": f"c{i}"} for i in range(3)],
                         {"frames": 4, "mels": 2})
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(n, 4, 2)).astype(np.float16)
    labels = [np.array([i % 3]) for i in range(n)]
    w = store.writer("train", rows_per_shard=4)
    w.write([f"id{i}" for i in range(n)], labels, mel, np.full(n, 4))
    w.close()
    return store, mel


def test_round_trip(tmp_path):
    store, mel = _small_store(tmp_path / "s")
    store = open_store(tmp_path / "s")
    assert store.splits == ["train"] and store.classes == ["c0", "c1", "c2"]
    assert len(store.shard_paths("train")) == 3  # 4 + 4 + 2 rows
    assert store.clip_ids("train").tolist() == [f"id{i}" for i in range(10)]
    assert [list(store.labels("train")[j]) for j in range(3)] == [[0], [1], [2]]
    np.testing.assert_array_equal(store.spectrogram("train", "id7"), mel[7])
    assert store.class_counts("train").tolist() == [4, 3, 3]
    store.validate()


def test_validation_names_the_bad_shard(tmp_path):
    store, _ = _small_store(tmp_path / "s")
    shard = store.shard_paths("train")[1]
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 3), shard)  # a row lost
    with pytest.raises(StoreError, match=r"part-00001\.parquet: 3 rows, manifest says 4"):
        open_store(tmp_path / "s").validate()
    pq.write_table(table, shard)  # restored
    open_store(tmp_path / "s").validate()
    renamed = table.set_column(0, "clip_id", np.array(["x", "y", "z", "w"]))
    pq.write_table(renamed, shard)
    with pytest.raises(StoreError, match="fingerprint"):
        open_store(tmp_path / "s").validate()
    (tmp_path / "s" / "train" / "part-00002.parquet").unlink()
    with pytest.raises(StoreError, match=r"part-00002\.parquet: shard listed in the manifest is missing"):
        open_store(tmp_path / "s").validate()


def test_bad_writes_are_refused(tmp_path):
    store, _ = _small_store(tmp_path / "s")
    w = store.writer("valid")
    with pytest.raises(StoreError, match=r"mel shape \(5, 2\)"):
        w.write(["a"], [[0]], np.zeros((1, 5, 2), np.float16), [5])
    bad = np.zeros((2, 4, 2), np.float16)
    bad[1, 0, 0] = np.nan
    with pytest.raises(StoreError, match="clip 'b' has a non-finite"):
        w.write(["a", "b"], [[0], [1]], bad, [4, 4])
    with pytest.raises(StoreError, match="already exists"):
        create_store(tmp_path / "s", [], {"frames": 1, "mels": 1})
    with pytest.raises(StoreError, match="no manifest"):
        open_store(tmp_path)


def test_synthetic_store_statistics(synth_store):
    from data.balance import gini
    s = synth_store
    assert s.splits == ["train", "valid", "eval_public", "eval_internal"]
    s.validate()
    assert json.loads((s.root / "manifest.json").read_text())["splits"]["train"]["order"] == "rarest_label"
    g = {sp: gini(s.class_counts(sp)) for sp in s.splits}
    assert 0.72 <= g["train"] <= 0.92
    assert 0.30 <= g["eval_public"] <= 0.50
    assert 0.50 <= g["eval_internal"] <= 0.72
    assert 1.5 <= s.labels("train").lengths.mean() <= 3
    for sp in s.splits:
        assert (s.class_counts(sp) >= (5 if sp == "valid" else 1)).all(), sp
    # train is stored in ascending rarest-label order
    labels = s.labels("train")
    r = rarest_label_count(labels, class_counts(labels, s.n_classes))
    assert (np.diff(r) >= 0).all()
    # rare classes co-occur with head classes
    rare = np.argsort(s.class_counts("train"))[:4]
    with_head = [bool(set(labels[j]) & {0, 1, 2}) for j in range(len(labels)) if set(labels[j]) & set(rare)]
    assert np.mean(with_head) > 0.5


def test_synthetic_is_deterministic(tmp_path):
    cfg = SynthConfig(clips=100, classes=6, frames=8, mels=8, seed=5)
    a = make_synthetic_store(tmp_path / "a", cfg)
    b = make_synthetic_store(tmp_path / "b", cfg)
    assert a.fingerprint("train") == b.fingerprint("train")
    cid = a.clip_ids("valid")[4]
    np.testing.assert_array_equal(a.spectrogram("valid", cid), b.spectrogram("valid", cid))
    c = make_synthetic_store(tmp_path / "c", SynthConfig(clips=100, classes=6, frames=8, mels=8, seed=6))
    assert not np.array_equal(a.spectrogram("valid", cid), c.spectrogram("valid", cid))
