"""The sweep's driver: from a loaded config to the printed answer (`python -m sweep.run`).

Order, so that a failure leaves nothing half done: MLflow answers; the store is ready and
checked (sweep/prepare.py); the run directory is locked; Ray is reached; only then is an
earlier sweep in the run directory moved aside (sweep/rundir.py) and the MLflow parent run
opened. Then the Tune sweep (sweep/tune.py), the winners (sweep/winners.py), and publishing:
predictions, the report, results.txt and last results.json, each complete or absent.

Ctrl-C, SIGTERM and SIGHUP (a terminal closed) stop the sweep at any point before its answer is
written: trials stop (the signal is passed to Tune as its stop signal while it runs), the MLflow
parent and unfinished children end KILLED, no results.json is written, interrupted.json says
what is missing and how to resume, and the exit status is 128 + the signal's number.

`--resume` with a higher `train.max_examples` continues the recorded sweep to that cap: every
trial not finished under it (NOT CONVERGED, or did not learn) trains on from its latest
checkpoint, settled trials stay as they are, the MLflow runs continue, and the answer is rebuilt
(the one at the lower cap is kept under previous/).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import ray
from mlflow.entities import RunStatus

from data.cli import Failure
from data.store import open_store
from sweep import environment, tracking
from sweep.config import Config, ConfigError, flatten, to_dict
from sweep.console import answer_lines, header, stopping_statement
from sweep.prepare import prepare
from sweep.report import build_report
from sweep.rundir import RunDir
from sweep.report.tables import format_results
from sweep.scheduler import eliminated, is_eliminated, refined
from sweep.trial import Trial
from sweep.tune import build_tuner, unfit_trial
from sweep.winners import SelectionError, finished, summarise, traces

__all__ = ["run_sweep", "Interrupted", "missing_trials", "resume_command"]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each stops the sweep without an answer


class Interrupted(Exception):
    """The sweep was stopped (SIGNALS) before its answer was written."""

    def __init__(self, signum: int, missing: list[dict] | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.missing = signum, missing


class _Signals:
    """Ctrl-C, SIGTERM and SIGHUP (SIGNALS), from `__enter__` until the answer is written. While
    Tune's `fit` runs (`pass_to_tune`), the first one is remembered and passed on as SIGUSR1,
    Tune's own stop signal (it stops the trials, saves the experiment, and `fit` returns); Tune's
    SIGINT handler is switched off (sweep/environment.py), so it cannot take the signal
    unrecorded. A second signal during `fit`, and either one before and after it
    (`stop_raising`), raises Interrupted at once."""

    def __init__(self):
        self.received: int | None = None

    def __enter__(self):
        self._old = {s: signal.getsignal(s) for s in SIGNALS}
        self._env = ExitStack()
        self.stop_raising()
        return self

    def _raise(self, signum, frame):
        self.received = signum
        raise Interrupted(signum)

    def _to_tune(self, signum, frame):
        if self.received is not None:  # the second one: stop waiting for Tune
            self._raise(signum, frame)
        self.received = signum
        os.kill(os.getpid(), signal.SIGUSR1)

    def stop_raising(self) -> None:
        """Each signal raises Interrupted."""
        for s in SIGNALS:
            signal.signal(s, self._raise)

    def pass_to_tune(self) -> None:
        """Each signal reaches Tune's `fit` as SIGUSR1 (its handler is installed by `fit`)."""
        self._env.enter_context(environment.tune_sigint_off())
        for s in SIGNALS:
            signal.signal(s, self._to_tune)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._env.close()


def run_sweep(cfg: Config, config_path: str, argv: list[str], resume: bool = False, verbose: bool = False) -> int:
    """The sweep (see the module docstring) of `cfg` (loaded from `config_path` with the command
    line `argv`, which the resume command repeats); the exit status."""
    t0 = time.time()
    run_dir = RunDir(Path(cfg.run.run_dir).resolve())
    uri = tracking.tracking_uri(run_dir.path)
    tracking.check_reachable(uri)  # before anything is built or trained
    with run_dir.lock():  # a second sweep on this directory is refused before anything else
        if not verbose:
            _quiet_console()
        cfg = prepare(cfg)
        store = open_store(cfg.data.store)
        fingerprints = {s: store.fingerprint(s) for s in [cfg.data.train_split, cfg.data.valid_split,
                                                             *cfg.data.eval_splits]}
        experiment = tracking.experiment_name(cfg.run.mlflow_experiment)
        print(header(cfg, config_path, fingerprints[cfg.data.train_split], uri, experiment))
        warning = stopping_statement(cfg)[1]
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return _locked(cfg, run_dir, uri, experiment, fingerprints, argv, resume, verbose, t0)


