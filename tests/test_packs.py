"""Ingest from packed copies: the same 50 clips as a PANNs-style HDF5 pack, WebDataset-style tar
shards and a Hugging Face-style Parquet file (each written by the library that writes it:
h5py, tarfile, pyarrow) give the stores the segment CSV + WAV files give; bad packs are
reported as bad files are."""
import io
import json
import tarfile

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from data.cli import InputError
from data.ingest import IngestConfig, ingest, main
from data.labels import read_class_index
from data.packs import PackFields, clip_id_of, resolve_labels
from data.store import open_store

RATE = 32000   # PANNs' rate: every route resamples to 16 kHz
FRAMES = 256   # the clips are 0.6-2 s: 58-198 frames, zero-padded
CLIPS = 50


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Torch on one thread for the module's in-process ingests, as in a Ray task (tiny clips:
    faster, and immune to a busy machine)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _flac(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, RATE, format="FLAC", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def clips(audioset):
    """50 clips: an 11-character YTID (one starting with "Y", as PANNs' names do), int16 samples
    at 32 kHz (0.6-2 s of a tone in noise), 1-3 labels among the first 20 classes."""
    mids = read_class_index(audioset / "class_labels_indices.csv").mids
    rng = np.random.default_rng(35)
    out = []
    for k in range(CLIPS):
        ytid = f"Y{k:03d}-packed" if k == 7 else f"{k:04d}_clip_{k % 3}"
        t = np.arange(int(RATE * rng.uniform(0.6, 2.0))) / RATE
        x = 0.3 * np.sin(2 * np.pi * (200 + 37 * k) * t) + 0.05 * rng.standard_normal(len(t))
        labels = sorted(rng.choice(20, size=rng.integers(1, 4), replace=False).tolist())
        out.append({"ytid": ytid, "samples": np.round(x * 32767).astype(np.int16), "labels": labels,
                    "mids": [mids[i] for i in labels]})
    assert all(len(c["ytid"]) == 11 for c in out)
    return out


@pytest.fixture(scope="module")
def packs(tmp_path_factory, clips, audioset):
    """The four copies of the clips: segment CSV + WAV files, an HDF5 pack, three tar shards and
    a Parquet file of several row groups whose labels are Hugging Face ClassLabel values."""
    root = tmp_path_factory.mktemp("packs")
    index = audioset / "class_labels_indices.csv"
    mids = read_class_index(index).mids
    (root / "audio").mkdir()
    for c in clips:
        sf.write(root / "audio" / f"{c['ytid']}.wav", c["samples"], RATE, subtype="PCM_16")
    (root / "segments.csv").write_text("# YTID, start_seconds, end_seconds, positive_labels\n" + "".join(
        f'{c["ytid"]}, 0.000, 10.000, "{",".join(c["mids"])}"\n' for c in clips))
    width = max(len(c["samples"]) for c in clips)
    with h5py.File(root / "balanced_train.h5", "w") as f:  # PANNs' pack: names, padded int16, bool targets
        f.create_dataset("audio_name", data=np.array([f"Y{c['ytid']}.wav".encode() for c in clips], dtype="S20"))
        wave = f.create_dataset("waveform", shape=(CLIPS, width), dtype=np.int16)
        target = f.create_dataset("target", shape=(CLIPS, 527), dtype=bool)
        for j, c in enumerate(clips):
            wave[j, :len(c["samples"])] = c["samples"]
            target[j, c["labels"]] = True
        f.attrs["sample_rate"] = RATE
    (root / "wds").mkdir()
    for s, (a, b) in enumerate([(0, 20), (20, 40), (40, 50)]):
        with tarfile.open(root / "wds" / f"shard-{s:05d}.tar", "w") as tar:
            for j in range(a, b):
                c = clips[j]
                labels = [c["mids"], c["labels"], ",".join(c["mids"])][s]  # MIDs, class indices, a CSV string
                meta = {"labels": labels} if s == 2 else {"video_id": c["ytid"], "labels": labels}
                key = c["ytid"] if s == 2 else f"sample{j:06d}"   # shard 2: the id is the key
                _add(tar, f"{key}.flac", _flac(c["samples"]))
                _add(tar, f"{key}.json", json.dumps(meta).encode())
    names = mids[::-1]  # the dataset's own ClassLabel order, not the class index's
    hf = {"info": {"features": {"video_id": {"dtype": "string", "_type": "Value"},
                                "audio": {"_type": "Audio"},
                                "labels": {"feature": {"names": names, "_type": "ClassLabel"}, "_type": "Sequence"}}}}
    table = pa.table({"video_id": [c["ytid"] for c in clips],
                      "audio": [{"bytes": _flac(c["samples"]), "path": f"{c['ytid']}.flac"} for c in clips],
                      "labels": [[names.index(m) for m in c["mids"]] for c in clips]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(hf)}), root / "train.parquet",
                   row_group_size=8)
    return root, index


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _ingest(packs, out, source: dict, **kw):
    root, index = packs
    return ingest(IngestConfig(source.get("segments", []), str(index), source.get("audio_dir"), str(root / out),
                               "train", frames=FRAMES, rows_per_shard=8, packs=tuple(source.get("packs", ())), **kw))


