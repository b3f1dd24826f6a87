import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import classes, write_split

from data.balance import class_counts, rarest_label_count
from data.manifest import StoreError
from data.shards import mel_array, write_shard_file
from data.store import CHECKSUMS, create_store, open_store
from data.synth import SynthConfig, make_synthetic_store


def _small_store(root, n=10):
    store = create_store(root, classes(3), {"frames": 4, "mels": 2})
    mel = write_split(store, "train", [[i % 3] for i in range(n)], rows_per_shard=4,
                      clip_ids=[f"id{i}" for i in range(n)])
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
    table, original = pq.read_table(shard), open(shard, "rb").read()
    pq.write_table(table.slice(0, 3), shard)  # a row lost
    with pytest.raises(StoreError, match=r"part-00001\.parquet: 3 rows, manifest says 4"):
        open_store(tmp_path / "s").validate()
    open(shard, "wb").write(original)  # restored
    open_store(tmp_path / "s").validate()
    renamed = table.set_column(0, "clip_id", pa.array(["xd4", "xd5", "xd6", "xd7"]))
    write_shard_file(Path(shard), renamed)  # same size: only the clip ids differ
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


def _mel_store(root, n=40):
    """A store whose mel column chunks are large enough to damage: 40 clips of 32 x 16, one
    shard of row groups of `ROW_GROUP_ROWS` rows."""
    store = create_store(root, classes(3), {"frames": 32, "mels": 16})
    write_split(store, "train", [[i % 3] for i in range(n)], seed=1, rows_per_shard=n,
                clip_ids=[f"id{i}" for i in range(n)])
    return open_store(root)


def _mel_chunk(path, group):
    """(offset, size) of the mel column chunk of one row group, from the footer."""
    rg = pq.read_metadata(path).row_group(group)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema.startswith("mel"))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    return start, col.total_compressed_size


def test_shard_hashes_are_recorded_from_the_bytes_written(tmp_path):
    from data.manifest import HASH
    from data.shards import file_hash
    store = _mel_store(tmp_path / "s")
    [entry] = store.split_info("train")["shards"]
    assert entry[HASH] == file_hash(store.root / entry["file"]) and len(entry[HASH]) == 64
    assert store.validate() == {"shards": 1, "hashed": 1, "recorded": True}


