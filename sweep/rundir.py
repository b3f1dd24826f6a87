"""A sweep's run directory: what it holds, who holds it, and what becomes of an earlier sweep.

    <run_dir>/sweep.json         the sweep this directory holds: its MLflow parent run, config,
                                 dataset fingerprints and the caps it was run to (what --resume
                                 continues)
    <run_dir>/results.json|txt   the answer (written only by a finished sweep)
    <run_dir>/interrupted.json   what an interrupted sweep left undone, and the resume command
    <run_dir>/report/
    <run_dir>/predictions/<scheme>-beta=<b>/seed=<s>/<split>.npz   each pick's scores
    <run_dir>/ray/               Tune and Train storage (or run.storage_path):
        <name>/                  the Tune experiment (each attempt's state, resumed or not)
        train_runs/<name>/       racing.json (the trials racing stopped), grid.json (the betas
                                 refinement added), and <trial key>/: each trial's Train run
    <run_dir>/previous/<id>/     earlier sweeps, each whole (the MLflow store stays shared);
                                 <id>.cap-<A>/: the answer a sweep gave at cap A before it was
                                 continued to a higher one
    <run_dir>/.lock              held (flock) by the sweep running here

A new sweep in a directory that holds an earlier one moves all of the earlier sweep's files,
its checkpoints included, to previous/<its parent run id>/ (the checkpoint paths in its
results.json rewritten to match): nothing is deleted, and nothing at the top names a
selection this sweep did not make.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from sweep.config import Config, ConfigError, flatten, to_dict
from sweep.trial import Arm

__all__ = ["RunDir", "SWEEP_FILES", "ANSWER_FILES", "predictions_path"]

ANSWER_FILES = ("results.json", "results.txt", "predictions", "report")
SWEEP_FILES = ("sweep.json", "interrupted.json", *ANSWER_FILES)


def predictions_path(run_dir: str | Path, arm: Arm, seed: int, split: str) -> Path:
    """Where an arm's pick in one seed saves its scores on an evaluation split."""
    return Path(run_dir) / "predictions" / arm.key / f"seed={seed}" / f"{split}.npz"


