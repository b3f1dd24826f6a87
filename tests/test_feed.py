"""Spectrograms read by the consumer (data/feed.py): the same batches as the stream that carries
them through Ray, a bounded read-ahead, and damage reported when a page is read."""
import os
import threading

import numpy as np
import pytest

from data.feed import spectrogram_batches
from data.manifest import StoreError
from data.stream import _Spec, oversampled_dataset, plan_stream, read_blocks, split_labels


class _Groups:
    """Row groups stand-in: spectrogram of row r is full of r; counts the reads and the threads."""

    def __init__(self):
        self.reads, self.threads, self.lock = 0, set(), threading.Lock()

    def spectrograms(self, rows, frames, mels):
        with self.lock:
            self.reads += 1
            self.threads.add(threading.get_ident())
        return np.broadcast_to(np.asarray(rows, np.float16)[:, None, None], (len(rows), frames, mels)).copy()


def _chunks(blocks: list[int], sizes: list[int]) -> list[dict]:
    """Rows of consecutive blocks (block b holds blocks[b] rows, row i at position i) cut into
    chunks of the given sizes, as Ray hands them over."""
    block = np.repeat(np.arange(len(blocks)), blocks)
    position = np.arange(len(block))
    cuts = np.cumsum(sizes)[:-1]
    return [{"clip_index": p * 7 % 11, "position": p, "target": p[:, None].astype(np.float32), "block": b}
            for p, b in zip(np.split(position, cuts), np.split(block, cuts))]


@pytest.mark.parametrize("batch", [1, 5, 16, 1000])
def test_batches_are_consecutive_rows_across_blocks_and_chunks(batch):
    chunks = _chunks([7, 13, 1, 20], [4, 25, 12])  # a chunk ends inside a block, one holds three
    got = list(spectrogram_batches(chunks, _Groups(), (2, 3), batch))
    assert [len(m) for m, _, _ in got][:-1] == [batch] * (len(got) - 1) and 0 < len(got[-1][0]) <= batch
    position = np.concatenate([p for _, _, p in got])
    np.testing.assert_array_equal(position, np.arange(41))
    mel = np.concatenate([m for m, _, _ in got])
    np.testing.assert_array_equal(mel[:, 1, 2], (position * 7 % 11).astype(np.float16))
    np.testing.assert_array_equal(np.concatenate([t for _, t, _ in got])[:, 0], position)


def test_reads_run_ahead_on_threads_but_no_further_than_asked():
    groups = _Groups()
    chunks = _chunks([4] * 50, [4] * 50)
    batches = spectrogram_batches(chunks, groups, (2, 3), 4, ahead=3, threads=2)
    next(batches)
    assert groups.reads <= 4  # the block handed over and three ahead
    rest = list(batches)
    assert len(rest) == 49 and groups.reads == 50 and threading.get_ident() not in groups.threads


def test_a_consumer_that_stops_early_leaves_no_read_running():
    groups = _Groups()
    batches = spectrogram_batches(_chunks([4] * 50, [200]), groups, (2, 3), 4, ahead=2)
    next(batches)
    batches.close()
    reads = groups.reads
    assert reads <= 3 and not [t for t in threading.enumerate() if t.name.startswith("spectrograms")]


def test_consumer_reads_give_the_batches_of_the_ray_rows(ray_local, synth_store):
    """The stream without spectrograms, read by the consumer, is the stream with them, batch for
    batch (a batch of 24 spans blocks of 64 rows), resumed and cut at the budget alike."""
    import torch

    def kw(spectrograms):
        return dict(seed=3, examples=700, skip=150, units_per_block=16, spectrograms=spectrograms)
    rows = oversampled_dataset(synth_store.root, "train", 0.5, **kw(True))
    want = list(rows.iter_torch_batches(batch_size=24))
    light = oversampled_dataset(synth_store.root, "train", 0.5, **kw(False))
    got = list(spectrogram_batches(light.iter_batches(batch_size=None, batch_format="numpy"),
                                   split_labels(synth_store, "train")[1], (synth_store.frames, synth_store.mels), 24))
    assert len(got) == len(want) == -(-700 // 24)
    for (mel, target, position), w in zip(got, want):
        assert torch.equal(torch.from_numpy(mel), w["mel"]) and torch.equal(torch.from_numpy(position), w["position"])
        assert torch.equal(torch.from_numpy(target), w["target"])
    np.testing.assert_array_equal(np.concatenate([p for _, _, p in got]), np.arange(150, 850))


def test_a_damaged_page_is_reported_by_the_consumer_naming_shard_and_row_group(tmp_path):
    from data.synth import SynthConfig, make_synthetic_store
    import pyarrow.parquet as pq
    store = make_synthetic_store(tmp_path / "s", SynthConfig(clips=80, classes=4, frames=16, mels=8, seed=1))
    shard = store.shard_paths("train")[0]
    col = pq.read_metadata(shard).row_group(3).column(2)
    assert col.path_in_schema == "mel"
    with open(shard, "r+b") as f:
        f.seek(col.data_page_offset + col.total_compressed_size - 20)
        f.write(b"\x01\x02\x03\x04")
    plan = plan_stream(store, "train", 0.0, seed=0, units_per_block=4)
    spec = _Spec(plan.seed, plan.epoch, plan.units_per_block, plan.n_classes, plan.skip, (16, 8), spectrograms=False)
    spans = {"first": np.array([plan.first_block]), "blocks": np.array([len(plan.block_rows)]),
             "start": np.array([0])}
    chunks = list(read_blocks(spans, plan.index, spec))
    assert all("mel" not in c for c in chunks) and os.path.getsize(shard) > 0
    with pytest.raises(StoreError, match=rf"{shard}: row group 3 is unreadable \(.*CRC"):
        for _ in spectrogram_batches(chunks, plan.groups, (16, 8), 8):
            pass
