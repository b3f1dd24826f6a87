"""MLflow tracking: one parent run per sweep, one child run per trial.

The tracking URI is MLFLOW_TRACKING_URI when set (a server), otherwise a sqlite file under the
run directory with artifacts beside it (absolute paths: MLflow resolves relative ones against
whichever process's working directory). The experiment is MLFLOW_EXPERIMENT_NAME when set,
otherwise `run.mlflow_experiment`. Metrics are logged against examples seen (the step).
Only the sweep driver, the trial drivers and Train rank 0 call this module.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from data.cli import Failure

__all__ = ["TrackingError", "tracking_uri", "shown", "check_reachable", "open_store", "explain", "experiment_name",
           "experiment_id", "log_params", "start_parent", "name_parent", "child_run", "log_metrics", "log_history",
           "log_store_inputs", "log_json", "finish_run", "close_running_children", "fail_children", "mark_eliminated",
           "ui_command"]

MAX_PARAM_CHARS = 6000


class TrackingError(Failure):
    """The MLflow tracking store cannot be used; the message says which and why."""


def tracking_uri(run_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI, else `sqlite:////<abs run_dir>/mlflow.db`."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def open_store(uri: str) -> MlflowClient:
    """A client of the tracking store at `uri`. A local sqlite database that does not exist yet is
    created aside and renamed into place once MLflow has built its tables (an interrupted
    creation leaves no half-built database); one that cannot be read is a TrackingError naming
    the file and the cause."""
    path = _sqlite_path(uri)
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial-{uuid.uuid4().hex[:12]}")  # a new name: MLflow
        try:                                                                    # keeps one store per URI
            MlflowClient(f"sqlite:///{partial}").search_experiments(max_results=1)  # builds the tables
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - explained, or raised as it is
        raise explain(e, uri) or e
    return client


def explain(error: BaseException, uri: str) -> TrackingError | None:
    """A TrackingError naming the store (the sqlite file, or the URI) and the root cause of an
    error the tracking store raised (a full disk, a read-only or damaged database, a server that
    refused or failed); None for an error of another kind (a request MLflow rejects as invalid
    is this program's, and keeps its traceback)."""
    import sqlite3
    chain, e = [], error
    while e is not None and e not in chain:  # the chain a traceback shows
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
    store = [c for c in chain if isinstance(c, (sqlite3.Error, OSError)) and _raised_by_tracking(c)
             or type(c).__module__.startswith("sqlalchemy")
             or (isinstance(c, MlflowException) and c.error_code not in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"))]
    if not store:
        return None
    root = store[-1]
    message = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    where = _sqlite_path(uri) or shown(uri)
    hint = ("; move it away to start a new MLflow store here (or set MLFLOW_TRACKING_URI)"
            if isinstance(where, Path) else "")
    return TrackingError(f"MLflow store {where}: {message} ({type(root).__name__}){hint}")


def _raised_by_tracking(error: BaseException) -> bool:
    """Whether `error` was raised inside MLflow's or SQLAlchemy's code (not this program's own
    file or socket work)."""
    import traceback
    return any(f"{os.sep}{package}{os.sep}" in frame.filename for frame in traceback.extract_tb(error.__traceback__)
               for package in ("mlflow", "sqlalchemy"))


def experiment_name(configured: str) -> str:
    """MLFLOW_EXPERIMENT_NAME, else the configured name (`run.mlflow_experiment`)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or configured


def shown(uri: str) -> str:
    """A tracking URI as it may be printed: a password in it (http://user:secret@host) masked."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}"
                                     + (f":{parts.port}" if parts.port else "")))


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any training, when a tracking server does not answer; credentials in
    the URI are sent as MLflow sends them (HTTP basic auth), and never printed."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit
    parts = urlsplit(uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health")
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow server {shown(uri)} answered /health with HTTP {r.status}")
    except OSError as e:
        raise TrackingError(f"MLflow server {shown(uri)} is unreachable ({e}); start it or unset "
                            "MLFLOW_TRACKING_URI to use a local sqlite store") from None


def experiment_id(client: MlflowClient, name: str, run_dir: str | Path) -> str:
    """Get or create the experiment; a new local one keeps artifacts under the run directory."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not client.tracking_uri.startswith(("http://", "https://")):
        location = (Path(run_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _params(values: dict) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(values.items())]


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Params, 100 to a request (values cut to MLflow's limit); logging a param again with the
    value it has is a no-op."""
    items = _params(params)
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def start_parent(client: MlflowClient, exp_id: str, name: str, params: dict, tags: dict) -> str:
    """The sweep's parent run, named by its config's run.name and its start (`sweep-<name>
    <date> <time>`: sweeps of one config stay apart in the runs table; `name_parent` adds the
    answer once there is one)."""
    run = client.create_run(exp_id, run_name=f"sweep-{name} {time.strftime('%Y-%m-%d %H:%M')}",
                            tags={**tags, "sweep.name": name})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def name_parent(client: MlflowClient, run_id: str, answer: str) -> None:
    """The parent's name with the sweep's answer after it (`sweep-demo 2026-12-07 10:00:
    beta=0, unresolved`), so the runs table says what each sweep found."""
    base = client.get_run(run_id).info.run_name.split(": ")[0]
    client.update_run(run_id, name=f"{base}: {answer}")


def _children_of_trial(client: MlflowClient, exp_id: str, parent_id: str, key: str) -> list:
    return client.search_runs([exp_id], f"tags.trial = '{key}' and tags.`mlflow.parentRunId` = '{parent_id}'")


def child_run(client: MlflowClient, exp_id: str, parent_id: str, key: str, name: str,
              params: dict, tags: dict) -> str:
    """The trial's child run: found again by its key (sweep/trial.py Trial.key, tag `trial`)
    after a restart, a resume or a higher cap (its `tags` set again), else created."""
    found = _children_of_trial(client, exp_id, parent_id, key)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        for k in ("stopped", "learned", "converged", "stopped_by"):  # an earlier attempt's outcome
            if k in found[0].data.tags:
                client.delete_tag(run_id, k)
        return run_id
    run = client.create_run(exp_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_id, "trial": key})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()])


