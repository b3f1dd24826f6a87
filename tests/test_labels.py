import gzip

import numpy as np
import pytest

from data import balance as B
from data.labels import LabelFileError, read_class_index, read_segments
from data.stats import main as stats_main, partition_stats
from helpers import one_line_error

# The paper's Table 2 Gini column (published train) and Table 1 ratio.
TABLE2_GINI = {0.0: 0.83, 0.1: 0.79, 0.2: 0.75, 0.3: 0.71, 0.5: 0.63, 0.7: 0.56, 1.0: 0.47}


@pytest.fixture(scope="module")
def class_index(audioset):
    return read_class_index(audioset / "class_labels_indices.csv")


def test_the_schemes_on_the_published_labels(audioset, class_index, capsys):
    """data.stats --scheme on the 2,063,949 published training clips: the rivals' oversampled sets
    at exponent 1 and 0.5 (Gini as the paper's eq. 3, the standard Gini less 1/K, to 3 decimals;
    the pass length within 0.01%)."""
    import json
    want = {("moore", 1.0): (0.465, 144, 437_491_263, 15_009), ("psla", 1.0): (0.508, 174, 529_919_294, 26_209),
            ("passt", 1.0): (0.533, 372, 475_423_879, 14_020),
            ("moore", 0.5): (0.629,), ("psla", 0.5): (0.640,), ("passt", 0.5): (0.649,)}
    assert stats_main(["--class-index", str(audioset / "class_labels_indices.csv"), "--segments",
                       str(audioset / "balanced_train_segments.csv"), str(audioset / "unbalanced_train_segments.csv.gz"),
                       "--scheme", "moore", "psla", "passt", "--betas", "0.5", "1", "--json"]) == 0
    rows = {(r["scheme"], r["beta"]): r for r in json.loads(capsys.readouterr().out)["oversampled"]}
    assert set(rows) == set(want)
    for key, (g, *rest) in want.items():
        assert round(rows[key]["gini"] - 1 / 527, 3) == g, key
        if rest:
            ratio, length, repeat = rest
            assert round(rows[key]["imbalance_ratio"]) == ratio and rows[key]["max_repeat"] == repeat, key
            assert abs(rows[key]["epoch_length"] - length) <= 1e-4 * length, key


def test_published_train_reproduces_tables_1_and_2(audioset, published_train, class_index):
    seg = published_train
    s = partition_stats(seg.labels, len(class_index), tuple(TABLE2_GINI))
    assert round(s["imbalance_ratio"]) == 15_009
    assert round(s["gini"], 2) == 0.83
    for row in s["oversampled"]:
        assert round(row["gini"], 2) == TABLE2_GINI[row["beta"]], row
    assert s["oversampled"][-1]["max_repeat"] == 15_009
    # the label totals agree with the per-split counts shipped beside the CSVs
    full = np.loadtxt(audioset / "class_counts_by_split.csv", delimiter=",", skiprows=1,
                      usecols=6, dtype=np.int64, converters={6: int}, quotechar='"')
    assert B.class_counts(seg.labels, 527).tolist() == full.tolist()


def test_the_recipes_on_the_published_labels(published_train):
    """data.stats' recipe rows (what `--recipe ast passt --betas 1 --json` prints) on the 2,063,949
    published training clips, against the recipes as their training code draws: ast's expected
    exposure of class k is E sum_{j in k} w_j / sum_j w_j (w_j = sum over j's labels of
    1 / (N_k + 0.01), E = N) to 1e-6 relative; passt's is within 3% of the mean of 50 seeded
    epochs of torch.multinomial(w, 100,000, replacement=False) (w_j = sum of 1 / (N_k + 100))
    for every class with >= 500 expected draws an epoch (about 20 s)."""
    torch = pytest.importorskip("torch")
    from data.stats import recipe_rows
    ml = published_train.labels
    rows = {r["recipe"]: r for r in recipe_rows(ml, 527, ["ast", "passt"], [1.0])}
    assert [rows[r]["epoch_length"] for r in ("ast", "passt")] == [2_063_949, 100_000]
    n_k, clip = B.class_counts(ml, 527).astype(float), np.repeat(np.arange(len(ml)), ml.lengths)

    def weights(offset: float) -> np.ndarray:
        return np.bincount(clip, weights=1 / (n_k[ml.indices] + offset))
    w = weights(0.01)
    np.testing.assert_allclose(rows["ast"]["exposure"], len(ml) * B.class_counts(ml, 527, weights=w) / w.sum(),
                               rtol=1e-6)
    w, generator, drawn = torch.from_numpy(weights(100.0)), torch.Generator().manual_seed(0), np.zeros(len(ml))
    for _ in range(50):
        drawn[torch.multinomial(w, 100_000, replacement=False, generator=generator).numpy()] += 1
    simulated, expected = B.class_counts(ml, 527, weights=drawn / 50), np.array(rows["passt"]["exposure"])
    big = expected >= 500
    assert big.sum() >= 50 and np.abs(simulated[big] / expected[big] - 1).max() < 0.03
    assert rows["passt"]["max_clip_exposure"] < 1 <= rows["ast"]["max_clip_exposure"]  # a subset: no clip twice