def _locked(cfg: Config, run_dir: RunDir, uri: str, experiment: str, fingerprints: dict[str, str], argv: list[str],
            resume: bool, verbose: bool, t0: float) -> int:
    """run_sweep with the run directory held: Ray, the MLflow parent, the Tune sweep, the answer."""
    with _Signals() as signals:
        client, info, owns_ray = None, None, False
        try:
            client = tracking.open_store(uri)
            caps = _resumable(run_dir, cfg, fingerprints, resume)
            recorded = json.loads(run_dir.results_file.read_text()) if caps and run_dir.results_file.exists() else None
            if recorded and recorded["config"]["train"]["max_examples"] == cfg.train.max_examples:
                print(f"the sweep in {run_dir.path} has finished; its answer:\n" + "\n".join(answer_lines(recorded)))
                return 0  # nothing to run or log again
            owns_ray = _start_ray(cfg, verbose)
            _check_fit(cfg, local=owns_ray)
            exp_id = tracking.experiment_id(client, experiment, run_dir.path)
            parent_id = _open_parent(client, run_dir, cfg, exp_id, fingerprints, caps)
            info = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id}
            summary = _sweep(cfg, run_dir, client, info, signals, verbose)
            summary["wall_seconds"] = round(time.time() - t0, 1)
            table = _publish(client, run_dir, parent_id, summary)
        except (Interrupted, KeyboardInterrupt) as e:
            e = e if isinstance(e, Interrupted) else Interrupted(signals.received or signal.SIGINT)
            _interrupted(client, info, run_dir, e, resume_command(argv))
            return 128 + e.signum
        except BaseException as e:
            expected = _ended_failed(client, info, run_dir, uri, e)
            if expected is not None:
                raise expected from e
            raise
        finally:
            if owns_ray:
                ray.shutdown()
    print(table, end="")
    cap = summary["selection"]["cap_to_finish"]
    if cap:
        print(f"to make it final, continue every unsettled trial to {cap:,} examples:\n  {resume_command(argv, cap)}")
    print(f"results: {run_dir.results_file}  ({time.time() - t0:.0f} s)")
    print("browse every trial in MLflow:\n  " + tracking.ui_command(uri, exp_id))
    return 0


FULL_DISK_BYTES = 64 * 2**20  # free space below which a failed sweep's run directory counts as full


class DiskFull(Failure):
    """The disk of the run directory filled up while the sweep wrote there."""


def _disk_full(run_dir: RunDir) -> DiskFull | None:
    """A DiskFull naming the run directory when its file system has almost no space left: then
    that is why the sweep failed, whatever error Tune or MLflow raised on the way (a cut-short
    pickle of Tune's, "database or disk is full")."""
    free = shutil.disk_usage(run_dir.path).free
    if free >= FULL_DISK_BYTES:
        return None
    return DiskFull(f"{run_dir.path}: the disk holding the run directory is full ({free / 2**20:.1f} MiB free); "
                    "free space, then run the same command with --resume (the trials trained so far are kept)")


def _ended_failed(client, info: dict | None, run_dir: RunDir, uri: str, error: BaseException) -> Failure | None:
    """After the sweep failed with `error`: the MLflow parent ended FAILED where it can be, and the
    one-line error that explains an expected failure (the run directory's disk full; the
    tracking store failing); None for any other error (a bug: it keeps its traceback)."""
    full, explained = _disk_full(run_dir), tracking.explain(error, uri)
    if info and explained is None:
        try:
            tracking.finish_run(client, info["parent_run_id"], error)
        except Exception as e:  # noqa: BLE001 - the store failed too (often the same full disk)
            explained = tracking.explain(e, uri)
            if explained is None and full is None:
                raise
    return full or explained