def log_history(client: MlflowClient, run_id: str, history: dict, window: int) -> None:
    """A trial's evaluations that MLflow does not have yet (all after a restart's gap, else the
    last): train_loss, val_mAP, val_AUC and val_dprime at their examples, each full-window
    smoothed d' at its centre's step once its window is complete (sweep/select.py), and the
    pick so far (`pick.val_dprime`, `pick.examples`: its latest value is the trial's pick)."""
    from sweep.select import pick, smoothed
    logged = client.get_metric_history(run_id, "val_dprime")
    last = max((m.step for m in logged), default=-1)
    s, h = smoothed(history["val_dprime"], window), window // 2
    for i, examples in enumerate(history["examples"]):
        if examples > last:
            log_metrics(client, run_id, {k: history[k][i] for k in ("train_loss", "val_mAP", "val_AUC", "val_dprime")},
                        examples)
            if i >= h and np.isfinite(s[i - h]):
                log_metrics(client, run_id, {"val_dprime_smoothed": s[i - h]}, history["examples"][i - h])
            j = pick(history["val_dprime"][:i + 1], window)  # the pick so far: the runs table sorts by it
            if j is not None:
                log_metrics(client, run_id, {"pick.val_dprime": s[j], "pick.examples": history["examples"][j]},
                            examples)


def log_store_inputs(client: MlflowClient, run_id: str, store, splits: dict[str, str]) -> None:
    """The store's splits as the run's dataset inputs (MLflow's Dataset column): per split its
    name, fingerprint (the digest), clips and per-class counts, with its role as the context
    (`splits`: split -> role, e.g. {"train": "training", "valid": "validation"})."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    inputs = []
    for split, role in splits.items():
        info = store.split_info(split)
        profile = {"clips": info["clips"], "class_counts": dict(zip(store.mids, store.class_counts(split).tolist()))}
        dataset = Dataset(name=f"{Path(store.root).name}/{split}", digest=store.fingerprint(split)[7:27],
                          source_type="local", source=json.dumps({"uri": str(store.root), "split": split}),
                          profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", role)]))
    client.log_inputs(run_id, datasets=inputs)


def log_json(client: MlflowClient, run_id: str, obj, artifact_path: str) -> None:
    """Write `obj` as JSON to the run's artifacts at `artifact_path` (e.g. 'audit/beta.json')."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_path).name
        path.write_text(json.dumps(obj, indent=1))
        client.log_artifact(run_id, str(path), str(Path(artifact_path).parent) or None)


def finish_run(client: MlflowClient, run_id: str, error: BaseException | None = None,
               killed: bool = False) -> None:
    """End a run: FAILED with an `error` tag, KILLED (stopped from outside), or FINISHED."""
    if error is not None:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
    status = "FAILED" if error is not None else "KILLED" if killed else "FINISHED"
    client.set_terminated(run_id, status)


def close_running_children(client: MlflowClient, exp_id: str, parent_id: str) -> int:
    """Mark children still RUNNING (trials stopped early by a scheduler) as KILLED."""
    runs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                                        "attributes.status = 'RUNNING'")
    for r in runs:
        client.set_terminated(r.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return len(runs)


def fail_children(client: MlflowClient, exp_id: str, parent_id: str, failed: list[dict]) -> None:
    """Mark the child runs of trials Tune gave up on (`failed`: {trial: its key, error}) as FAILED."""
    for f in failed:
        for r in _children_of_trial(client, exp_id, parent_id, f["trial"]):
            if r.info.status != "FAILED":
                client.set_tag(r.info.run_id, "error", f["error"][:5000])
                client.set_terminated(r.info.run_id, "FAILED")


def mark_eliminated(client: MlflowClient, exp_id: str, parent_id: str, eliminations: list[dict]) -> None:
    """The child runs of trials racing stopped (sweep/scheduler.py's record: {trial, examples, p,
    level, against}): tagged `eliminated` with where and why, and FINISHED (racing's decision,
    not a failure)."""
    for e in eliminations:
        for r in _children_of_trial(client, exp_id, parent_id, e["trial"]):
            for k, v in {"eliminated": "true", "eliminated.examples": e["examples"], "eliminated.p_best": f"{e['p']:.4f}",
                         "eliminated.against": e["against"], "eliminated.level": e["level"]}.items():
                client.set_tag(r.info.run_id, k, str(v))
            client.set_terminated(r.info.run_id, "FINISHED")


def ui_command(uri: str, exp_id: str) -> str:
    """How to browse the runs (the runs table is not MLflow 3's landing page)."""
    url = f"#/experiments/{exp_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"open {shown(uri).rstrip('/')}/{url}"
    return (f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"  then open http://127.0.0.1:5000/{url}")
