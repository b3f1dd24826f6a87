"""Validation split (the paper's per-class procedure, or stratified), shards rewritten; union splits."""
import json

import numpy as np
import pytest
from helpers import classes, one_line_error

from data.cli import InputError
from data.balance import as_multilabels, class_counts, gini, imbalance_ratio, rarest_label_count
from data.split import SplitConfig, main, per_class_split, select_valid, stratified_split, valid_targets
from data.manifest import StoreError, fingerprint
from data.store import create_store, open_store


def _valid_counts(labels, valid, k):
    return class_counts(as_multilabels(labels).take(np.flatnonzero(valid)), k)


def test_per_class_by_hand():
    """Rarest first: class 3 (1 clip) keeps it; class 1 (2 clips) gives 1; class 2 (3 clips, each
    also class 0) gives 2, which count for class 0, so class 0 draws only one more, and never the
    last [2, 0] clip (class 2 would lose its last training clip)."""
    labels = [[3]] + [[2, 0]] * 3 + [[1]] * 2 + [[0]] * 10
    for seed in range(5):
        valid = per_class_split(labels, 4, min_per_class=3, seed=seed)
        assert valid.sum() == 4 and _valid_counts(labels, valid, 4).tolist() == [3, 1, 2, 0]
        assert valid[1:4].sum() == 2 and valid[4:6].sum() == 1 and valid[6:].sum() == 1
        assert (per_class_split(labels, 4, 3, seed=seed) == valid).all()
    draws = {tuple(np.flatnonzero(per_class_split(labels, 4, 3, seed=s))) for s in range(5)}
    assert len(draws) > 1                                  # the seed picks which clips


def test_per_class_draws_are_random_not_first():
    # class 1: 200 clips; the drawn 5 are spread over them, not the first 5 rows
    labels = [[0]] * 1000 + [[1]] * 200
    drawn = [np.flatnonzero(per_class_split(labels, 2, 5, seed=s)[1000:]) for s in range(20)]
    assert all(len(d) == 5 for d in drawn) and np.concatenate(drawn).max() > 100


def test_select_valid_methods():
    labels = [[0]] * 300 + [[1]] * 30
    assert select_valid(labels, 2, SplitConfig()).sum() == 10
    assert select_valid(labels, 2, SplitConfig(method="stratified")).sum() == 35   # 10 % of 300 + 5
    with pytest.raises(InputError, match="--fraction applies to --method stratified only"):
        select_valid(labels, 2, SplitConfig(fraction=0.1))