class RunDir:
    """The run directory at `path` (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def state_file(self) -> Path:
        return self.path / "sweep.json"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def interrupted_file(self) -> Path:
        return self.path / "interrupted.json"

    @contextmanager
    def lock(self):
        """Hold the directory for this sweep; a ConfigError naming the PID of a sweep that holds
        it already. The lock goes with the process that holds it (a dead sweep holds nothing)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise ConfigError(f"{self.path} is in use by another sweep (PID {holder}): wait for it to end, "
                                  "or give this one another --run-dir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield self
        finally:
            os.close(fd)  # releases the lock

    def storage(self, cfg: Config) -> str:
        """Tune's and Train's storage: run.storage_path (a path or an s3:// URI), else <run_dir>/ray."""
        return cfg.run.storage_path or str(self.path / "ray")

    def train_runs(self, cfg: Config) -> str:
        """The directory of the sweep's Train runs, one per trial (named by Trial.key)."""
        return os.path.join(self.storage(cfg), "train_runs", cfg.run.name)

    def recorded(self) -> dict | None:
        """sweep.json of the sweep this directory holds, or None."""
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else None

    def record(self, parent_run_id: str, experiment_id: str, config: dict, fingerprints: dict[str, str],
               caps: list[int]) -> None:
        """sweep.json: the sweep this directory holds, and the caps it was run to (first to last)."""
        partial = self.state_file.with_suffix(".json.partial")
        partial.write_text(json.dumps({"parent_run_id": parent_run_id, "experiment_id": experiment_id,
                                       "config": config, "fingerprints": fingerprints, "caps": caps}))
        partial.rename(self.state_file)

    def check_resumable(self, config: dict, fingerprints: dict[str, str]) -> dict:
        """The recorded sweep, when --resume may continue it: the same config (a higher
        train.max_examples continues it to that cap) and the same clips in every split it uses;
        else a ConfigError naming the first difference."""
        state = self.recorded()
        if state is None:
            raise ConfigError(f"--resume: {self.path} holds no earlier sweep to continue (no sweep.json); "
                              "run without --resume to start one")
        was, new = (flatten(json.loads(json.dumps(c))) for c in (state["config"], config))  # tuples as lists
        defaults = flatten(json.loads(json.dumps(to_dict(Config()))))
        was = {**{k: defaults.get(k) for k in new if k not in was}, **was}  # a key added since: its default
        if new["train.max_examples"] < was["train.max_examples"]:
            raise ConfigError(f"--resume: train.max_examples is {new['train.max_examples']:,}, below the "
                              f"{was['train.max_examples']:,} the sweep in {self.path} ran to: a cap can only be "
                              "raised on resume")
        changed = sorted(k for k in set(was) | set(new) if was.get(k) != new.get(k) and k != "train.max_examples")
        if changed:
            k = changed[0]
            raise ConfigError(f"--resume: {k} is {new.get(k)!r}, the sweep in {self.path} started with "
                              f"{was.get(k)!r} ({len(changed)} value(s) differ); resume with the same config "
                              "(only train.max_examples may be raised)")
        for split, fp in fingerprints.items():
            old = state.get("fingerprints", {}).get(split)
            if old != fp:
                raise ConfigError(f"--resume: split {split!r} of the store is {fp}, the sweep in {self.path} "
                                  f"started on {old}: the store changed; start a new sweep (without --resume)")
        return state

    def set_aside_answer(self, cap: int) -> Path | None:
        """Before a sweep is continued to a higher cap: its answer at `cap` (ANSWER_FILES) moved to
        previous/<parent run id>.cap-<cap>/, nothing deleted; None when it had none."""
        files = [self.path / n for n in ANSWER_FILES if (self.path / n).exists()]
        if not files:
            return None
        aside = self.path / "previous" / f"{self.recorded()['parent_run_id']}.cap-{cap}"
        aside.mkdir(parents=True, exist_ok=True)
        for f in files:
            f.rename(aside / f.name)
        return aside

    def retire(self, storage: str, name: str) -> Path | None:
        """Move an earlier sweep's files (SWEEP_FILES, and its Tune and Train runs
        <storage>/<name> and <storage>/train_runs/<name>) to previous/<id>/; returns that folder,
        None when there was nothing to move. Ray storage at a URI (s3://...) cannot be moved: a
        ConfigError if it holds this sweep's name already."""
        if "://" in storage:
            _refuse_remote(storage, name)
            runs = []
        else:
            candidates = ((Path(storage) / name, _is_tune_experiment), (Path(storage) / "train_runs" / name, _is_train_runs))
            runs = [r for r, _ in candidates if r.exists()]
            for r, looks_right in candidates:
                if r.exists() and not looks_right(r):
                    raise ConfigError(f"{r} exists and is not an earlier sweep's Ray storage; leaving it alone: "
                                      "choose another run.name or run.storage_path")
        files = [self.path / n for n in SWEEP_FILES if (self.path / n).exists()]
        if not files and not runs:
            return None
        was = (self.recorded() or {}).get("parent_run_id")
        previous = self.path / "previous" / (was if isinstance(was, str) and was.isalnum()
                                             else time.strftime("%Y%m%d-%H%M%S"))  # one path part
        moves = [(f, previous / f.name) for f in files] + [(r, previous / "ray" / r.relative_to(storage)) for r in runs]
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        for source, target in moves[len(files):]:  # the checkpoints results.json names
            _rewrite_paths(previous / "results.json", str(source.resolve()), str(target.resolve()))
        return previous


def _is_tune_experiment(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith(("experiment_state", "tuner.pkl", "basic-variant-state"))
                                 for p in path.iterdir())


def _is_train_runs(path: Path) -> bool:
    """Every entry a Train run directory (with checkpoints, Train's snapshot, or nothing yet) or
    the sweep's racing or grid record."""
    def ours(p: Path) -> bool:
        if p.is_file():
            return p.name in ("racing.json", "grid.json")
        return any(p.glob("checkpoint_*")) or not any(p.iterdir())
    return path.is_dir() and all(ours(p) for p in path.iterdir())


def _refuse_remote(storage: str, name: str) -> None:
    import pyarrow.fs as pafs
    path = f"{storage.rstrip('/')}/{name}"
    fs, base = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(base).type != pafs.FileType.NotFound:
        raise ConfigError(f"{path} holds an earlier sweep: pass --resume to continue it, or choose another run.name")


def _rewrite_paths(results: Path, old: str, new: str) -> None:
    """The checkpoint paths of a moved sweep's results.json (each pick's, rows[].seeds[]),
    pointed at where they went."""
    if not results.exists():
        return
    summary = json.loads(results.read_text())
    for pick in (s for row in summary.get("rows", []) for s in row.get("seeds", [])):
        if isinstance(pick.get("checkpoint"), str) and pick["checkpoint"].startswith(old):
            pick["checkpoint"] = new + pick["checkpoint"][len(old):]
    results.write_text(json.dumps(summary, indent=1))
