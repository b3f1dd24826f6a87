"""The trial checkpoint format: save, restore, list, prune, read.

A trial's Train run directory (local, or a URI such as s3://...) holds one checkpoint
directory per validation, named by the examples seen (`checkpoint_dir(examples)`, passed to
`ray.train.report` as `checkpoint_dir_name`), so a restarted worker that redoes an evaluation
writes the same directory again and an evaluation never has two. Each holds:
  model.pt      the model's state dict (unwrapped from DDP); removed once selection can no longer
                pick this evaluation (`prune`)
  optimizer.pt  the Adam state; kept for the latest checkpoint only (what a restart needs)
  val_dprime_resampled.npy  the validation d' on each bootstrap resample of the validation
                clips (float32 [resamples], the same resamples for every trial): what the
                confidence of the selection and racing average over a pick's window; always kept
  state.json    the trial's state (sweep/history.py TrialState: trial, examples, step, stopped,
                start, history, ...) and `model`, its ModelConfig as a dict (arch, geometry,
                options: what model/factory.py builds it from); always kept, so the trace
                survives pruning
so a checkpoint rebuilds its model without the sweep's configuration. A worker whose training
fails writes `failure-rank<r>.json` ({rank, type, message} of the exception) before it ends,
so the trial driver can name the root error of each rank. Beside them,
`progress.json` ({"examples": ...}) records the latest checkpoint Train has registered (rank 0
writes it once `ray.train.get_all_reported_checkpoints` includes it): a worker persists a
checkpoint before Train registers it, and one killed in between leaves a directory that Train
does not restore from. Checkpoint directories themselves are never removed: Train refuses to
resume without the ones it registered.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from data.cli import InputError
from model.config import ModelConfig
from sweep.history import TrialState

__all__ = ["MODEL", "OPTIMIZER", "STATE", "PROGRESS", "RESAMPLED", "checkpoint_dir", "load_resampled", "save_checkpoint",
           "load_state", "read_record", "write_record",
           "restore_checkpoint", "write_progress", "registered_examples", "list_checkpoints", "has_weights",
           "prune", "load_weights", "record_failure", "recorded_failures", "clear_failures"]

MODEL, OPTIMIZER, STATE, PROGRESS = "model.pt", "optimizer.pt", "state.json", "progress.json"
RESAMPLED = "val_dprime_resampled.npy"


def checkpoint_dir(examples: int) -> str:
    """The name of the checkpoint directory of the evaluation at `examples` seen."""
    return f"checkpoint_{examples:012d}"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer, state: TrialState, model_cfg: ModelConfig,
                    resampled: np.ndarray | None = None) -> None:
    """A checkpoint directory (see the module docstring) of `model` (the module itself, not its
    DistributedDataParallel wrapper); the evaluation's d' per resample [resamples] if given."""
    d = Path(directory)
    torch.save(model.state_dict(), d / MODEL)
    torch.save(optimizer.state_dict(), d / OPTIMIZER)
    if resampled is not None:
        np.save(d / RESAMPLED, np.asarray(resampled, dtype=np.float32))
    (d / STATE).write_text(json.dumps({**state.to_json(), "model": asdict(model_cfg)}))


def load_resampled(checkpoint: str) -> np.ndarray | None:
    """The validation d' per resample a checkpoint directory (local or URI) holds, float64
    [resamples]; None if it has none."""
    import pyarrow.fs as pafs
    fs, base, _ = _filesystem(checkpoint)
    path = f"{base}/{RESAMPLED}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_file(path) as f:
        return np.load(io.BytesIO(f.read())).astype(np.float64)


def load_state(directory: str | Path) -> dict:
    """A checkpoint directory's state.json as it is written (TrialState.from_json reads the
    trial's state out of it); one that cannot be read is a ValueError naming it."""
    path = Path(directory) / STATE
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not a readable checkpoint state ({e})") from None