def test_paper_validation_split_on_the_published_labels(published_train):
    """The default split of the 2,063,949 published training clips (527 classes, the rarest
    Toothbrush with 67 clips), seed 0, rows in file order, measured on 2 shared cores:

        validation  1,836 clips   imbalance ratio 110.6    Gini 0.400   (selection 1.2-2.8 s)
        training    2,062,113     imbalance ratio 16,211   Gini 0.832   (before: 15,009, 0.832)
        stratified, fraction 0.1, for contrast: 206,417 clips, ratio 14,366, Gini 0.832 (37 s)
        AudioSet eval set (per-class too, at least 59 a class): 20,371 clips, ratio 96.5, Gini 0.370

    Seeds 1 and 2 give 1,838 / 1,825 clips, Gini 0.406 / 0.400; a 2M-row store in rarest-label
    row order gives 1,857 clips, ratio 115.8, Gini 0.405. The paper's Table 1 validation row was
    not found with the search tool available (only the abstract and introduction are stored);
    by its procedure (at least 5 clips of each of 527 classes, ~2.5 labels a clip) it is a set of
    a few thousand clips about as balanced as the evaluation sets, which the bands below check.
    """
    labels, ids = published_train.labels, published_train.clip_ids
    valid = per_class_split(labels, 527, min_per_class=5, seed=0)
    counts = class_counts(labels, 527)
    v = _valid_counts(labels, valid, 527)
    t = counts - v
    assert (v[counts >= 6] >= 5).all() and (t[counts >= 1] >= 1).all()
    assert len(np.intersect1d(ids[valid], ids[~valid])) == 0 and len(ids) == 2_063_949
    assert 1_000 <= valid.sum() <= 4_000
    assert gini(v) < 0.5 and gini(counts) > 0.83 and imbalance_ratio(v) < 300
    assert gini(t) == pytest.approx(gini(counts), abs=1e-3)
    assert (2 * v <= counts).all()                          # never more than half a class


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
    s = create_store(tmp_path / "s", classes(k), {"frames": 8, "mels": 4})
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
    assert main(["--store", str(store.root), "--from", "train", "--to", "holdout",
                 "--min-per-class", "5", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    s = open_store(store.root)
    s.validate()
    train, held = s.clip_ids("train"), s.clip_ids("holdout")
    assert not set(train) & set(held) and sorted([*train, *held]) == sorted(before_ids)
    assert out["clips"] == {"holdout": len(held), "train": len(train)}
    assert out["fingerprint"]["train"] == fingerprint(train) == s.fingerprint("train")
    v = s.class_counts("holdout")
    assert (v >= np.minimum(5, counts - 1)).all() and (s.class_counts("train") >= 1).all()
    assert [(c["class"], c["clips"], c["valid"]) for c in out["short_classes"]] == [(16, 3, 2), (17, 1, 0)]
    assert len(held) <= 5 * 17 and out["method"] == "per-class"   # a few per class, not a fraction
    assert out["gini"]["holdout"] == pytest.approx(gini(v[v > 0]))
    assert out["imbalance_ratio"]["train"] == pytest.approx(imbalance_ratio(s.class_counts("train")))
    assert [c["class"] for c in out["over_half"]][0] == 16
    warning = [line for line in captured.err.splitlines() if "warning" in line]   # besides tqdm's bars
    assert len(warning) == 1 and warning[0].startswith("warning: holdout takes more than half the clips of")
    assert "'c16' (class 16), 2 of 3" in warning[0]
    labels = s.labels("train")
    r = rarest_label_count(labels, class_counts(labels, s.n_classes))
    assert (np.diff(r) >= 0).all() and s.split_info("train")["order"] == "rarest_label"
    after = {**_mels(s, "train"), **_mels(s, "holdout")}
    assert after.keys() == before.keys() and all((after[c] == before[c]).all() for c in before)
    assert not any(p.exists() for p in old_files)
    assert s.splits == ["train", "eval_a", "eval_b", "holdout"] and len(s.shard_paths("train")) == 7


def test_carve_stratified_and_human_readable(store, capsys):
    counts = store.class_counts("train")
    assert main(["--store", str(store.root), "--to", "valid", "--method", "stratified",
                 "--fraction", "0.1"]) == 0
    text = capsys.readouterr().out.splitlines()
    s = open_store(store.root)
    v = s.class_counts("valid")
    assert (v >= np.minimum(5, counts - 1)).all() and 0.09 <= len(s.clip_ids("valid")) / 900 <= 0.25
    assert text[0].split() == ["split", "clips", "imbalance", "ratio", "Gini"]
    row = text[1].split()
    assert row[0] == "valid" and int(row[1].replace(",", "")) == len(s.clip_ids("valid"))
    assert float(row[3]) == pytest.approx(gini(v[v > 0]), abs=5e-4)
    assert text[2].split()[0] == "train" and "method stratified" in text[3]
    assert text[4].startswith("2 class(es) below the minimum")


def test_cli_errors_are_one_line(store, tmp_path, capsys):
    assert "no manifest" in one_line_error(capsys, main, ["--store", str(tmp_path / "none"), "--to", "valid"])
    assert "'eval_a' exists already" in one_line_error(capsys, main, ["--store", str(store.root), "--to", "eval_a"])
    assert "--fraction applies to --method stratified only" in one_line_error(
        capsys, main, ["--store", str(store.root), "--to", "valid", "--fraction", "0.2"])
    assert "--fraction must be in [0, 1)" in one_line_error(
        capsys, main, ["--store", str(store.root), "--to", "valid", "--method", "stratified", "--fraction", "1.5"])
    assert "give either --to" in one_line_error(capsys, main, ["--store", str(store.root)])
    assert open_store(store.root).splits == ["train", "eval_a", "eval_b"]   # nothing written
    with pytest.raises(SystemExit) as e:                                    # usage error: one line
        main(["--store", str(store.root), "--to", "valid", "--min-per-class", "0"])
    assert e.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


def test_union_reads_as_the_concatenation(store, capsys):
    assert main(["--store", str(store.root), "--union", "eval_all", "--of", "eval_a", "eval_b", "--json"]) == 0
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
    assert "part of one" in one_line_error(capsys, main, ["--store", str(store.root), "--from", "eval_a", "--to", "v2"])
    assert "give either --to" in one_line_error(capsys, main, ["--store", str(store.root), "--union", "x"])


def test_union_parts_either_style(store, capsys):
    """--of b --of a is --of b a: the same parts in the same order (readable output by default)."""
    assert main(["--store", str(store.root), "--union", "spaced", "--of", "eval_b", "eval_a", "--json"]) == 0
    spaced = json.loads(capsys.readouterr().out)["spaced"]
    assert main(["--store", str(store.root), "--union", "repeated", "--of", "eval_b", "--of", "eval_a"]) == 0
    s = open_store(store.root)
    repeated = s.split_info("repeated")
    assert capsys.readouterr().out.strip() == (f"repeated: union of eval_b + eval_a, {repeated['clips']:,} clips, "
                                               f"{repeated['fingerprint']}")
    assert repeated["union_of"] == spaced["union_of"] == ["eval_b", "eval_a"]
    assert repeated["fingerprint"] == spaced["fingerprint"] == fingerprint(
        np.concatenate([s.clip_ids("eval_b"), s.clip_ids("eval_a")]))


def test_carve_order_is_the_stable_sort_by_new_counts(store):
    """The new training split is exactly the remaining rows, in their old order, stably sorted
    by rarest-label count against the new class counts (not merely non-decreasing)."""
    from data.split import carve
    ids, labels = store.clip_ids("train"), store.labels("train")
    out = carve(store, SplitConfig(target="valid"))
    s = open_store(store.root)
    held = set(s.clip_ids("valid"))
    keep = np.flatnonzero([c not in held for c in ids])
    kept = labels.take(keep)
    r = rarest_label_count(kept, class_counts(kept, s.n_classes))
    assert s.clip_ids("train").tolist() == ids[keep[np.argsort(r, kind="stable")]].tolist()
    assert out["fingerprint"] == {"valid": fingerprint(s.clip_ids("valid")),
                                  "train": fingerprint(s.clip_ids("train"))}
    s.validate()


def test_shards_copied_by_threads_are_the_shards_copied_in_order(store, monkeypatch):
    """`_write` with several threads, several shards a task, writes the same shards (names,
    rows, sha256) as one thread a shard at a time; a row group that cannot be read stops it
    with the error naming file and group."""
    from data import split as split_mod
    from data.shards import close_shards
    source = store.row_groups("train")
    rows = np.random.default_rng(0).permutation(900)[:700]
    one = split_mod._write(store, source, rows, "one", 64, threads=1)
    three = split_mod._write(store, source, rows, "three", 64, threads=3, per_task=4)
    assert len(one) == 11 and [s["rows"] for s in one] == [s["rows"] for s in three]
    assert [s["file"].split("/")[1] for s in one] == [s["file"].split("/")[1] for s in three]
    assert [s["sha256"] for s in one] == [s["sha256"] for s in three]
    import pyarrow.parquet as pq
    copied = np.concatenate([pq.read_table(store.root / s["file"], columns=["clip_id"])["clip_id"].to_numpy(
        zero_copy_only=False) for s in three])
    assert copied.tolist() == store.clip_ids("train")[rows].tolist()
    real = split_mod.RowGroups.read

    def failing(self, wanted, *args, **kwargs):
        if 450 in wanted:
            raise StoreError(f"{self.paths[3]}: row group 2 is unreadable (OSError: damaged)")
        return real(self, wanted, *args, **kwargs)

    monkeypatch.setattr(split_mod.RowGroups, "read", failing)
    bad = np.arange(900)
    for threads in (1, 3):
        with pytest.raises(StoreError, match=r"part-00003\.parquet: row group 2 is unreadable"):
            split_mod._write(store, source, bad, f"bad{threads}", 64, threads=threads)
        written = sorted(p.name for p in (store.root / f"bad{threads}").glob("*.parquet"))
        assert "part-00007.parquet" not in written and len(written) <= 7 + 2 * threads
    close_shards()
    assert split_mod._shards_per_task([{"bytes": 33_000}] * 3) == 16          # labels only
    assert split_mod._shards_per_task([{"bytes": 128 << 20}, {"bytes": 5}]) == 1   # 512 x 1024 x 128
    assert split_mod._shards_per_task([{"bytes": 16 << 20}]) == 4 and split_mod._shards_per_task([]) == 16
    monkeypatch.setattr(split_mod.os, "cpu_count", lambda: 2)
    assert split_mod._copy_threads(252, 16 * 33_000) == 4                        # 2 a core
    assert split_mod._copy_threads(4032, 128 << 20) == 2 and split_mod._copy_threads(1, 0) == 1
    assert split_mod._copy_threads(10, 1 << 30) == 1                              # memory first


@pytest.mark.parametrize("argv", [["--to", "../../escaped"], ["--to", "/tmp/escaped-abs"], ["--to", "a/b"],
                                  ["--to", ".."], ["--union", "../u", "--of", "eval_a", "eval_b"],
                                  ["--union", "x/y", "--of", "eval_a"]])
def test_split_names_are_plain_names(store, capsys, argv):
    """A split name is a directory of the store: a path is refused (as data.ingest --split refuses
    it), in one line naming the flag and the value, and nothing is written anywhere."""
    before = {p: p.stat().st_mtime_ns for p in store.root.parent.rglob("*")}
    flag, name = argv[0], argv[1]
    line = one_line_error(capsys, main, ["--store", str(store.root), *argv])
    assert line == f"error: {flag}: {name!r} is not a plain name (a split is a directory of the store)"
    assert {p: p.stat().st_mtime_ns for p in store.root.parent.rglob("*")} == before
    assert open_store(store.root).splits == ["train", "eval_a", "eval_b"]
    with pytest.raises(InputError, match="is not a plain name"):
        from data.split import carve
        carve(store, SplitConfig(target="../x"))
