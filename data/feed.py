"""The Train worker's end of the stream: spectrograms read where they are trained on.

`oversampled_dataset(..., spectrograms=False)` sends each row's clip index, stream position,
target and block through Ray Data: a few hundred bytes a row instead of a 256 KiB spectrogram,
so the spectrograms never pass through Ray's object store (a copy in, a copy out, and a
serialisation: the stream's limit when they did). `spectrogram_batches` takes those rows as a
worker gets them (whole Ray blocks: `iter_batches(batch_size=None)`), reads each stream block's
spectrograms with the stream's own reader (`RowGroups.spectrograms`: each row group a block
needs read once, straight into place, and its page's CRC-32 checked), `ahead` blocks in
advance on `threads` threads (preadv, the CRC and numpy's copies release the GIL, so reads
overlap each other and the training step), and cuts the rows into batches of `batch_size`
consecutive rows, the last one shorter: the batches `iter_torch_batches(batch_size)` makes of
the same rows, in the same order.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from data.shards import RowGroups

__all__ = ["spectrogram_batches"]

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # mel [b, T, F] float16, target [b, K] float32, position [b] int64


def _per_block(chunks: Iterable[dict]) -> Iterator[dict]:
    """Batches of rows (dicts of arrays with a `block` column) -> runs of consecutive rows of
    one stream block."""
    for chunk in chunks:
        block = np.asarray(chunk["block"])
        cuts = np.flatnonzero(np.diff(block)) + 1
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(block)]):
            if b > a:
                yield {k: chunk[k][a:b] for k in ("clip_index", "position", "target")}


def _read(run: dict, groups: RowGroups, shape: tuple[int, int]) -> Batch:
    return groups.spectrograms(run["clip_index"], *shape), np.asarray(run["target"]), np.asarray(run["position"])


def _read_ahead(runs: Iterator[dict], groups: RowGroups, shape: tuple[int, int], ahead: int,
                threads: int) -> Iterator[Batch]:
    """The runs with their spectrograms, in order, read up to `ahead` runs in advance."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="spectrograms")
    pending = deque()
    try:
        for run in runs:
            pending.append(pool.submit(_read, run, groups, shape))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer stops early: reads not started are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _take(held: deque, n: int) -> Batch:
    """The first n rows of the held pieces, removed from them: views of one piece when it holds
    them all, else one copy."""
    parts = []
    while n:
        piece = held[0]
        k = min(n, len(piece[0]))
        parts.append(tuple(a[:k] for a in piece))
        if k == len(piece[0]):
            held.popleft()
        else:
            held[0] = tuple(a[k:] for a in piece)
        n -= k
    return parts[0] if len(parts) == 1 else tuple(np.concatenate(cols) for cols in zip(*parts))


def _batches(pieces: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Consecutive rows of the pieces cut into batches of `size` rows, the last one shorter."""
    held, count = deque(), 0
    for piece in pieces:
        held.append(piece)
        count += len(piece[0])
        while count >= size:
            yield _take(held, size)
            count -= size
    if count:
        yield _take(held, count)


def spectrogram_batches(chunks: Iterable[dict], groups: RowGroups, shape: tuple[int, int], batch_size: int, *,
                        ahead: int = 2, threads: int = 2) -> Iterator[Batch]:
    """Rows of `oversampled_dataset(..., spectrograms=False)` as a consumer gets them (batches
    of any size, in stream order) -> (mel [b, T, F] float16, target [b, K] float32, position [b]
    int64) batches of `batch_size` consecutive rows, the spectrograms read from the split's row
    `groups` ([T, F] = `shape`). A damaged page is the reader's StoreError, raised here."""
    return _batches(_read_ahead(_per_block(chunks), groups, shape, ahead, threads), batch_size)