def test_eval_csv(audioset, class_index):
    seg = read_segments(audioset / "eval_segments.csv", class_index)
    assert len(seg) == 20_371 and len(seg.labels.indices) == 51_804
    assert seg.clip_ids[0] == "--4gqARaEJE" and seg.start[0] == 0.0 and seg.end[0] == 10.0


def _write(path, rows, header=("# YTID, start_seconds, end_seconds, positive_labels",)):
    text = "\n".join(list(header) + rows) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_one_header_line_gz_and_no_space_variant(tmp_path, class_index):
    a = _write(tmp_path / "a.csv.gz", ['aaa, 0.000, 10.000, "/m/09x0r,/m/04rlf"'])
    b = _write(tmp_path / "b.csv", ['bbb,1.0,11.0,"/m/04rlf"'], header=("# a", "# b", "# c"))
    seg = read_segments([a, b], class_index)
    assert seg.clip_ids.tolist() == ["aaa", "bbb"]
    assert [list(seg.labels[j]) for j in range(2)] == [[0, 137], [137]]


def test_unknown_mids_are_named_and_counted(tmp_path, class_index):
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r,/m/nope"', 'b, 0, 10, "/m/nope"',
                                    'c, 0, 10, "/m/other"'])
    with pytest.raises(LabelFileError, match=r"x\.csv: 2 unknown label\(s\): /m/nope \(2x\), /m/other \(1x\), "
                                             "not in the class index"):
        read_segments(f, class_index)


def test_duplicate_ytids_are_named(tmp_path, class_index):
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r"', 'b, 0, 10, "/m/09x0r"',
                                    'a, 30, 40, "/m/09x0r"'])
    with pytest.raises(LabelFileError, match="1 duplicate YTID.*e.g. a"):
        read_segments(f, class_index)


def test_a_label_repeated_within_a_clip_counts_once(tmp_path, class_index):
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r,/m/04rlf,/m/09x0r"', 'b, 0, 10, "/m/04rlf"',
                                    'c, 0, 10, "/m/04rlf,/m/04rlf"'])
    with pytest.warns(UserWarning, match=r"x\.csv: 2 clip\(s\) list a label more than once, counted once \(e\.g\. a, c\)"):
        seg = read_segments(f, class_index)
    assert [list(seg.labels[j]) for j in range(3)] == [[0, 137], [137], [137]]
    assert B.class_counts(seg.labels, len(class_index))[[0, 137]].tolist() == [1, 3]


def test_bad_class_index(tmp_path):
    (tmp_path / "ci.csv").write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(LabelFileError, match="ci.csv:3: index 2 out of order"):
        read_class_index(tmp_path / "ci.csv")


