"""Ingest on a real local Ray: generated soundfile audio in several layouts, bad files, resume."""
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.compliance import kaldi

from data.cli import InputError
from data.balance import class_counts, rarest_label_count
from data.ingest import AudioFinder, IngestConfig, ingest, main
from data.labels import read_class_index
from data.store import open_store

from conftest import start_local_ray

AST_FBANK = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                 num_mel_bins=128, dither=0.0, frame_shift=10)

# clip id -> (file name or None, rate, channels, seconds, class indices)
CLIPS = {
    "aaaaaaaaaaa": ("aaaaaaaaaaa.wav", 16000, 1, 10.0, [0]),
    "bbbbbbbbbbb": ("Ybbbbbbbbbbb.flac", 44100, 2, 10.0, [0, 1]),
    "ccccccccccc": ("ccccccccccc_30.000.wav", 8000, 1, 3.0, [2]),
    "ddddddddddd": ("sub/ddddddddddd_30.flac", 48000, 2, 12.5, [0, 2]),
    "eeeeeeeeeee": ("eeeeeeeeeee.ogg", 22050, 1, 4.0, [1]),
    "fffffffffff": ("fffffffffff.wav", 16000, 2, 0.6, [0]),
    "ggggggggggg": ("ggggggggggg.wav", 32000, 1, 10.0, [3]),
    "hhhhhhhhhhh": ("hhhhhhhhhhh.wav", 16000, 1, 5.0, [0, 3]),
    "mixedmid000": ("mixedmid000.wav", 16000, 1, 2.0, [1]),   # + an unknown MID, dropped
    "tooshort000": ("tooshort000.wav", 16000, 1, 0.05, [0]),
    "corrupt0000": ("corrupt0000.wav", None, 1, 0, [0]),
    "emptyfile00": ("emptyfile00.flac", None, 1, 0, [1]),
    "missing0000": (None, None, 1, 0, [2]),
    "unknownmid0": ("unknownmid0.wav", 16000, 1, 1.0, []),     # only an unknown MID
}
KEPT = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd", "eeeeeeeeeee", "fffffffffff",
        "ggggggggggg", "hhhhhhhhhhh", "mixedmid000"]


@pytest.fixture(scope="module")
def ray_module(_ray_session):
    """The session's local Ray (tests/conftest.py), for this module's module-scoped fixtures."""
    import ray
    if not ray.is_initialized():
        start_local_ray()
    return ray


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, audioset):
    """Audio files, a segment CSV (with a duplicate YTID and unknown MIDs) and the class index."""
    root = tmp_path_factory.mktemp("ingest")
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    mids = read_class_index(audioset / "class_labels_indices.csv").mids
    lines = ["# Segments csv", "# YTID, start_seconds, end_seconds, positive_labels"]
    for k, (clip, (name, rate, channels, seconds, labels)) in enumerate(CLIPS.items()):
        if name and rate:
            t = np.arange(int(rate * seconds)) / rate
            x = 0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t)[:, None] * np.linspace(1, 0.5, channels)
            x = x + 0.05 * np.random.default_rng(k).standard_normal((len(t), channels))
            sf.write(audio / name, x.astype(np.float32), rate)
        elif name:
            (audio / name).write_bytes(b"not audio at all" * 20 if "corrupt" in clip else b"")
        tags = [mids[i] for i in labels] + (["/m/not_a_class"] if clip in ("mixedmid000", "unknownmid0")
                                            else [])
        lines.append(f'{clip}, 30.000, 40.000, "{",".join(tags)}"')
    lines.append(f'aaaaaaaaaaa, 0.000, 10.000, "{mids[5]}"')  # duplicate YTID: the first row wins
    (root / "segments.csv").write_text("\n".join(lines) + "\n")
    return root, audio