def _rows(store) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(clip ids, mel float16, targets, n_frames) of the store's train split, in row order."""
    batches = list(store.iter_batches("train", 1000))
    n = np.concatenate([pq.read_table(p, columns=["n_frames"])["n_frames"].to_numpy() for p in store.shard_paths("train")])
    return (sum((b["clip_id"].tolist() for b in batches), []), np.concatenate([b["mel"] for b in batches]),
            np.concatenate([b["target"] for b in batches]), n)


@pytest.fixture(scope="module")
def csv_store(packs, clips):
    report = _ingest(packs, "csv", {"segments": [str(packs[0] / "segments.csv")], "audio_dir": str(packs[0] / "audio")})
    assert report["ingested"] == CLIPS and report["skipped"] == []
    return open_store(packs[0] / "csv")


@pytest.mark.parametrize("kind", ["hdf5", "tar", "parquet"])
def test_a_pack_gives_the_store_the_files_give(packs, clips, csv_store, kind, monkeypatch, request):
    """Same clip ids (in the same rarest-label order), labels, frame counts and spectrograms (to
    float16 rounding: an HDF5 pack is read at PANNs' scale, int16 / 32767, the files at
    libsndfile's, int16 / 32768: 2 ln(32768/32767) = 6e-5 more log energy) as the CSV + WAV
    route. The Parquet file is ingested as Ray tasks (the others in this process)."""
    import data.ingest
    source = {"hdf5": [packs[0] / "balanced_train.h5"], "tar": [packs[0] / "wds"],
              "parquet": [packs[0] / "train.parquet"]}[kind]
    if kind == "parquet":
        request.getfixturevalue("ray_local")
        monkeypatch.setattr(data.ingest, "IN_PROCESS_CLIPS", 0)
    report = _ingest(packs, kind, {"packs": [str(p) for p in source]})
    assert report["complete"] and report["ingested"] == CLIPS and report["skipped"] == [] and not report["label_issues"]
    assert report["packs"]["format"] == kind and not (packs[0] / kind / ".ingest-train").exists()
    store = open_store(packs[0] / kind)
    store.validate()
    want, got = _rows(csv_store), _rows(store)
    assert got[0] == want[0] and sorted(got[0]) == sorted(c["ytid"] for c in clips)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[1].astype(np.float32), want[1].astype(np.float32), rtol=2 ** -10, atol=2e-4)
    if kind != "hdf5":  # the same int16 samples read at the same scale: the same bits
        np.testing.assert_array_equal(got[1], want[1])
    assert store.fingerprint("train") == csv_store.fingerprint("train")


