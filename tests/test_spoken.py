"""Real audio in the tests: spoken words made by espeak-ng (data/spoken.py) ingested into a
store as a user's own data is, labels and features checked against the clips as spoken."""
import csv
import shutil

import numpy as np
import pytest

from data.ingest import main as ingest
from data.spoken import make_spoken_words
from data.store import open_store

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng): no real audio to test")


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    out = tmp_path_factory.mktemp("spoken") / "words"
    counts = make_spoken_words(out, n_words=3, most=12, fewest=4, n_eval=4, seed=1)
    return out, counts


def _labels(csv_path):
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f, skipinitialspace=True) if r and not r[0].startswith("#")]
    return {r[0]: set(r[3].split(",")) for r in rows}


def test_spoken_words_are_an_audioset_format_dataset(words):
    out, counts = words
    assert counts == {"train": 23, "eval_flat": 12, "eval_skewed": 12}
    train = _labels(out / "train_segments.csv")
    assert len(train) == 23 and all(1 <= len(v) <= 3 for v in train.values())
    firsts = [min(v) for v in train.values()]
    assert all(m.startswith("/spoken/") for v in train.values() for m in v) and len(set(firsts)) >= 2
    flat = _labels(out / "eval_flat_segments.csv")
    assert sorted(sum((list(v) for v in flat.values()), [])).count("/spoken/yes") >= 4


def test_real_speech_ingests_and_keeps_its_labels(words, tmp_path):
    """The user's route: data.ingest reads the WAVs (22,050 Hz, resampled), computes the AST
    log-mel, stores every clip with the labels of its segment row."""
    out, _ = words
    store_dir = tmp_path / "store"
    assert ingest(["--segments", str(out / "train_segments.csv"), "--class-index", str(out / "class_labels_indices.csv"),
                   "--audio-dir", str(out / "audio"), "--store", str(store_dir), "--split", "train",
                   "--frames", "200"]) == 0
    store = open_store(store_dir)
    want = _labels(out / "train_segments.csv")
    ids = store.clip_ids("train")
    assert sorted(ids) == sorted(want) and store.frames == 200
    mids = store.mids
    got = {c: {mids[k] for k in labels} for c, labels in zip(ids, store.labels("train"))}
    assert got == want
    batch = next(store.iter_batches("train", 64))
    mel = np.asarray(batch["mel"], dtype=np.float32)
    assert mel.shape[1:] == (200, 128) and np.isfinite(mel).all()
    # speech and noise, not silence: the log-mel varies over time in every clip
    assert (mel.std(axis=1).mean(axis=1) > 0.5).all()