def _run(inputs, **kw):
    root, audio = inputs
    return ingest(IngestConfig([str(root / "segments.csv")], str(root.parent / "class_index.csv"), str(audio),
                               str(root / "store"), "train", rows_per_shard=3, **kw))


@pytest.fixture(scope="module")
def first_run(ray_module, inputs, audioset):
    """The first ingest, as Ray tasks (an ingest this small runs in process otherwise: the
    module's reruns do)."""
    import data.ingest
    root, _ = inputs
    (root.parent / "class_index.csv").write_bytes((audioset / "class_labels_indices.csv").read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data.ingest, "IN_PROCESS_CLIPS", 0)
        return _run(inputs), open_store(root / "store")


def test_files_are_found_in_every_layout(inputs):
    _, audio = inputs
    finder = AudioFinder(audio)
    assert finder.find("ccccccccccc", 30.0).endswith("ccccccccccc_30.000.wav")
    assert finder.find("ddddddddddd", 30.0).endswith("sub/ddddddddddd_30.flac")
    assert finder.find("bbbbbbbbbbb", 0.0).endswith("Ybbbbbbbbbbb.flac")
    assert finder.find("missing0000", 30.0) is None
    assert AudioFinder(audio, ["sub/{ytid}_{start_g}.{ext}"], ["flac"]).find("ddddddddddd", 30.0)
    with pytest.raises(InputError, match="bad field 'yid'"):
        AudioFinder(audio, ["{yid}.wav"])


def test_stored_features_equal_kaldi_fbank(first_run, inputs):
    report, store = first_run
    _, audio = inputs
    assert store.n_classes == 527 and store.frames == 1024 and store.mels == 128
    assert sorted(store.clip_ids("train")) == sorted(KEPT)
    for clip in KEPT:
        name, rate, _, seconds, _ = CLIPS[clip]
        samples, _ = sf.read(audio / name, dtype="float32", always_2d=True)
        wave = AF.resample(torch.from_numpy(samples).mean(1), rate, 16000)
        want = kaldi.fbank((wave - wave.mean())[None], **AST_FBANK).numpy()[:1024]
        got = store.spectrogram("train", clip).astype(np.float32)
        np.testing.assert_allclose(got[:len(want)], want, atol=0.02, rtol=2e-3, err_msg=clip)
        assert (got[len(want):] == 0).all()
    ids = store.clip_ids("train").tolist()
    assert [list(store.labels("train")[ids.index("mixedmid000")])] == [[1]]
    assert list(store.labels("train")[ids.index("aaaaaaaaaaa")]) == [0]


def test_bad_input_is_reported_and_the_rest_kept(first_run):
    report, store = first_run
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    assert reasons == {"tooshort000": "too_short", "corrupt0000": "unreadable", "emptyfile00": "empty",
                       "missing0000": "missing", "unknownmid0": "unknown_mid"}
    assert report["ingested"] == len(KEPT) and report["complete"]
    issues = report["label_issues"]
    assert issues["unknown_mids"] == {"/m/not_a_class": 2} and issues["duplicate_ytids"] == ["aaaaaaaaaaa"]
    on_disk = json.loads((store.root / "ingest_report.json").read_text())["train"]
    assert on_disk["skipped_by_reason"] == {"unknown_mid": 1, "missing": 1, "unreadable": 1, "empty": 1,
                                            "too_short": 1}
    store.validate()


def test_train_is_in_rarest_label_order(first_run):
    _, store = first_run
    labels = store.labels("train")
    r = rarest_label_count(labels, class_counts(labels, store.n_classes))
    assert (np.diff(r) >= 0).all() and store.split_info("train")["order"] == "rarest_label"
    n_frames = {c: n for c, n in zip(store.clip_ids("train"), _column(store, "n_frames"))}
    assert (n_frames["aaaaaaaaaaa"], n_frames["ddddddddddd"], n_frames["fffffffffff"]) == (998, 1024, 58)


