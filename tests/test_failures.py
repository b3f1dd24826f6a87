"""Refused before anything trains: a train shard damaged inside a column (same size, intact
footer, written in place: the sweep-start check hashes the shards changed since they were
verified, and names it), and blocks too large for memory. The same damage under unchanged file
times is caught by the page checksums as the stream reads it (tests/test_stream.py). Failures
during a sweep - Ctrl-C, a killed Train worker, an unreachable MLflow server - are in
tests/test_sweep.py."""
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sweep_checks import smoke_args

from sweep.run import main


def _damage_column_chunk(path: str, group: int, column: str) -> None:
    """Overwrite, in place, the bytes of one column chunk of one row group with garbage. The
    footer stays intact: metadata, schema, row counts and the clip ids are unchanged, so only
    the content hash or a reader of this chunk can see the damage."""
    rg = pq.read_metadata(path).row_group(group)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema.startswith(column))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    garbage = np.random.default_rng(0).integers(0, 256, col.total_compressed_size, dtype=np.uint8)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(garbage.tobytes())


def test_damaged_shard_stops_the_sweep_before_training(tmp_path, smoke_store, monkeypatch, capsys):
    """The spectrograms of one row group are garbage in a shard of the right size whose footer,
    ids and labels are intact: the sweep fails at once with one line naming the shard, starts
    no Ray and no MLflow run, and leaves the store as it was."""
    from data.manifest import StoreError
    from data.store import open_store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store_dir = tmp_path / "store"
    shutil.copytree(smoke_store, store_dir)
    shard = open_store(store_dir).shard_paths("train")[0]
    _damage_column_chunk(shard, 1, "mel")
    damaged = Path(shard).read_bytes()
    open_store(store_dir).validate(checksums="none")  # sizes, footers, ids and labels still match
    with pytest.raises(StoreError, match="content changed"):
        open_store(store_dir).validate()

    assert main(smoke_args(tmp_path, store_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and shard in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "ray").exists() and not (tmp_path / "run" / "mlflow.db").exists()
    assert Path(shard).read_bytes() == damaged


def test_units_per_block_beyond_memory_is_refused_before_anything(tmp_path, smoke_store, monkeypatch, capsys):
    """data.units_per_block = 1e9 (one block the whole oversampled pass): one line naming the key
    and the most this store takes, before Ray or MLflow start."""
    from data.store import open_store
    from data.stream import max_units_per_block
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    most = max_units_per_block(open_store(smoke_store), "train")
    assert main(smoke_args(tmp_path, smoke_store, "data.units_per_block=1000000000")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: data.units_per_block 1000000000: blocks of at most {most} units (1024 MiB of "
                       f"spectrograms) on {smoke_store}; set it <= {most}, or null for the default")
    assert not (tmp_path / "run" / "ray").exists() and not (tmp_path / "run" / "mlflow.db").exists()