def test_a_pack_ingest_resumes(packs, capsys):
    """A rerun reuses every shard (nothing decoded); a shard deleted since is made again from its
    parts (their staging shards went when the split was recorded), byte for byte."""
    root, index = packs
    args = ["--packs", str(root / "balanced_train.h5"), "--class-index", str(index), "--store", str(root / "resume"),
            "--split", "train", "--frames", str(FRAMES), "--rows-per-shard", "8", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["computed"] == CLIPS and first["packs"] == {"format": "hdf5", "parts": 7, "parts_reused": 0}
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["computed"] == 0 and again["shards_reused"] == again["shards"] == 7
    shard = open_store(root / "resume").shard_paths("train")[3]
    good = open(shard, "rb").read()
    (root / "resume" / "train" / "part-00003.parquet").unlink()
    assert main(args) == 0
    redone = json.loads(capsys.readouterr().out)
    assert redone["shards_reused"] == 6 and 0 < redone["computed"] < CLIPS
    assert open(shard, "rb").read() == good and not (root / "resume" / ".ingest-train").exists()


def test_bad_clips_in_packs_are_reported_as_bad_files_are(packs, clips, capsys):
    """A tar cut short inside a member: the clips before the cut are kept, the clip it cut is
    skipped "truncated" naming the tar, the shards after it are read; a clip whose labels are
    empty, or which has no .json, is skipped "no_labels"; one without audio "missing"; an HDF5
    row without a label "no_labels"; an unknown label is named with its count."""
    root, index = packs
    bad = root / "bad_wds"
    bad.mkdir()
    full = (root / "wds" / "shard-00000.tar").read_bytes()
    (bad / "a.tar").write_bytes(full[:len(full) // 2])  # cut inside clip 10's FLAC (of 20 clips)
    with tarfile.open(bad / "b.tar", "w") as tar:
        _add(tar, "empty.flac", _flac(clips[20]["samples"]))
        _add(tar, "empty.json", json.dumps({"video_id": "emptylabels", "labels": []}).encode())
        _add(tar, "nojson.flac", _flac(clips[21]["samples"]))
        _add(tar, "noaudio.json", json.dumps({"video_id": "noaudio0000", "labels": [0]}).encode())
        _add(tar, "typo.flac", _flac(clips[22]["samples"]))
        _add(tar, "typo.json", json.dumps({"video_id": "typo0000000", "labels": ["/m/09x0r", "/m/09x0rr"]}).encode())
    assert main(["--packs", str(bad), "--class-index", str(index), "--store", str(root / "bad"), "--split", "train",
                 "--frames", str(FRAMES)]) == 0
    out, err = capsys.readouterr()
    report = json.loads((root / "bad" / "ingest_report.json").read_text())["train"]
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    cut = [c for c, r in reasons.items() if r == "truncated"]
    assert len(cut) == 1 and reasons.pop(cut[0]) == "truncated"
    assert reasons == {"emptylabels": "no_labels", "nojson": "no_labels", "noaudio0000": "missing"}
    [detail] = [s["detail"] for s in report["skipped"] if s["reason"] == "truncated"]
    assert detail.startswith(f"{bad / 'a.tar'}: ends inside sample0000")
    kept = open_store(root / "bad").clip_ids("train").tolist()
    n_before = int(cut[0].removeprefix("sample"))
    assert sorted(kept) == sorted([c["ytid"] for c in clips[:n_before]] + ["typo0000000"])
    assert out.splitlines()[1] == ("skipped: truncated 1, no_labels 2, missing 1 (each clip and why in "
                                   f"{root / 'bad' / 'ingest_report.json'})")
    assert "labels dropped from their clips: 1 unknown label(s): /m/09x0rr (1x)" in err
    with h5py.File(root / "nolabel.h5", "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yaaaaaaaaaaa.wav", b"Ybbbbbbbbbbb.wav"]))
        f.create_dataset("waveform", data=np.stack([clips[0]["samples"][:20000], clips[1]["samples"][:20000]]))
        target = np.zeros((2, 527), dtype=bool)
        target[0, 3] = True
        f.create_dataset("target", data=target)
    report = _ingest(packs, "nolabel", {"packs": [str(root / "nolabel.h5")]})
    assert [(s["clip_id"], s["reason"]) for s in report["skipped"]] == [("bbbbbbbbbbb", "no_labels")]


def test_pack_inputs_are_checked_before_a_store_is_made(packs, capsys, tmp_path):
    """A pack that does not fit its layout, or a label the class index lacks under
    --unknown-labels error, is one line naming the file; nothing is written for a bad layout."""
    root, index = packs
    with h5py.File(tmp_path / "narrow.h5", "w") as f:
        f.create_dataset("audio_name", data=np.array([b"Yaaaaaaaaaaa.wav"]))
        f.create_dataset("waveform", data=np.zeros((1, 100), np.int16))
        f.create_dataset("target", data=np.zeros((1, 10), bool))
    pq.write_table(pa.table({"video_id": ["x"], "labels": [["/m/09x0r"]]}), tmp_path / "noaudio.parquet")
    for pack, why in [(tmp_path / "narrow.h5", "target is (1, 10), not [clips, 527]"),
                      (tmp_path / "noaudio.parquet", "no audio column 'audio' of struct {bytes, path}")]:
        assert main(["--packs", str(pack), "--class-index", str(index), "--store", str(tmp_path / "s"),
                     "--split", "train"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {pack}: {why}"), err
        assert not (tmp_path / "s").exists()
    with tarfile.open(tmp_path / "typo.tar", "w") as tar:
        _add(tar, "a.flac", _flac(np.zeros(4000, np.int16) + 1))
        _add(tar, "a.json", json.dumps({"labels": ["/m/09x0rr"]}).encode())
    assert main(["--packs", str(tmp_path / "typo.tar"), "--class-index", str(index), "--store", str(tmp_path / "t"),
                 "--split", "train", "--unknown-labels", "error"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'typo.tar'}: 1 unknown label(s): /m/09x0rr (1x) (--unknown-labels error)")
    with pytest.raises(InputError, match="not both"):
        IngestConfig(["s.csv"], str(index), "audio", "store", "train", packs=("p.h5",))


def test_pack_names_and_labels():
    """PANNs' "Y" comes off an 11-character YTID only; labels resolve from MIDs, indices or a
    CSV-style string, the rest named."""
    assert clip_id_of("bal/Y--PJHxphWEs.wav") == "--PJHxphWEs" and clip_id_of("YY123456789a.flac") == "Y123456789a"
    assert clip_id_of("Yshort.wav") == "Yshort" and clip_id_of("dir/sample000001") == "sample000001"
    index_of = {"/m/a": 0, "/m/b": 1}
    assert resolve_labels(["/m/b", "/m/a", "/m/b"], index_of, 2) == ([0, 1], [])
    assert resolve_labels("/m/a, /m/x,", index_of, 2) == ([0], ["/m/x"])
    assert resolve_labels([1, 7, True], index_of, 2) == ([1], ["7", "True"])
    assert resolve_labels(None, index_of, 2) == ([], []) and PackFields().labels == "labels"