def _column(store, name):
    import pyarrow.parquet as pq
    return np.concatenate([pq.read_table(p, columns=[name])[name].to_numpy()
                           for p in store.shard_paths("train")])


def test_rerun_resumes_without_repeating_work(first_run, inputs, capsys):
    _, store = first_run
    shards = store.shard_paths("train")
    mtimes = {p: os.stat(p).st_mtime_ns for p in shards}
    fp = store.fingerprint("train")
    root, audio = inputs
    index = str(root.parent / "class_index.csv")
    rc = main(["--segments", str(root / "segments.csv"), "--class-index", index, "--audio-dir", str(audio),
               "--store", str(store.root), "--split", "train", "--rows-per-shard", "3", "--json"])
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert rc == 0 and printed["computed"] == 0 and printed["reused"] == len(KEPT)
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 3 and warning[0].startswith("warning: 523 of 527 classes of ")
    assert "labels dropped from their clips: 1 unknown label(s): /m/not_a_class (2x); 1 clip(s) left" in warning[1]
    assert warning[2].endswith("1 repeated clip id(s) left out (the first kept), e.g. aaaaaaaaaaa (see ingest_report.json)")
    assert "have no clip in split 'train': they are left out of its priors and metrics" in warning[0]
    assert printed["empty_classes"] == 523 and printed["shards_redone"] == []
    assert printed["shards_reused"] == printed["shards"] == 4
    assert printed["skipped_examples"]["missing"] == ["missing0000"]
    assert {p: os.stat(p).st_mtime_ns for p in shards} == mtimes
    # an interrupted run: one shard never written -> only that chunk is computed again
    os.remove(shards[1])
    report = _run(inputs)
    assert report["computed"] == 3 and report["shards_reused"] == 3
    del mtimes[shards[1]]
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    assert open_store(store.root).fingerprint("train") == fp


def test_rerun_redoes_a_damaged_shard(first_run, inputs, capsys):
    """64 bytes of one shard's spectrograms overwritten (same size, footer intact): the rerun
    finds it by its hash, computes that chunk again and reuses the others."""
    _, store = first_run
    store = open_store(store.root)
    shards = store.shard_paths("train")
    good = open(shards[2], "rb").read()
    with open(shards[2], "r+b") as f:
        f.seek(len(good) // 2)
        f.write(bytes(range(64)))
    with pytest.raises(Exception, match=r"part-00002\.parquet: content changed"):
        open_store(store.root).validate()
    mtimes = {p: os.stat(p).st_mtime_ns for p in shards if p != shards[2]}
    root, audio = inputs
    rc = main(["--segments", str(root / "segments.csv"), "--class-index", str(root.parent / "class_index.csv"),
               "--audio-dir", str(audio), "--store", str(store.root), "--split", "train", "--rows-per-shard", "3",
               "--json"])
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert rc == 0 and printed["computed"] == 3 and printed["shards_reused"] == 3
    [redone] = printed["shards_redone"]
    assert redone["file"] == "train/part-00002.parquet" and redone["why"].startswith("content changed")
    assert "1 damaged or unverifiable shard(s) computed again, e.g. train/part-00002.parquet" in err
    assert open(shards[2], "rb").read() == good  # computed again, byte for byte
    assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    open_store(store.root).validate()


def test_pattern_and_ext_lists_replace_the_defaults(first_run, inputs, capsys):
    """--audio-pattern P --audio-pattern Q and --ext wav: only those names are tried (the defaults
    are replaced, not extended); the summary printed is readable."""
    _, store = first_run
    root, audio = inputs
    rc = main(["--segments", str(root / "segments.csv"), "--class-index", str(root.parent / "class_index.csv"),
               "--audio-dir", str(audio), "--store", str(store.root), "--split", "wav_only",
               "--audio-pattern", "{ytid}.{ext}", "--audio-pattern", "{ytid}_{start}.{ext}", "--ext", "wav"])
    out = capsys.readouterr().out.splitlines()
    wav = ["aaaaaaaaaaa", "ccccccccccc", "fffffffffff", "ggggggggggg", "hhhhhhhhhhh", "mixedmid000"]
    assert rc == 0 and sorted(open_store(store.root).clip_ids("wav_only")) == wav
    report = json.loads((store.root / "ingest_report.json").read_text())["wav_only"]
    assert report["config"]["patterns"] == ["{ytid}.{ext}", "{ytid}_{start}.{ext}"]
    assert report["config"]["exts"] == ["wav"]
    missing = sorted(s["clip_id"] for s in report["skipped"] if s["reason"] == "missing")
    assert missing == ["bbbbbbbbbbb", "ddddddddddd", "eeeeeeeeeee", "emptyfile00", "missing0000"]
    assert out[0].startswith(f"{store.root} [wav_only]: 6 of {report['clips_listed']} clips ingested, 1 shard(s) (0 reused), ")
    reasons = ", ".join(f"{r} {n}" for r, n in report["skipped_by_reason"].items())
    assert out[1] == f"skipped: {reasons} (each clip and why in {store.root / 'ingest_report.json'})"


def test_no_clip_with_a_spectrogram_is_an_error(ray_module, inputs, tmp_path):
    root, audio = inputs
    segments = tmp_path / "segments.csv"
    segments.write_text("\n".join(line for line in (root / "segments.csv").read_text().splitlines()
                                  if line.startswith(("#", "corrupt0000", "emptyfile00"))) + "\n")
    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"ingest_report\.json: no clip of split 'train' gave a spectrogram "
                                         r"\((unreadable 1, empty 1|empty 1, unreadable 1)\); the split is not"):
        ingest(IngestConfig([str(segments)], str(root.parent / "class_index.csv"), str(audio), str(out), "train"))
    assert open_store(out).splits == []


