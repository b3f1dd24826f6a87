"""The Ray Tune sweep over arms (recipe x beta) x learning rate x seed; each trial builds and
fits a TorchTrainer.

`trial_driver(config)` is the Tune trainable (Train V2 inside Tune): it opens the trial's
MLflow child run, logs the sampler audit, and fits a `TorchTrainer` running
`sweep.train.train_func` on the trial's oversampled stream (imported in the workers only: the
trial driver and Train's controller never load the model code). The Train run is named by the
trial itself (sweep/trial.py `Trial.key`), not by Tune's trial id, so a restarted trial, a resumed
sweep and a sweep continued to a higher cap all find its checkpoints. `build_tuner` makes
(or restores) the Tuner; concurrency is derived from the cluster: a Train run starts only when
all its workers fit, and Ray Data's reads need CPUs of their own, so on a 2-CPU machine one
trial runs at a time. A finished trial's driver process runs the next trial
(`resources.reuse_actors`, Tune's reuse_actors): its start and imports are paid once per driver,
not once per trial (bench/startup.py).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, replace
from functools import partial

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from data.balance import recipe
from data.store import open_store
from data.audit import sampler_audit
from data.stream import default_units_per_block, oversampled_dataset, stream_execution_options
from sweep.checkpoint import list_checkpoints, prune, recorded_failures, registered_examples
from sweep.config import Config, flatten, from_dict, to_dict
from sweep.history import TrialState, summary_metrics
from sweep.process_group import torch_config
from sweep.progress import SweepProgress
from sweep.scheduler import FairRacing, RefiningGrid, eliminated, is_eliminated
from sweep.trial import Trial

__all__ = ["trial_driver", "build_tuner", "unfit_trial", "trial_concurrency", "TrialError", "METRIC"]

METRIC = "val_dprime_pick"  # the smoothed d' at the trial's current pick (sweep/select.py)
log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict) -> None:
    """The TorchTrainer's loop: sweep.train.train_func, imported here, in the Train worker (the
    time the import takes is the start-up phase `import`)."""
    import_started = time.time()
    from sweep.train import train_func
    train_func({**config, "started": {**config["started"], "import": import_started}})


def units_per_block(cfg: Config) -> int:
    """data.units_per_block, or the default for the trial's per-worker batch."""
    per_worker = max(1, cfg.train.batch_size // cfg.resources.num_workers)
    return cfg.data.units_per_block or default_units_per_block(per_worker)


def _train_dataset_factory(cfg: Config, trial: Trial, train_run_path: str):
    """Called by Train at every worker-group start: the stream from the last checkpoint on, to
    the cap rounded up to a whole batch (a cap inside a batch would end on a short one, and a
    higher cap later could not continue the stream as one run to it at once reads it)."""
    def build():
        seen = registered_examples(train_run_path)
        batch = cfg.train.batch_size
        budget = -(-cfg.train.max_examples // batch) * batch
        return oversampled_dataset(cfg.data.store, cfg.data.train_split, trial.beta, seed=trial.seed, recipe=trial.scheme,
                                   examples=max(budget - seen, 1), skip=seen, units_per_block=units_per_block(cfg),
                                   spectrograms=False)  # read by the workers (data/feed.py)
    return build


def _log_trial_start(cfg: Config, tracking_info: dict | None, trial: Trial) -> str | None:
    """Open (or find again) the trial's MLflow child run and log params (the config as this trial
    runs it: its learning rate in train.optim.lr) and the sampler audit (`audit.*` params and
    audit/sampler_audit.json)."""
    if not tracking_info:
        return None
    from mlflow.tracking import MlflowClient
    from sweep import tracking
    client = MlflowClient(tracking_info["uri"])
    store = open_store(cfg.data.store)
    params = {"recipe": trial.scheme, "draw": recipe(trial.scheme).draw, "beta": trial.beta, "lr": trial.lr, "seed": trial.seed,
              **flatten({"cfg": to_dict(cfg)})}
    tags = {"dataset.fingerprint": store.fingerprint(cfg.data.train_split), "ray_trial_id": tune.get_context().get_trial_id()}
    run_id = tracking.child_run(client, tracking_info["experiment_id"], tracking_info["parent_run_id"], trial.key,
                                trial.name(cfg.sweep.several_schemes, cfg.sweep.several_seeds), params, tags)
    tracking.log_store_inputs(client, run_id, store, {cfg.data.train_split: "training",
                                                      cfg.data.valid_split: "validation"})
    audit = sampler_audit(store, cfg.data.train_split, trial.beta, seed=trial.seed, batch_size=cfg.train.batch_size,
                          recipe=trial.scheme, units_per_block=units_per_block(cfg), workers=cfg.resources.num_workers)
    # as params, not metrics: the run's page opens on its validation curves, not on one-point charts
    tracking.log_params(client, run_id, {f"audit.{k}": v for k, v in audit.items() if isinstance(v, (int, float))})
    tracking.log_json(client, run_id, audit, "audit/sampler_audit.json")
    return run_id


def _report_finished(cfg: Config, checkpoint: tuple[str, TrialState] | None) -> None:
    """Give Tune the final result of a trial whose training had already finished, or that racing
    stopped (perhaps before it started: `checkpoint` None)."""
    if checkpoint is None:  # the metric as before a pick: Tune checks every result has it
        tune.report({"examples": 0, "stopped": "eliminated", METRIC: math.nan, "examples_to_pick": -1})
        return
    path, state = checkpoint
    tune.report({**summary_metrics(state, cfg.sweep.rule), "checkpoint_path": path})


def _outcome(cfg: Config, run_path: str) -> dict[str, str]:
    """MLflow tags of a trial whose fit returned: why it stopped, whether its trace learned and
    whether its pick is settled; empty when it did not finish (stopped from outside, e.g.
    Ctrl-C)."""
    checkpoints = list_checkpoints(run_path)
    if not checkpoints or not checkpoints[-1][1].finished(cfg.train.max_examples):
        return {}
    summary = summary_metrics(checkpoints[-1][1], cfg.sweep.rule)
    return {"stopped": summary["stopped"], "learned": str(summary["learned"]).lower(),
            "converged": str(summary["converged"]).lower()}


class TrialError(RuntimeError):
    """A trial's training failed; the message names each failed worker's error."""


def _worker_errors(error: BaseException, run_path: str) -> BaseException:
    """A TrialError naming the error of every worker that recorded its failure (sweep/train.py):
    Train's own error cuts each worker's traceback short, and with it the line that says what
    failed (e.g. the StoreError naming a damaged shard). The error as it is when no worker
    recorded one (a worker process that died)."""
    failures = recorded_failures(run_path)
    if not failures:
        return error
    return TrialError("training failed on " + "; ".join(f"rank {f['rank']}: {f['type']}: {f['message']}"
                                                        for f in failures))


def trial_driver(config: dict, sweep: dict) -> None:
    """Tune trainable: config = Trial.tune_config (what Tune searches and shows); sweep = {cfg,
    train_runs, tracking}, the same for every trial (`tune.with_parameters`)."""
    started = time.time()
    trial = Trial.from_tune(config)
    base: Config = from_dict(Config, sweep["cfg"])
    cfg = replace(base, train=replace(base.train, optim=replace(base.train.optim, lr=trial.lr)))  # the one place
    run_path = os.path.join(sweep["train_runs"], trial.key)
    checkpoints = list_checkpoints(run_path)
    done = checkpoints and checkpoints[-1][1].finished(cfg.train.max_examples)
    if done or is_eliminated(trial, eliminated(sweep["train_runs"])):
        if not checkpoints:  # eliminated before it started: its MLflow run is tagged so at the end
            _log_trial_start(cfg, sweep["tracking"], trial)
        _report_finished(cfg, checkpoints[-1] if checkpoints else None)  # not run again
        return
    run_id = _log_trial_start(cfg, sweep["tracking"], trial)
    r = cfg.resources
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": 1} if r.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "trial": asdict(trial),
                           "tracking": {**sweep["tracking"], "run_id": run_id} if run_id else None,
                           "train_run_path": run_path, "started": {"driver": started, "fit": time.time()}},
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=torch_config(),  # on a one-machine cluster nothing listens beyond the loopback
        datasets={"train": _train_dataset_factory(cfg, trial, run_path)},
        # Train replaces a dataset's execution options with these: the planned order kept
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options={"train": stream_execution_options()}),
        run_config=ray.train.RunConfig(
            name=trial.key, storage_path=sweep["train_runs"],
            failure_config=ray.train.FailureConfig(max_failures=cfg.sweep.max_failures),
            # every checkpoint directory stays registered (resume needs them all); the weights
            # selection can no longer pick are removed from inside them (sweep/checkpoint.py)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            callbacks=[TuneReportCallback()]),
    )
    error = None
    try:
        trainer.fit()
        checkpoints = list_checkpoints(run_path)
        if cfg.train.keep_checkpoints and checkpoints:  # the final pruning, on the final history
            prune(run_path, checkpoints[-1][1].history, cfg.sweep.smoothing_window, cfg.train.keep_checkpoints)
    except BaseException as e:  # noqa: BLE001 - recorded in MLflow, then re-raised for Tune
        error = _worker_errors(e, run_path)
        if error is e:
            raise
        raise error from e
    finally:
        if run_id:
            _finish_child(cfg, sweep["tracking"]["uri"], run_id, run_path, error)