def _quiet_console() -> None:
    """The console shows the sweep's own lines (sweep/console.py): MLflow's INFO lines (database
    set-up) and Ray's notes and warnings off (they stay in Ray's log files), and Tune's own
    output off (sweep/environment.py). Two loggers print a traceback for an error that is then
    raised and reported in one line (`--verbose` shows them): MLflow's database layer, and Tune's
    copy of its experiment state into the run directory (both fail so on a full disk)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("ray").setLevel(logging.ERROR)
    for name in ("mlflow.store.db.utils", "ray.tune.execution.experiment_state"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    environment.quiet_tune()


def _resumable(run_dir: RunDir, cfg: Config, fingerprints: dict[str, str], resume: bool) -> list[int]:
    """The caps the sweep recorded in the run directory was run to, this one's last, when this
    run continues it (`--resume`, the same config and store, perhaps a higher cap); else [].
    --resume with nothing recorded starts afresh, and says so."""
    if not resume:
        return []
    state = run_dir.recorded()
    if state is None:
        print(f"note: --resume: {run_dir.path} holds no earlier sweep; starting afresh")
        return []
    run_dir.check_resumable(to_dict(cfg), fingerprints)
    caps = state.get("caps") or [state["config"]["train"]["max_examples"]]
    return caps if caps[-1] == cfg.train.max_examples else [*caps, cfg.train.max_examples]


def _start_ray(cfg: Config, verbose: bool) -> bool:
    """Start (or join, `run.ray_address` or RAY_ADDRESS) Ray unless this process already has it;
    True if this call did (and so shuts it down). An address that does not answer is a
    ConfigError within seconds. Worker logs stay in Ray's log directory unless `verbose`."""
    if ray.is_initialized():  # tests and notebooks may have started Ray already (their settings)
        return False
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    _check_ray_address(address)
    ray.init(address=cfg.run.ray_address, include_dashboard=True, configure_logging=False,
             log_to_driver=verbose, runtime_env=environment.runtime_env(cfg.train.report_poll_s))
    return True


def _check_fit(cfg: Config, local: bool) -> None:
    """A trial that can never start: on a Ray this command started (nothing will add nodes) a
    ConfigError naming the key, before Tune waits on it forever; on a cluster a warning (its
    autoscaler may add the nodes)."""
    problem = unfit_trial(cfg, ray.cluster_resources())
    if problem and local:
        raise ConfigError(f"{problem}: no trial can start on this machine")
    if problem:
        print(f"warning: {problem}: trials wait until the cluster's autoscaler adds nodes", file=sys.stderr)