def _load_tensors(path: Path, device) -> dict:
    """torch.load of a checkpoint file; one that cannot be read (cut short, damaged) is a
    ValueError naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a readable checkpoint file ({type(e).__name__}: {e})") from e


def restore_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer, device) -> dict:
    """Load weights and optimizer state into `model` (unwrapped, as saved) and `optimizer`;
    returns the state."""
    d = Path(directory)
    model.load_state_dict(_load_tensors(d / MODEL, device))
    optimizer.load_state_dict(_load_tensors(d / OPTIMIZER, device))
    return load_state(d)


def _filesystem(path: str):
    """(pyarrow filesystem, base path, URI scheme prefix) of a local path or a URI (s3://...)."""
    import pyarrow.fs as pafs
    if "://" in path:
        fs, base = pafs.FileSystem.from_uri(path)
        return fs, base.rstrip("/"), path.split("://", 1)[0] + "://"
    return pafs.LocalFileSystem(), str(Path(path).resolve()), ""


def _read_json(fs, path: str) -> dict | None:
    """A JSON file of the run directory, or None if it is missing or not whole."""
    import pyarrow.fs as pafs
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        try:
            return json.loads(f.read())
        except ValueError:
            return None


def _write_json(run_path: str, name: str, obj: dict) -> None:
    """`obj` as the run directory's file `name`, written whole: a local file is renamed into
    place, an object store writes an object at once."""
    fs, base, _ = _filesystem(run_path)
    fs.create_dir(base)
    target = f"{base}/{name}"
    partial = target if "://" in run_path else f"{target}.partial"
    with fs.open_output_stream(partial) as f:
        f.write(json.dumps(obj).encode())
    if partial != target:
        fs.move(partial, target)


def read_record(directory: str, name: str) -> dict | None:
    """A JSON record `name` in a directory of the storage (local or URI), or None if it is
    missing or not whole."""
    fs, base, _ = _filesystem(directory)
    return _read_json(fs, f"{base}/{name}")


def write_record(directory: str, name: str, obj: dict) -> None:
    """`obj` as the JSON record `name` in a directory of the storage (local or URI), whole."""
    _write_json(directory, name, obj)


def write_progress(run_path: str, examples: int) -> None:
    """Record that Train has registered the checkpoint at `examples`."""
    _write_json(run_path, PROGRESS, {"examples": int(examples)})


def record_failure(run_path: str, rank: int, error: BaseException) -> None:
    """Record a worker's failure: the exception's type and message (one line)."""
    _write_json(run_path, f"failure-rank{rank}.json",
                {"rank": rank, "type": type(error).__name__, "message": " ".join(str(error).split())})


def recorded_failures(run_path: str) -> list[dict]:
    """The failures workers recorded ({rank, type, message}), by rank."""
    import pyarrow.fs as pafs
    fs, base, _ = _filesystem(run_path)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    found = [_read_json(fs, info.path) for info in fs.get_file_info(pafs.FileSelector(base))
             if info.base_name.startswith("failure-rank") and info.base_name.endswith(".json")]
    return sorted((f for f in found if f), key=lambda f: f["rank"])


def clear_failures(run_path: str, rank: int) -> None:
    """Remove the failure a rank recorded in an earlier attempt (a worker does this as it starts,
    so what is recorded after a fit is that attempt's)."""
    import pyarrow.fs as pafs
    fs, base, _ = _filesystem(run_path)
    path = f"{base}/failure-rank{rank}.json"
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def registered_examples(run_path: str) -> int:
    """Examples at the latest checkpoint recorded as registered (0: none yet): where a restarted
    worker group resumes, or one evaluation earlier if rank 0 was stopped between Train's
    registration and its record."""
    fs, base, _ = _filesystem(run_path)
    progress = _read_json(fs, f"{base}/{PROGRESS}")
    return int(progress["examples"]) if progress else 0


def list_checkpoints(run_path: str) -> list[tuple[str, TrialState]]:
    """(path, state) of the checkpoints of a Train run up to the latest registered one, in order
    of examples seen (a path as the run path is given: local, or a URI); a state.json that is
    not whole is passed over."""
    fs, base, scheme = _filesystem(run_path)
    last = registered_examples(run_path)
    found = []
    for examples in _checkpoint_examples(fs, base):
        state = _read_json(fs, f"{base}/{checkpoint_dir(examples)}/{STATE}") if examples <= last else None
        if state is not None:
            found.append((f"{scheme}{base}/{checkpoint_dir(examples)}", TrialState.from_json(state)))
    return found


def _checkpoint_examples(fs, base: str) -> list[int]:
    """Examples of every checkpoint directory under `base`, ascending."""
    import pyarrow.fs as pafs
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    names = (info.base_name for info in fs.get_file_info(pafs.FileSelector(base)))
    return sorted(int(n.removeprefix("checkpoint_")) for n in names
                  if n.startswith("checkpoint_") and n.removeprefix("checkpoint_").isdigit())


def has_weights(checkpoint: str) -> bool:
    """Whether a checkpoint directory still holds its model weights."""
    import pyarrow.fs as pafs
    fs, base, _ = _filesystem(checkpoint)
    return fs.get_file_info(f"{base}/{MODEL}").type == pafs.FileType.File


def prune(run_path: str, history: dict, window: int, keep: int) -> int:
    """Remove what selection can no longer use, judged on `history` (the trial's own, up to its
    latest evaluation): model.pt of every evaluation outside `checkpoints_to_keep` (the `keep`
    best picks and the evaluations whose windows are not full yet) and optimizer.pt of all but the
    latest. Returns the files removed."""
    import pyarrow.fs as pafs
    from sweep.select import checkpoints_to_keep
    examples, d = history["examples"], history["val_dprime"]
    weights = {examples[i] for i in checkpoints_to_keep(d, window, keep)}
    fs, base, _ = _filesystem(run_path)
    removed = 0
    for i, e in enumerate(examples):
        names = ([MODEL] if e not in weights else []) + ([OPTIMIZER] if i < len(examples) - 1 else [])
        for name in names:
            path = f"{base}/{checkpoint_dir(e)}/{name}"
            if fs.get_file_info(path).type == pafs.FileType.File:
                fs.delete_file(path)
                removed += 1
    return removed


def load_weights(directory: str | Path) -> dict:
    """The model state dict a trial checkpoint holds (on the CPU); FileNotFoundError once its
    model.pt was pruned."""
    d = Path(directory)
    if not (d / MODEL).is_file():
        raise FileNotFoundError(f"{d}: the checkpoint's weights ({MODEL}) were not kept")
    return _load_tensors(d / MODEL, "cpu")
