"""sweep/checkpoint.py on a hand-made Train run directory: checkpoints named by their examples,
listed up to the one recorded as registered, pruned from the trial's own history, and the
failures workers record."""
import json

import pytest

from sweep.checkpoint import (MODEL, OPTIMIZER, STATE, checkpoint_dir, clear_failures, has_weights, list_checkpoints,
                              prune, record_failure, recorded_failures, registered_examples, write_progress)
from sweep.history import TrialState
from sweep.select import checkpoints_to_keep
from sweep.trial import Trial


def _run_dir(tmp_path, dprime: list[float], every: int = 64):
    """A Train run directory with one checkpoint (weights, optimizer, state) per evaluation."""
    examples = [every * (i + 1) for i in range(len(dprime))]
    for i, e in enumerate(examples):
        d = tmp_path / checkpoint_dir(e)
        d.mkdir()
        (d / MODEL).write_bytes(b"w")
        (d / OPTIMIZER).write_bytes(b"o")
        history = {"examples": examples[:i + 1], "val_dprime": dprime[:i + 1]}
        (d / STATE).write_text(json.dumps(TrialState(Trial("moore", 1.0, 1e-3, 0), e, history=history).to_json()))
    return examples


def test_checkpoints_are_listed_up_to_the_registered_one(tmp_path):
    examples = _run_dir(tmp_path, [1.0, 2.0, 1.5, 1.2])
    assert checkpoint_dir(64) == "checkpoint_000000000064" and list_checkpoints(str(tmp_path)) == []
    write_progress(str(tmp_path), examples[2])   # the fourth was persisted, not registered
    found = list_checkpoints(str(tmp_path))
    assert [s.examples for _, s in found] == examples[:3] and registered_examples(str(tmp_path)) == examples[2]
    assert found[0][0] == str(tmp_path / checkpoint_dir(64))
    (tmp_path / checkpoint_dir(examples[1]) / STATE).unlink()   # an incomplete directory is left out
    assert [s.examples for _, s in list_checkpoints(str(tmp_path))] == [examples[0], examples[2]]
    assert not (tmp_path / "progress.json.partial").exists()
    assert list_checkpoints(str(tmp_path / "nowhere")) == [] and registered_examples(str(tmp_path / "nowhere")) == 0


def test_prune_keeps_what_selection_may_still_pick(tmp_path):
    d = [1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.4]
    examples = _run_dir(tmp_path, d)
    history = {"examples": examples, "val_dprime": d}
    removed = prune(str(tmp_path), history, window=3, keep=1)
    kept = {i for i, e in enumerate(examples) if has_weights(str(tmp_path / checkpoint_dir(e)))}
    assert kept == checkpoints_to_keep(d, 3, 1) == {2, 8}
    assert [(tmp_path / checkpoint_dir(e) / OPTIMIZER).exists() for e in examples] == [False] * 8 + [True]
    assert removed == (len(examples) - 2) + (len(examples) - 1)
    assert all((tmp_path / checkpoint_dir(e) / STATE).exists() for e in examples)  # traces survive
    assert prune(str(tmp_path), history, window=3, keep=1) == 0


def test_worker_failures_are_recorded_by_rank(tmp_path):
    record_failure(str(tmp_path), 1, ValueError("shard x.parquet:\n row group 3 is unreadable"))
    record_failure(str(tmp_path), 0, OSError("disk full"))
    assert recorded_failures(str(tmp_path)) == [
        {"rank": 0, "type": "OSError", "message": "disk full"},
        {"rank": 1, "type": "ValueError", "message": "shard x.parquet: row group 3 is unreadable"}]
    clear_failures(str(tmp_path), 1)
    clear_failures(str(tmp_path), 5)  # nothing recorded: nothing to do
    assert [f["rank"] for f in recorded_failures(str(tmp_path))] == [0]


@pytest.mark.parametrize("name", ["checkpoint_x", "checkpoint_", "other"])
def test_other_directories_are_not_checkpoints(tmp_path, name):
    _run_dir(tmp_path, [1.0])
    (tmp_path / name).mkdir()
    write_progress(str(tmp_path), 10_000)
    assert [s.examples for _, s in list_checkpoints(str(tmp_path))] == [64]