def _overwrite(path, offset: int, data: bytes, keep_mtime: bool) -> None:
    """Write `data` at `offset` in place; with `keep_mtime` the file's times are put back (bits
    that rot under an unchanged file look like this)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_64_bytes_overwritten_in_a_spectrogram_page_are_caught(tmp_path):
    """Format 2, 64 bytes of the spectrogram values of row group 1 overwritten (same size; footer,
    ids, labels and rows unchanged). Written in place: the sweep-start check ("changed") hashes
    that shard and names it. With the file's times put back: the cheap check passes, and every
    reader names the shard and row group as it reads the page (its CRC-32); row group 0 still reads."""
    from data.shards import ROW_GROUP_ROWS, RowGroups, close_shards
    from data.stream import _Spec, plan_stream, read_block
    store = _mel_store(tmp_path / "s")
    [shard] = store.shard_paths("train")
    assert store.validate(checksums="changed")["hashed"] == 0  # recorded as verified when written
    original, st = Path(shard).read_bytes(), os.stat(shard)
    start, size = _mel_chunk(shard, 1)
    _overwrite(shard, start + size - 100, bytes(range(64)), keep_mtime=False)
    for checksums in ("changed", "all"):
        with pytest.raises(StoreError, match=r"part-00000\.parquet: content changed since it was written"):
            open_store(store.root).validate(checksums=checksums)
    Path(shard).write_bytes(original)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_store(store.root).validate(checksums="changed")["hashed"] == 0

    _overwrite(shard, start + size - 100, bytes(range(64)), keep_mtime=True)
    close_shards()
    s = open_store(store.root)
    assert s.validate(checksums="changed") == {"shards": 1, "hashed": 0, "recorded": True}
    with pytest.raises(StoreError, match="content changed"):
        s.validate(checksums="all")
    named = rf"{shard}: row group 1 is unreadable \(.*CRC"
    g = ROW_GROUP_ROWS
    assert len(next(s.iter_batches("train", g))["mel"]) == g  # group 0 is fine
    for read in (lambda: list(s.iter_batches("train", 16)), lambda: s.spectrogram("train", f"id{g + 1}"),
                 lambda: RowGroups.of(s.shard_paths("train")).read(np.array([g + 1])),
                 # the damaged bytes are in the group's last row: a read of its first alone checks them too
                 lambda: RowGroups.of(s.shard_paths("train")).spectrograms(np.array([g]), s.frames, s.mels)):
        with pytest.raises(StoreError, match=named):
            read()
    plan = plan_stream(s, "train", 0.0, seed=0, units_per_block=64)  # one block: the whole pass
    with pytest.raises(StoreError, match=named):
        read_block(plan.index, _Spec(0, 0, 64, s.n_classes, 0, (s.frames, s.mels)), 0, 0)
    close_shards()


def test_undecodable_row_group_is_named_by_every_reader(tmp_path):
    from data.shards import ROW_GROUP_ROWS, RowGroups, close_shards
    store = _mel_store(tmp_path / "s")
    [shard] = store.shard_paths("train")
    start, size = _mel_chunk(shard, 1)
    with open(shard, "r+b") as f:  # the page header too: pyarrow cannot decode the chunk
        f.seek(start)
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    close_shards()
    s = open_store(store.root)
    named = rf"{shard}: row group 1 is unreadable \((OSError|ArrowInvalid|ArrowException)"
    g = ROW_GROUP_ROWS  # group 1 is rows g .. 2g - 1
    with pytest.raises(StoreError, match=named):
        list(s.iter_batches("train", g + 2))
    batches = s.iter_batches("train", g)
    assert next(batches)["clip_id"].tolist() == [f"id{i}" for i in range(g)]  # group 0 is fine
    with pytest.raises(StoreError, match=named):
        next(batches)
    with pytest.raises(StoreError, match=named):
        RowGroups.of(s.shard_paths("train")).read(np.array([g - 1, g + 1]))
    with pytest.raises(StoreError, match=named):
        s.spectrogram("train", f"id{g + 1}")
    with pytest.raises(StoreError, match=rf"{shard}: content changed"):
        s.validate()
    close_shards()


def test_a_shard_entry_without_its_hash_is_named(tmp_path):
    store, _ = _small_store(tmp_path / "s")
    manifest = json.loads((store.root / "manifest.json").read_text())
    del manifest["splits"]["train"]["shards"][1]["sha256"]
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    for checksums in CHECKSUMS:
        with pytest.raises(StoreError, match=r"part-00001\.parquet: the manifest's entry for this shard has no sha256$"):
            open_store(store.root).validate(checksums=checksums)


def test_a_bad_manifest_is_named(tmp_path):
    store, _ = _small_store(tmp_path / "s")
    path = store.root / "manifest.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])  # cut short
    with pytest.raises(StoreError, match=r"manifest\.json:\d+: not valid JSON"):
        open_store(store.root)
    path.write_bytes(b'{"format_version": 1, "x": "\xff"}')
    with pytest.raises(StoreError, match=r"manifest\.json: not UTF-8"):
        open_store(store.root)
    path.write_text('{"format_version": 1}')
    with pytest.raises(StoreError, match=r"manifest\.json: not a store manifest \(no features, classes, splits\)"):
        open_store(store.root)


def test_synthetic_store_never_writes_over_a_directory_that_holds_anything(tmp_path):
    cfg = SynthConfig(clips=30, classes=4, frames=8, mels=8, seed=1)
    store = make_synthetic_store(tmp_path / "a", cfg)
    shards = {p: open(p, "rb").read() for p in store.shard_paths("train")}
    (store.root / "manifest.json").unlink()  # a store whose manifest was lost: its shards stay
    with pytest.raises(StoreError, match=rf"{tmp_path / 'a'}: not empty .* has no manifest\.json"):
        make_synthetic_store(tmp_path / "a", cfg)
    assert {p: open(p, "rb").read() for p in shards} == shards
    assert not (tmp_path / "a" / "manifest.json").exists()
    (tmp_path / "empty").mkdir()
    make_synthetic_store(tmp_path / "empty", cfg).validate()  # an empty directory is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        make_synthetic_store(tmp_path / "file", cfg)


def _shards_store(root, n=150, rows_per_shard=40):
    """150 clips of 4 x 2 in shards of 40 rows (40, 40, 40, 30), two labels each."""
    store = create_store(root, classes(5), {"frames": 4, "mels": 2})
    mel = write_split(store, "train", [[i % 5, 4] for i in range(n)], seed=3, rows_per_shard=rows_per_shard,
                      n_frames=np.arange(n) % 4 + 1, clip_ids=[f"id{i}" for i in range(n)])
    return open_store(root), mel


def test_row_groups_read_one_call_per_shard(tmp_path, monkeypatch):
    """Rows in any order, repeats included, across shards: one `read_row_groups` call per shard
    touched, the rows as a row-by-row read gives them."""
    from data.shards import ROW_GROUP_ROWS, RowGroups, close_shards
    store, mel = _shards_store(tmp_path / "s")
    groups = RowGroups.of(store.shard_paths("train"))
    g = ROW_GROUP_ROWS
    assert np.diff(groups.start).tolist() == [min(g, n - a) for n in (40, 40, 40, 30) for a in range(0, n, g)]
    indexed = store.row_groups("train")          # from the pass that reads ids and labels
    assert indexed.paths == groups.paths and all(np.array_equal(getattr(indexed, k), getattr(groups, k))
                                                 for k in ("shard", "index", "start"))
    calls = []
    real = pq.ParquetFile.read_row_groups

    def counted(self, row_groups, *args, **kwargs):
        calls.append(list(row_groups))
        return real(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", counted)
    rows = np.array([149, 3, 45, 3, 0, 39, 40, 17, 121, 120, 46, 149])
    for use_threads in (True, False):
        calls.clear()
        close_shards()
        table = groups.read(rows, use_threads=use_threads)
        assert table["clip_id"].to_pylist() == [f"id{i}" for i in rows]
        assert table["n_frames"].to_pylist() == (rows % 4 + 1).tolist()
        np.testing.assert_array_equal(mel_array(table["mel"], 4, 2), mel[rows])
        assert [list(x) for x in table["labels"].to_pylist()] == [[i % 5, 4] for i in rows]
        # shards 0, 1 and 3: the groups needed, in order
        assert calls == [sorted({int(r % 40) // g for r in rows if r // 40 == k}) for k in (0, 1, 3)]
    assert groups.read(np.zeros(0, np.int64)).num_rows == 0
    close_shards()


def test_write_table_writes_the_bytes_write_shard_writes(tmp_path):
    """A shard copied through `RowGroups.read` + `write_table` is byte for byte the shard
    `write_shard` writes from the same rows (so the same sha256), in row groups of
    `ROW_GROUP_ROWS` rows; labels given as MultiLabels write the same bytes as a list of arrays."""
    from data.balance import as_multilabels
    from data.manifest import HASH, schema
    from data.shards import ROW_GROUP_ROWS, RowGroups, file_hash
    store, mel = _shards_store(tmp_path / "s")
    rows = np.array([5, 70, 71, 72, 149, 0, 33, 34, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111])
    table = RowGroups.of(store.shard_paths("train")).read(rows)
    copied = store.write_table("x/a.parquet", table)
    labels = [np.array([i % 5, 4]) for i in rows]
    by_hand = store.write_shard("x/b.parquet", [f"id{i}" for i in rows], labels, mel[rows], rows % 4 + 1)
    multi = store.write_shard("x/c.parquet", [f"id{i}" for i in rows], as_multilabels(labels), mel[rows],
                              rows % 4 + 1)
    assert copied[HASH] == by_hand[HASH] == multi[HASH] == file_hash(store.root / "x/a.parquet")
    assert copied["rows"] == 20 and copied["bytes"] == by_hand["bytes"]
    meta = pq.read_metadata(store.root / "x/a.parquet")
    sizes = [ROW_GROUP_ROWS] * (20 // ROW_GROUP_ROWS) + [20 % ROW_GROUP_ROWS] * (20 % ROW_GROUP_ROWS > 0)
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == sizes
    assert not list((store.root / "x").glob("*.tmp"))
    with pytest.raises(StoreError, match=r"x/d\.parquet: table schema .* != the store's"):
        store.write_table("x/d.parquet", table.drop_columns(["n_frames"]))
    other = schema(8, 2)
    assert not other.equals(schema(4, 2))
    with pytest.raises(StoreError, match="table schema"):
        store.write_table("x/d.parquet", other.empty_table())
    assert not (store.root / "x/d.parquet").exists()


def test_fingerprint_of_a_numpy_array_is_the_fingerprint_of_its_strings():
    from data.manifest import fingerprint
    ids = np.array(["b", "a", "Zz", "é", "a1", "ä", "", "B", "😀", "ab"])
    assert fingerprint(ids) == fingerprint(ids.tolist()) == fingerprint(list(reversed(ids.tolist())))
    assert fingerprint(ids[:3]) != fingerprint(ids)


def test_labels_are_read_alone_once_per_store(tmp_path, monkeypatch):
    """`labels` reads only the labels column (one read a shard, kept by the Store object, which
    also gives `row_groups`); `clip_ids` then reads only the clip ids, and first reads both."""
    from data.shards import RowGroups
    _shards_store(tmp_path / "s")
    reads = []
    real = pq.ParquetFile.read

    def counted(self, columns=None, **kwargs):
        reads.append(tuple(columns))
        return real(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", counted)
    store = open_store(tmp_path / "s")
    shards = len(store.shard_paths("train"))
    labels, groups = store.labels("train"), store.row_groups("train")
    assert [list(labels[j]) for j in (0, 6, 149)] == [[0, 4], [1, 4], [4, 4]]
    assert labels.offsets.dtype == labels.indices.dtype == np.int64
    expected = RowGroups.of(store.shard_paths("train"))
    assert all(np.array_equal(getattr(groups, k), getattr(expected, k)) for k in ("shard", "index", "start"))
    store.labels("train")
    assert reads == [("labels",)] * shards
    assert store.clip_ids("train").tolist() == [f"id{i}" for i in range(150)]
    assert reads[shards:] == [("clip_id",)] * shards
    reads.clear()
    other = open_store(tmp_path / "s")
    other.clip_ids("train"), other.labels("train"), other.row_groups("train")
    assert reads == [("clip_id", "labels")] * shards


def _write_split_after(root: str, split: str, barrier) -> None:
    """In another process: open the store, wait until the other writer has opened it too, then
    write and record one split of 4 clips."""
    store = open_store(root)
    barrier.wait(timeout=60)
    w = store.writer(split)
    w.write([f"{split}{i}" for i in range(4)], [np.array([i % 3]) for i in range(4)],
            np.zeros((4, 4, 2), np.float16), np.full(4, 4))
    w.close()


def test_writers_that_opened_the_store_at_once_both_land(tmp_path):
    """Two writers that read the manifest before either recorded its split (two ingests at once):
    each records its split under the manifest lock, into the manifest as the other left it.
    In one process with two Store objects, then in two processes started together."""
    import multiprocessing
    store, _ = _small_store(tmp_path / "s")
    a, b = open_store(store.root), open_store(store.root)
    for s, split in ((a, "evA"), (b, "evB")):
        w = s.writer(split)
        w.write([f"{split}0"], [np.array([1])], np.zeros((1, 4, 2), np.float16), [4])
        w.close()
    assert open_store(store.root).splits == ["train", "evA", "evB"]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_split_after, args=(str(store.root), split, barrier)) for split in ("pA", "pB")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    final = open_store(store.root)
    assert final.splits == ["train", "evA", "evB", "pA", "pB"] or final.splits == ["train", "evA", "evB", "pB", "pA"]
    assert final.clip_ids("pA").tolist() == [f"pA{i}" for i in range(4)]
    assert final.validate(checksums="changed") == {"shards": 7, "hashed": 0, "recorded": True}


def _tree(root) -> dict:
    """{relative path: (bytes, mtime_ns)} of every file under `root`."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