def test_stats_cli_json(audioset, capsys):
    import json
    stats_main(["--segments", str(audioset / "eval_segments.csv"), "--class-index",
                str(audioset / "class_labels_indices.csv"), "--betas", "0", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 20_371 and out["empty_classes"] == []
    assert set(out) >= {"clips", "classes", "labels_per_clip", "imbalance_ratio", "gini",
                        "empty_classes", "oversampled"}
    assert [r["beta"] for r in out["oversampled"]] == [0.0, 1.0]
    assert set(out["oversampled"][0]) == {"scheme", "beta", "imbalance_ratio", "gini", "epoch_length", "max_repeat"}
    stats_main(["--segments", str(audioset / "eval_segments.csv"), "--class-index",
                str(audioset / "class_labels_indices.csv"), "--recipe", "moore", "passt@1000", "--betas", "1", "--json"])
    rows = json.loads(capsys.readouterr().out)["recipes"]
    assert [(r["recipe"], r["draw"], r["epoch_length"]) for r in rows] == [
        ("moore", "repeats", out["oversampled"][1]["epoch_length"]), ("passt@1000", "subset", 1000)]
    assert set(rows[0]) == {"recipe", "scheme", "draw", "beta", "epoch_length", "exposure", "gini", "imbalance_ratio",
                            "max_clip_exposure"} and len(rows[1]["exposure"]) == 527
    assert rows[0]["gini"] == pytest.approx(out["oversampled"][1]["gini"])  # repeats: the oversampled set's
    eval_args = ["--segments", str(audioset / "eval_segments.csv"), "--class-index",
                 str(audioset / "class_labels_indices.csv"), "--recipe"]
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit, one line
        stats_main([*eval_args, "focal"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().startswith(
        "error: python -m data.stats: argument --recipe: unknown balancing recipe 'focal'")
    assert one_line_error(capsys, stats_main, [*eval_args, "passt"]).endswith(
        "recipe 'passt' draws 100,000 clips an epoch without replacement and the split has 20,371: "
        "give a shorter epoch, e.g. passt@2037")


def test_lenient_read_leaves_out_what_strict_refuses(tmp_path, class_index):
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r,/m/nope"', 'b, 0, 10, "/m/nope"',
                                    'a, 30, 40, "/m/04rlf"', 'c, 0, 10, "/m/04rlf"'])
    seg, issues = read_segments(f, class_index, strict=False)
    assert seg.clip_ids.tolist() == ["a", "c"]
    assert [list(seg.labels[j]) for j in range(2)] == [[0], [137]]
    assert issues.unknown_mids == {"/m/nope": 2} and issues.duplicate_ytids == ["a"]
    assert issues.unlabelled == ["b"]


def test_a_row_that_does_not_parse_is_named_by_line(tmp_path, class_index):
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r"', 'b, 0', 'c, 0, 10, "/m/04rlf"'],
               header=("# a", "# b", "# c"))
    with pytest.raises(LabelFileError, match=r"x\.csv:5 \('b,0'\): not 'YTID, start, end"):
        read_segments(f, class_index)
    f = _write(tmp_path / "y.csv", ['a, 0, 10, "/m/09x0r"', 'b, zero, 10, "/m/09x0r"'])
    with pytest.raises(LabelFileError, match=r"y\.csv:3 .*conversion error"):
        read_segments(f, class_index)


def test_unreadable_label_files_are_named(audioset, tmp_path, class_index):
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes((audioset / "unbalanced_train_segments.csv.gz").read_bytes()[:50_000])
    with pytest.raises(LabelFileError, match=rf"{gz}: truncated gzip file"):
        read_segments(gz, class_index)
    fake = tmp_path / "plain.csv.gz"
    fake.write_bytes((audioset / "eval_segments.csv").read_bytes()[:1000])
    with pytest.raises(LabelFileError, match=rf"{fake}: not a valid gzip file"):
        read_segments(fake, class_index)
    latin1 = tmp_path / "latin1.csv.gz"
    with gzip.open(latin1, "wb") as out:
        out.write(b'# h\na, 0, 10, "/m/09x0r"\nb\xe9, 0, 10, "/m/09x0r"\n')
    with pytest.raises(LabelFileError, match=rf"{latin1}:3: not UTF-8 text \(byte 0xe9 at offset 26 of the "
                                             "uncompressed text\\)"):
        read_segments(latin1, class_index)
    (tmp_path / "ci.csv").write_text("index,mid,display_name\n0,/m/a,A\nx,/m/b,B\n")
    with pytest.raises(LabelFileError, match=r"ci\.csv:3: index 'x' is not a number"):
        read_class_index(tmp_path / "ci.csv")


def test_a_bom_is_ignored_with_or_without_a_header(tmp_path, audioset, class_index):
    """A file saved by a spreadsheet starts with a UTF-8 BOM: it is not part of the first line,
    whether that is a `#` header, the first clip, or the class index's header."""
    row = 'abc, 0, 10, "/m/09x0r"\n'.encode()
    (tmp_path / "header.csv").write_bytes(b"\xef\xbb\xbf# YTID, start_seconds, end_seconds, positive_labels\n" + row)
    (tmp_path / "bare.csv").write_bytes(b"\xef\xbb\xbf" + row)
    for name in ("header.csv", "bare.csv"):
        seg = read_segments(tmp_path / name, class_index)
        assert seg.clip_ids.tolist() == ["abc"] and list(seg.labels[0]) == [0], name
    (tmp_path / "ci.csv").write_bytes(b"\xef\xbb\xbf" + (audioset / "class_labels_indices.csv").read_bytes())
    assert read_class_index(tmp_path / "ci.csv") == class_index


def test_an_empty_label_list_is_a_clip_without_labels(tmp_path, class_index):
    """`""` lists no label (not the unknown MID ''); empty items between commas are nothing."""
    f = _write(tmp_path / "x.csv", ['a, 0, 10, "/m/09x0r"', 'b, 0, 10, ""', 'c, 0, 10, "/m/09x0r,,"',
                                    'd, 0, 10, "/m/nope"'])
    seg, issues = read_segments(f, class_index, strict=False)
    assert seg.clip_ids.tolist() == ["a", "c"] and [list(seg.labels[j]) for j in range(2)] == [[0], [0]]
    assert issues.unknown_mids == {"/m/nope": 1} and issues.unlabelled == ["d"] and issues.no_labels == ["b"]
    f = _write(tmp_path / "y.csv", ['a, 0, 10, "/m/09x0r"', 'b, 0, 10, ""'])
    with pytest.raises(LabelFileError, match=r"y\.csv: 1 clip\(s\) with an empty label list: b"):
        read_segments(f, class_index)
