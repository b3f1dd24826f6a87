"""The trial checkpoint format: save, restore, list, prune, load.

A trial checkpoint is a directory written at every validation:
  model.pt      the AST state dict (unwrapped from DDP); removed once selection can no longer
                pick this evaluation (`prune`)
  optimizer.pt  the Adam state; kept for the latest checkpoint only (what a restart needs)
  state.json    {examples, step, history, beta, lr, stopped, model: ASTConfig as a dict};
                always kept, so the trace survives pruning
so a checkpoint rebuilds its model without the sweep's configuration. Checkpoint directories
themselves are never removed: Train's run snapshot lists them and refuses to resume without
them (ray-notes 1.8).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from model.ast import ASTConfig, create_ast
from model.step import unwrap

__all__ = ["MODEL", "OPTIMIZER", "STATE", "save_checkpoint", "load_state", "restore_checkpoint",
           "list_checkpoints", "has_weights", "prune", "load_model"]

MODEL, OPTIMIZER, STATE = "model.pt", "optimizer.pt", "state.json"


def save_checkpoint(directory: str | Path, model, optimizer, state: dict, model_cfg: ASTConfig) -> None:
    d = Path(directory)
    torch.save(unwrap(model).state_dict(), d / MODEL)
    torch.save(optimizer.state_dict(), d / OPTIMIZER)
    (d / STATE).write_text(json.dumps({**state, "model": asdict(model_cfg)}))


def load_state(directory: str | Path) -> dict:
    return json.loads((Path(directory) / STATE).read_text())


def restore_checkpoint(directory: str | Path, model, optimizer, device) -> dict:
    """Load weights and optimizer state into `model` and `optimizer`; returns the state."""
    d = Path(directory)
    unwrap(model).load_state_dict(torch.load(d / MODEL, map_location=device))
    optimizer.load_state_dict(torch.load(d / OPTIMIZER, map_location=device))
    return load_state(d)


def _filesystem(run_path: str):
    """(pyarrow filesystem, base path, URI scheme prefix) of a local path or a URI (s3://...)."""
    import pyarrow.fs as pafs
    if "://" in run_path:
        fs, base = pafs.FileSystem.from_uri(run_path)
        return fs, base, run_path.split("://", 1)[0] + "://"
    return pafs.LocalFileSystem(), str(Path(run_path).resolve()), ""


def _read_snapshot(fs, path: str, attempts: int = 50) -> dict:
    """Train's controller rewrites its snapshot in place after every report, so a reader (rank 0
    pruning right after its report) can catch it empty or half written: read again until it
    parses, for up to `attempts` x 0.1 s."""
    for attempt in range(attempts):
        with fs.open_input_stream(path) as f:
            text = f.read()
        try:
            return json.loads(text)
        except ValueError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _registered(fs, base: str) -> set[str]:
    """Names of the checkpoint directories Train registered in its run snapshot (ray-notes 1.5).
    A worker persists a checkpoint before the controller registers it: one killed in between
    leaves a directory Train will not restore, from a branch of training that is dropped."""
    import pyarrow.fs as pafs
    path = f"{base.rstrip('/')}/checkpoint_manager_snapshot.json"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return set()
    snapshot = _read_snapshot(fs, path)
    results = snapshot.get("checkpoint_results", []) + [snapshot.get("latest_checkpoint_result") or {}]
    return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}


def list_checkpoints(run_path: str) -> list[tuple[str, dict]]:
    """(path, state) of every checkpoint Train registered under a Train run's storage path (a
    local directory or a URI such as s3://...), in order of examples seen."""
    import pyarrow.fs as pafs
    fs, base, scheme = _filesystem(run_path)
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    registered = _registered(fs, base)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.base_name == STATE and info.path.rsplit("/", 2)[-2] in registered:
            with fs.open_input_stream(info.path) as f:
                found.append((scheme + info.path.rsplit("/", 1)[0], json.loads(f.read())))
    return sorted(found, key=lambda c: c[1]["examples"])


def has_weights(checkpoint: str) -> bool:
    """Whether a checkpoint directory still holds its model weights."""
    import pyarrow.fs as pafs
    fs, base, _ = _filesystem(checkpoint)
    return fs.get_file_info(f"{base}/{MODEL}").type == pafs.FileType.File


def prune(run_path: str, window: int, keep: int) -> int:
    """Remove the weights selection can no longer pick: model.pt of every registered checkpoint
    outside `checkpoints_to_keep` (the `keep` best picks and the evaluations whose windows are
    not full yet), judged on the history of the latest registered checkpoint (the one a
    restart resumes from), and optimizer.pt of all but that latest one. Returns files removed."""
    import pyarrow.fs as pafs
    from sweep.select import checkpoints_to_keep
    checkpoints = list_checkpoints(run_path)
    if not checkpoints:
        return 0
    history = checkpoints[-1][1]["history"]
    wanted = {history["examples"][i] for i in checkpoints_to_keep(history["val_dprime"], window, keep)}
    removed = 0
    for i, (path, state) in enumerate(checkpoints):
        fs, base, _ = _filesystem(path)
        names = ([MODEL] if state["examples"] not in wanted else []) + \
                ([OPTIMIZER] if i < len(checkpoints) - 1 else [])
        for name in names:
            if fs.get_file_info(f"{base}/{name}").type == pafs.FileType.File:
                fs.delete_file(f"{base}/{name}")
                removed += 1
    return removed


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the AST a trial checkpoint holds (no weights file other than model.pt is read)."""
    d = Path(directory)
    if not (d / MODEL).is_file():
        raise FileNotFoundError(f"{d}: the checkpoint's weights ({MODEL}) were not kept")
    cfg = ASTConfig(**{**load_state(d)["model"], "weights": None})
    model = create_ast(cfg)
    model.load_state_dict(torch.load(d / MODEL, map_location="cpu"))
    return model.to(device).eval()