def _stopped_from_outside(error: BaseException) -> bool:
    """The trial's actors were taken away (Ctrl-C on the sweep, which ends the trial drivers and
    their Train controllers in no set order; a lost node) rather than its training failing."""
    from ray.exceptions import RayActorError
    return isinstance(error, (RayActorError, SystemExit, KeyboardInterrupt))


def _finish_child(cfg: Config, uri: str, run_id: str, run_path: str, error: BaseException | None) -> None:
    """End the trial's MLflow run: FAILED with its training error, FINISHED with the convergence
    tags when training stopped by its own rule, else KILLED (stopped from outside, tagged with
    how: --resume continues it; a trial Tune gives up on is marked FAILED by the sweep)."""
    from mlflow.tracking import MlflowClient
    from sweep.tracking import finish_run
    client = MlflowClient(uri)
    if error is not None and _stopped_from_outside(error):
        client.set_tag(run_id, "stopped_by", f"{type(error).__name__}: {error}"[:5000])
        error = None
    tags = {} if error is not None else _outcome(cfg, run_path)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    finish_run(client, run_id, error, killed=error is None and not tags)


def unfit_trial(cfg: Config, resources: dict) -> str | None:
    """Why one trial cannot start on a cluster with `resources` ({"CPU": n, "GPU": n}): its Train
    workers' GPUs or CPUs, plus the CPU its stream reads with; None when it fits."""
    r = cfg.resources
    if r.use_gpu and resources.get("GPU", 0) < r.num_workers:
        return (f"resources.use_gpu=true with resources.num_workers={r.num_workers}: a trial needs {r.num_workers} "
                f"GPU(s), the cluster has {resources.get('GPU', 0):g}")
    need = r.num_workers * r.cpus_per_worker + 0.5
    if resources.get("CPU", 0) < need:
        return (f"resources.num_workers={r.num_workers} x resources.cpus_per_worker={r.cpus_per_worker:g} (+0.5 for "
                f"the stream): a trial needs {need:g} CPUs, the cluster has {resources.get('CPU', 0):g}")
    return None