def _check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A host:port (or ray://host:port) Ray address that accepts no connection within
    `timeout_s`: a ConfigError naming it ("auto" and a local Ray are Ray's own to find)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise ConfigError(f"Ray at {address} (run.ray_address or RAY_ADDRESS) does not answer ({e}): "
                          "start it (ray start --head, ray up) or unset RAY_ADDRESS to start a local Ray") from None


def _open_parent(client, run_dir: RunDir, cfg: Config, exp_id: str, fingerprints: dict[str, str],
                 caps: list[int]) -> str:
    """The sweep's MLflow parent run: the recorded one again (when `caps` says this run continues
    it: resumed, or continued to a higher cap, its answer at the lower cap set aside first), or a
    new one, with an earlier sweep in the run directory moved to previous/ first."""
    if caps:
        recorded = run_dir.recorded()
        parent_id = recorded["parent_run_id"]
        if len(caps) > len(recorded.get("caps") or [recorded["config"]["train"]["max_examples"]]):
            aside = run_dir.set_aside_answer(caps[-2])
            if aside:
                print(f"the answer at the cap of {caps[-2]:,} examples moved to {aside}")
            run_dir.record(parent_id, recorded["experiment_id"], to_dict(cfg), fingerprints, caps)
        client.update_run(parent_id, status="RUNNING")
        tags = client.get_run(parent_id).data.tags
        for key in ("error", "interrupted"):  # from the attempt this one continues
            if key in tags:
                client.delete_tag(parent_id, key)
    else:
        moved = run_dir.retire(run_dir.storage(cfg), cfg.run.name)
        if moved:
            print(f"the earlier sweep in {run_dir.path} (its results, report, predictions and checkpoints) "
                  f"moved to {moved}")
        parent_id = tracking.start_parent(client, exp_id, cfg.run.name, flatten(to_dict(cfg)),
                                          {"dataset.fingerprint": fingerprints[cfg.data.train_split]})
        tracking.log_store_inputs(client, parent_id, open_store(cfg.data.store),
                                  {cfg.data.train_split: "training", cfg.data.valid_split: "validation",
                                   **{s: "evaluation" for s in cfg.data.eval_splits}})
        run_dir.record(parent_id, exp_id, to_dict(cfg), fingerprints, [cfg.train.max_examples])
    run_dir.interrupted_file.unlink(missing_ok=True)  # this sweep's own, from before --resume
    return parent_id


def _sweep(cfg: Config, run_dir: RunDir, client, info: dict, signals: _Signals, verbose: bool) -> dict:
    """Fit the Tune sweep, then select and evaluate the winners: what results.json holds."""
    train_runs = run_dir.train_runs(cfg)
    tuner = build_tuner(cfg, run_dir.storage(cfg), train_runs, info, verbose)
    signals.pass_to_tune()
    results = tuner.fit()
    signals.stop_raising()
    cfg = refined(cfg, train_runs)  # with the betas refinement added
    errors = {Trial.from_tune(r.config): str(r.error) for r in results if r.error}
    trials = cfg.sweep.trials
    missing = missing_trials(trials, finished(cfg, trials, errors, train_runs))
    names = {t: t.name(cfg.sweep.several_schemes, cfg.sweep.several_seeds) for t in trials}
    if missing and signals.received:  # Tune returns normally after Ctrl-C: half a grid is not an answer
        raise Interrupted(signals.received, [{"trial": t.key, "name": names[t], **asdict(t)} for t in missing])
    if missing:
        raise SelectionError(f"trial(s) {', '.join(names[t] for t in missing)} ended without a final checkpoint in "
                             f"{train_runs}: it was removed or is incomplete; start the sweep afresh (without --resume)")
    record = eliminated(train_runs)  # a seed not started when its setting was stopped: the setting's elimination
    tracking.mark_eliminated(client, info["experiment_id"], info["parent_run_id"],
                             [{**e, "trial": t.key} for t in trials if (e := is_eliminated(t, record))])
    tracking.close_running_children(client, info["experiment_id"], info["parent_run_id"])
    found, failed, diverged = traces(cfg, trials, errors, train_runs)
    tracking.fail_children(client, info["experiment_id"], info["parent_run_id"], failed)
    by_key = {t.key: t for t in trials}
    for d in diverged:
        print(f"warning: trial {names[by_key[d['trial']]]} diverged (training loss {d['train_loss']:.3g}): left out of "
              "the selection", file=sys.stderr)
    return summarise(cfg, found, failed, diverged, train_runs)


def missing_trials(trials: list[Trial], done: set[Trial]) -> list[Trial]:
    """The trials not in `done` (winners.finished), in the grid's order."""
    return [t for t in trials if t not in done]


def _publish(client, run_dir: RunDir, parent_id: str, summary: dict) -> str:
    """The report, results.txt and results.json, built aside and logged to the MLflow parent,
    then moved into place (results.json last: an interruption or a failing tracking store leaves
    none of them), and the parent finished. Returns results.txt's text."""
    staging = run_dir.path / ".publishing"
    shutil.rmtree(staging, ignore_errors=True)  # this driver's own, from an interrupted publish
    staging.mkdir()
    (staging / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    _report(run_dir, summary, staging / "report")
    table = format_results(summary)
    (staging / "results.txt").write_text(table)
    client.log_artifact(parent_id, str(staging / "results.json"))
    client.log_artifact(parent_id, str(staging / "results.txt"))
    client.log_artifacts(parent_id, str(staging / "report"), "report")
    best, v = summary["selection"], summary["verdict"]
    p_best = "provisional_p_best" if v["provisional"] else "p_best"  # named so in the runs table too
    tracking.log_metrics(client, parent_id, {
        "best_beta": best["beta"], "best_lr": best["lr"], "best_val_dprime": best["val_dprime"],
        **{f"{p_best}.{_metric_key(label)}": p for label, p in summary["p_best"].items()}}, 0)
    client.set_tag(parent_id, "verdict", f"{v['word']}: {v['text']}"[:5000])
    tracking.name_parent(client, parent_id, f"{best['label']}, {v['word']}")
    client.set_tag(parent_id, "p_best", "provisional" if v["provisional"] else "final")
    client.set_tag(parent_id, "converged", str(best["all_converged"]).lower())
    client.set_tag(parent_id, "selection", best["status"])
    if best["not_converged"]:
        client.set_tag(parent_id, "not_converged", ", ".join(f"{r['label']} ({r['status']})" for r in best["not_converged"]))
    for name in ("report", "results.txt", "results.json"):  # the answer last
        target = run_dir.path / name
        if target.is_dir():
            shutil.rmtree(target)  # this sweep's own: an earlier sweep's report moved to previous/
        (staging / name).rename(target)
    staging.rmdir()
    tracking.finish_run(client, parent_id)
    return table


def _report(run_dir: RunDir, summary: dict, out: Path) -> None:
    """The report of `summary` in `out`; one that cannot be built (a figure or table the data does
    not support) is a warning and a report/ERROR.txt saying so: the answer does not depend on it."""
    try:
        build_report(run_dir.path, results=summary, out=out)
    except (ValueError, ArithmeticError, OSError) as e:
        out.mkdir(exist_ok=True)
        rebuild = f"python -m sweep.report --run-dir {shlex.quote(str(run_dir.path))}"
        (out / "ERROR.txt").write_text(f"the report could not be built: {type(e).__name__}: {e}\nrebuild: {rebuild}\n")
        print(f"warning: the report could not be built ({type(e).__name__}: {e}); the answer is in results.json "
              f"and results.txt; rebuild it with: {rebuild}", file=sys.stderr)


def _metric_key(label: str) -> str:
    """An arm's label as an MLflow metric name, each character MLflow refuses in one (and each
    space) an underscore: `psla beta=0.5` -> `psla_beta_0.5`, `passt@100 beta=1` -> `passt_100_beta_1`."""
    return re.sub(r"[^A-Za-z0-9_\-.:/]", "_", label)


def resume_command(argv: list[str], cap: int | None = None) -> str:
    """The command that resumes this sweep, pasteable into a shell from anywhere: the working
    directory named, every argument shell-quoted; with `cap`, continued to that train.max_examples."""
    args = [a for a in argv if a != "--resume" and not (cap is not None and a.startswith("train.max_examples="))]
    args = [a for i, a in enumerate(args) if a != "--set" or (i + 1 < len(args) and not args[i + 1].startswith("--"))]
    if cap is not None:
        args += ["--set", f"train.max_examples={cap}"]
    return f"cd {shlex.quote(os.getcwd())} && " + shlex.join(["python", "-m", "sweep.run", *args, "--resume"])


def _interrupted(client, info: dict | None, run_dir: RunDir, e: Interrupted, resume: str) -> None:
    """No answer after an interruption: the parent (if it was opened) and running children end
    KILLED, a partial summary says what is missing, and the resume command is printed."""
    shutil.rmtree(run_dir.path / ".publishing", ignore_errors=True)
    name = signal.Signals(e.signum).name
    if info is None:
        print(f"interrupted ({name}) before the sweep started: nothing ran", file=sys.stderr)
        return
    tracking.close_running_children(client, info["experiment_id"], info["parent_run_id"])
    client.set_tag(info["parent_run_id"], "interrupted", name)
    client.set_terminated(info["parent_run_id"], RunStatus.to_string(RunStatus.KILLED))
    run_dir.interrupted_file.write_text(json.dumps(
        {"interrupted": name, "selection": None,
         "missing": e.missing if e.missing is not None else "none: stopped after training, before the answer",
         "resume": resume}, indent=1))
    print(f"interrupted ({name}): no beta is selected from a partial sweep"
          + (f"; {len(e.missing)} trial(s) unfinished" if e.missing else "")
          + f".\nresume with:\n  {resume}", file=sys.stderr)