def _tone(path, seconds=1.0, rate=16000, k=0):
    """A short noisy tone written as a WAV file (the directories made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * (300 + 40 * k) * t) + 0.02 * np.random.default_rng(k).standard_normal(len(t))
    sf.write(path, x.astype(np.float32), rate)


def test_clip_ids_that_are_paths_are_never_read(audioset, tmp_path, capsys):
    """A YTID that is a relative path out of --audio-dir or an absolute path names no file of the
    audio directory: the clip is skipped with its reason and the file is never read."""
    secret, audio = tmp_path / "secret", tmp_path / "data" / "audio"
    for k, path in enumerate([secret / "private.wav", secret / "private2.wav", audio / "okclip0000.wav"]):
        _tone(path, k=k)
    ids = ["okclip0000", "../../secret/private", str(secret / "private2")]
    (tmp_path / "segments.csv").write_text("".join(f'{y}, 0.000, 10.000, "/m/09x0r"\n' for y in ids))
    store = tmp_path / "store"
    assert main(["--segments", str(tmp_path / "segments.csv"), "--class-index",
                 str(audioset / "class_labels_indices.csv"), "--audio-dir", str(audio), "--store", str(store),
                 "--split", "train", "--json"]) == 0
    assert open_store(store).clip_ids("train").tolist() == ["okclip0000"]
    report = json.loads((store / "ingest_report.json").read_text())["train"]
    assert {s["clip_id"]: s["reason"] for s in report["skipped"]} == {ids[1]: "bad_clip_id", ids[2]: "bad_clip_id"}
    assert all("not looked up" in s["detail"] for s in report["skipped"])
    with pytest.raises(InputError, match=r"audio pattern '\.\./\{ytid\}\.\{ext\}': must stay inside"):
        AudioFinder(audio, ["../{ytid}.{ext}"])
    with pytest.raises(InputError, match=r"audio pattern '/x/\{ytid\}\.\{ext\}': must stay inside"):
        AudioFinder(audio, ["/x/{ytid}.{ext}"])