def trial_concurrency(cfg: Config, resources: dict) -> int:
    """Trials that fit at once: by GPUs when trials use them (the whole grid while the cluster
    has none: the autoscaler adds them), else by CPUs, leaving one CPU for Ray Data and the
    drivers; never more than the grid. An explicit `resources.max_concurrent_trials` wins, with
    a warning when it oversubscribes the CPUs (trials then wait on each other's reads)."""
    r = cfg.resources
    grid = len(cfg.sweep.trials)
    if r.use_gpu:  # no GPU yet: an autoscaling cluster adds nodes as trials ask for them
        fit = int(resources.get("GPU", 0) // r.num_workers) or grid
    else:  # each trial: its Train workers plus one 0.5-CPU read task
        fit = max(1, int((resources.get("CPU", 1) - 1) // (r.num_workers * r.cpus_per_worker + 0.5)))
    if r.max_concurrent_trials:
        if r.max_concurrent_trials > fit:
            log.warning("resources.max_concurrent_trials=%d but only %d trial(s) fit in %s CPU / %s GPU; "
                        "the extra trials will wait for resources", r.max_concurrent_trials, fit,
                        resources.get("CPU", 0), resources.get("GPU", 0))
        return min(r.max_concurrent_trials, grid)
    return min(fit, grid)


def build_tuner(cfg: Config, storage_path: str, train_runs: str, tracking_info: dict | None,
                verbose: bool = False) -> tune.Tuner:
    """The Tuner of the sweep's grid (sweep/scheduler.py RefiningGrid: the configured arms x lr x
    seed, and the betas refinement adds), as Tune experiment run.name under `storage_path`, each
    trial's Train run under `train_runs` (sweep/rundir.py lays these out), raced by FairRacing
    unless every arm trains to the cap. A new Tuner also resumes a sweep: a trial finds its Train
    run by its key, and one that finished (or racing stopped) reports at once. The console shows
    sweep/console.py's progress table, or Tune's own output when `verbose`."""
    driver_resources = {cfg.resources.driver_resource or "CPU": 0.01}
    sweep = {"cfg": to_dict(cfg), "train_runs": train_runs, "tracking": tracking_info}
    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=sweep), driver_resources)
    racing = cfg.sweep.racing and not cfg.sweep.train_to_cap  # the reference trains every arm
    scheduler = FairRacing(cfg, train_runs) if racing else None
    grid = RefiningGrid(cfg, train_runs, partial(standing_of, train_runs=train_runs))
    concurrency = trial_concurrency(cfg, ray.cluster_resources())
    progress = SweepProgress(cfg, grid.cfg.sweep.trials, concurrency, train_runs=train_runs)
    console = {} if verbose else {"verbose": 0, "callbacks": [progress]}
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=grid, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=concurrency, reuse_actors=cfg.resources.reuse_actors),
        run_config=tune.RunConfig(name=cfg.run.name, storage_path=storage_path,
                                  failure_config=tune.FailureConfig(max_failures=1), **console),
    )


def standing_of(cfg: Config, train_runs: str) -> tuple:
    """sweep.winners.standing, imported when refinement first asks (it loads the model code)."""
    from sweep.winners import standing
    return standing(cfg, train_runs)