@pytest.fixture
def format1(tmp_path):
    """A format-1 store, byte for byte what the previous release writes (data.convert --format 1
    of a format-2 synthetic store), and that format-2 store."""
    from data.convert import convert
    v2 = make_synthetic_store(tmp_path / "v2", SynthConfig(clips=60, classes=4, frames=8, mels=4, seed=2))
    return convert(v2.root, tmp_path / "v1", version=1), v2


def test_a_format1_store_is_read_as_it_is_and_never_written(format1):
    from data.stream import _Spec, plan_stream, read_block
    v1, v2 = format1
    before = _tree(v1.root)
    assert v1.format_version == 1 and v2.format_version == 2
    assert f"python -m data.convert --store {v1.root}" in v1.format_note() and v2.format_note() is None
    for split in v2.splits:
        assert v1.clip_ids(split).tolist() == v2.clip_ids(split).tolist()
        a, b = (np.concatenate([x["mel"] for x in s.iter_batches(split, 7)]) for s in (v1, v2))
        np.testing.assert_array_equal(a, b)
    cid = v2.clip_ids("valid")[3]
    np.testing.assert_array_equal(v1.spectrogram("valid", cid), v2.spectrogram("valid", cid))
    plans = [plan_stream(s, "train", 0.5, seed=1) for s in (v1, v2)]
    blocks = [read_block(p.index, _Spec(1, 0, p.units_per_block, s.n_classes, 0, (8, 4)), 0, 0)[0]
              for p, s in zip(plans, (v1, v2))]
    for key in ("clip_index", "mel", "target"):
        np.testing.assert_array_equal(blocks[0][key], blocks[1][key])
    shards = len([f for f in before if f.endswith(".parquet")])
    for _ in range(2):  # no page checksums: every check hashes every shard, and records nothing
        assert v1.validate(checksums="changed") == {"shards": shards, "hashed": shards, "recorded": True}
    with pytest.raises(StoreError, match=rf"{v1.root}: a format-1 store is read, never written to; copy it to "
                                         rf"format 2 first: python -m data.convert --store {v1.root}$"):
        v1.writer("extra")
    with pytest.raises(StoreError, match="never written to"):
        v1.add_split("extra", [], [], [], "given")
    assert _tree(v1.root) == before


def test_convert_writes_a_new_store_beside_the_old_one(format1, capsys):
    """`python -m data.convert --store OLD` (format 1) writes OLD-format2 beside it: the same
    manifest but for the format and the shards' sizes and hashes, shards byte for byte those
    the format-2 writer writes, every shard recorded as verified; OLD is left as it was. A second
    run, a store already in the format and a damaged store are one line each (exit 2), and the
    damaged one leaves nothing at --out."""
    from data.convert import main
    v1, v2 = format1
    before = _tree(v1.root)
    assert main(["--store", str(v1.root)]) == 0
    out = v1.root.with_name("v1-format2")
    assert "same clip ids and fingerprints" in capsys.readouterr().out
    copy = open_store(out)
    assert copy.format_version == 2 and _tree(v1.root) == before
    for split in v2.splits:
        assert copy.fingerprint(split) == v1.fingerprint(split) == v2.fingerprint(split)
        assert copy.split_info(split)["shards"] == v2.split_info(split)["shards"]  # same sizes and sha256
    assert {f: b for f, (b, _) in _tree(out).items() if f.endswith(".parquet")} == \
        {f: b for f, (b, _) in _tree(v2.root).items() if f.endswith(".parquet")}
    assert copy.validate(checksums="changed")["hashed"] == 0
    for args, why in (([], f"{out / 'manifest.json'} already exists"),
                      (["--out", str(out.with_name("again"))], None)):
        code = main(["--store", str(v1.root), *args])
        err = capsys.readouterr().err.strip()
        if why:
            assert code == 2 and err == f"error: {why}"
        else:
            assert code == 0 and not err
    assert main(["--store", str(out), "--out", str(out.with_name("x"))]) == 2
    assert capsys.readouterr().err.strip() == f"error: {out}: already a format-2 store; nothing to convert"
    shard = v1.shard_paths("train")[0]
    _overwrite(shard, 200, b"\x00" * 8, keep_mtime=True)
    assert main(["--store", str(v1.root), "--out", str(out.with_name("bad"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {shard}: content changed since it was written") and err.endswith("not copied")
    assert sorted(p.name for p in out.parent.iterdir()) == ["again", "v1", "v1-format2", "v2"]


def test_check_cli_says_what_it_hashed_and_names_a_damaged_shard(tmp_path, capsys):
    from data.check import main
    store = _mel_store(tmp_path / "s")
    assert main(["--store", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) | {"seconds": 0} == {
        "store": str(store.root), "format_version": 2, "shards": 1, "hashed": 0, "recorded": True, "seconds": 0}
    assert main(["--store", str(store.root), "--full"]) == 0
    assert "1 shards match the manifest (1 hashed" in capsys.readouterr().out
    [shard] = store.shard_paths("train")
    start, size = _mel_chunk(shard, 2)
    _overwrite(shard, start + size - 8, b"\xff" * 4, keep_mtime=False)
    assert main(["--store", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {shard}: content changed since it was written")


def test_spectrograms_are_read_straight_from_format2_pages(tmp_path, monkeypatch):
    """`RowGroups.spectrograms` of rows in any order (repeats, several shards) gives the stored
    spectrograms: from a format-2 store without pyarrow decoding a page (data/pages.py reads
    and checks them), from its format-1 copy through pyarrow."""
    from data.convert import convert
    from data.pages import SpectrogramPages
    from data.shards import RowGroups, close_shards, open_parquet
    store, mel = _shards_store(tmp_path / "s")
    v1 = convert(store.root, tmp_path / "v1", version=1)
    rows = np.array([149, 3, 45, 3, 0, 39, 40, 17, 121, 120, 46, 149, 3])
    calls = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for s, decoded in ((store, 0), (v1, 3)):
        close_shards()
        paths = s.shard_paths("train")
        assert all((SpectrogramPages.of(p, open_parquet(p), 16) is None) == (s is v1) for p in paths)
        calls.clear()
        np.testing.assert_array_equal(RowGroups.of(paths).spectrograms(rows, 4, 2), mel[rows])
        assert len(calls) == decoded  # format 1: one pyarrow read for each of shards 0, 1 and 3
    close_shards()
