"""Run a balancing sweep: beta x learning rate on Ray Tune, selected on validation d', in MLflow.

    python -m sweep.run                                   # the embedded demo, CPU, minutes
    python -m sweep.run --config configs/audioset.yaml    # paper scale, on a `ray up` cluster
    python -m sweep.run --set sweep.betas=[0,1] --set train.max_examples=8000
    python -m sweep.run --resume                          # continue an interrupted sweep

Steps: build the synthetic store if the config asks for one and it is missing; open the
MLflow parent run; fit the Tune sweep (one TorchTrainer per trial); select per beta the
learning rate and checkpoint with the best smoothed validation d' (paper 3.2); evaluate
each winner on every evaluation split; write <run_dir>/results.json and
<run_dir>/predictions/beta=<b>/<split>.npz; print the paper's Table 3/4 layout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from sweep.config import Config, ConfigError, flatten, load_config, to_dict
from sweep.select import cap_to_settle, latest_settled_pick
from sweep.tracking import TrackingError

__all__ = ["main", "prepare", "collect_traces", "check_selected_checkpoints", "results_row", "selection_summary",
           "stopping_statement", "SelectionError"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def prepare(cfg: Config, build: bool = True) -> Config:
    """Absolute paths (Ray workers run elsewhere), the store (built if synthetic and missing,
    unless `build` is false), and the model geometry taken from the store."""
    from data.store import open_store
    data = replace(cfg.data, store=str(Path(cfg.data.store).resolve()))
    run = replace(cfg.run, run_dir=str(Path(cfg.run.run_dir).resolve()))
    if not build and not (Path(data.store) / "manifest.json").exists():
        if data.synth is None:  # geometry unknown until the store exists
            return replace(cfg, data=data, run=run)
        s = data.synth
        return replace(cfg, data=data, run=run,
                       model=replace(cfg.model, n_classes=s.classes, frames=s.frames, mels=s.mels))
    if not (Path(data.store) / "manifest.json").exists():
        if data.synth is None:
            raise ConfigError(f"data.store {data.store} has no manifest.json and data.synth is null: "
                              "ingest it first (python -m data.ingest) or configure data.synth")
        from data.synth import make_synthetic_store
        print(f"building the synthetic store {data.store} (once; cached for later runs)")
        make_synthetic_store(data.store, data.synth)
    store = open_store(data.store)
    for split in [data.train_split, data.valid_split, *data.eval_splits]:
        store.split_info(split)  # names the missing split
    if build:
        store.validate()
        empty = int((store.class_counts(data.train_split) == 0).sum())
        if empty:
            print(f"warning: {empty} of {store.n_classes} classes have no clip in the training split "
                  f"{data.train_split!r}: they are left out of priors and metrics", file=sys.stderr)
    weights = str(Path(cfg.model.weights).resolve()) if cfg.model.weights and "://" not in cfg.model.weights \
        else cfg.model.weights
    if build and weights and not cfg.model.allow_audioset_weights:
        _refuse_audioset_checkpoint(weights, store)
    model = replace(cfg.model, n_classes=store.n_classes, frames=store.frames, mels=store.mels, weights=weights)
    return replace(cfg, data=data, run=run, model=model)


def _refuse_audioset_checkpoint(weights: str, store) -> None:
    """An AST checkpoint trained on AudioSet, as the start of a sweep on AudioSet's classes, has
    seen the validation clips and was trained balanced: a ConfigError, unless the user confirms
    (model.allow_audioset_weights). Fine-tuning it on other classes is the usual transfer."""
    import re
    from model.ast import is_audioset_checkpoint
    audioset_mids = sum(bool(re.fullmatch(r"/[mgt]/\w+", m)) for m in store.mids)
    if audioset_mids >= store.n_classes / 2 and is_audioset_checkpoint(weights):
        raise ConfigError(
            f"model.weights {weights} is an AST checkpoint trained on AudioSet (527-class head), and the store's "
            f"classes are AudioSet's ({audioset_mids} of {store.n_classes} AudioSet MIDs): that model has seen "
            "the validation clips and was trained balanced, which biases the comparison of betas; start from "
            "ImageNet DeiT weights, or set model.allow_audioset_weights=true to use it anyway")


class SelectionError(RuntimeError):
    """Selection cannot stand behind an answer (a selected checkpoint is missing); the message
    names it."""


def collect_traces(results, train_runs: str) -> tuple[list, list[dict]]:
    """Each trial's validation trace from its checkpoints (the canonical history: it survives
    worker restarts and resumed sweeps), and the failed trials. Each evaluation maps to its
    own checkpoint while that still holds its weights, else to None (pruned): never to a
    neighbour."""
    from sweep.checkpoint import has_weights, list_checkpoints
    from sweep.select import TrialTrace
    traces, failed = [], []
    for r in results:
        beta, lr = float(r.config["beta"]), float(r.config["lr"])
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(os.path.join(train_runs, f"train-{trial_id}")) if trial_id else []
        if r.error or not checkpoints:
            failed.append({"beta": beta, "lr": lr, "trial_id": trial_id, "error": str(r.error)})
        if not checkpoints:
            continue
        history = checkpoints[-1][1]["history"]
        own = {state["examples"]: path for path, state in checkpoints if has_weights(path)}
        traces.append(TrialTrace(trial_id, beta, lr, history["examples"], history["val_dprime"],
                                 history["val_mAP"], [own.get(e) for e in history["examples"]]))
    return traces, failed


def check_selected_checkpoints(per_beta: dict) -> None:
    """Every selected evaluation still has its own checkpoint, or SelectionError naming it."""
    for beta, sel in sorted(per_beta.items()):
        if sel.checkpoint is None:
            raise SelectionError(
                f"the checkpoint of trial {sel.trial_id} (beta={beta:g}, lr={sel.lr:g}) at "
                f"{sel.examples_to_peak:,} examples (evaluation {sel.index + 1}), selected on smoothed "
                "validation d', was not kept; no other checkpoint is substituted")


def _remove_earlier_sweep(storage: str, name: str) -> None:
    """A new sweep starts from empty Tune/Train storage (MLflow keeps the old runs). Removes
    only this sweep's own experiment directories: <storage>/<name> (a Tune experiment) and
    <storage>/train_runs/<name> (its Train runs), after checking they are what they say."""
    import shutil
    import pyarrow.fs as pafs
    for path, looks_right in ((os.path.join(storage, name), _is_tune_experiment),
                              (os.path.join(storage, "train_runs", name), _is_train_runs)):
        if "://" in path:
            fs, base = pafs.FileSystem.from_uri(path)
            if fs.get_file_info(base).type != pafs.FileType.NotFound:
                raise ConfigError(f"{path} holds an earlier sweep: pass --resume to continue it, "
                                  "or choose another run.name")
        elif os.path.exists(path):
            if not looks_right(Path(path)):
                raise ConfigError(f"{path} exists and is not an earlier sweep's Ray storage; "
                                  "refusing to remove it: choose another run.name or storage_path")
            print(f"starting afresh: removing the earlier sweep's Ray storage {path} "
                  "(pass --resume to continue it instead)")
            shutil.rmtree(path)


def _is_tune_experiment(path: Path) -> bool:
    return path.is_dir() and any(p.name.startswith(("experiment_state", "tuner.pkl", "basic-variant-state"))
                                 for p in path.iterdir())


def _is_train_runs(path: Path) -> bool:
    return path.is_dir() and all(p.name.startswith("train-") for p in path.iterdir())


def _evaluate_checkpoint(checkpoint: str, store_dir: str, splits: list[str], batch_size: int) -> dict:
    """One winner on every evaluation split (a Ray task: on a GPU node when trials use GPUs):
    {"examples": examples seen by the checkpoint evaluated, "splits": {split: evaluation}}."""
    import ray.train
    import torch
    from data.store import open_store
    from sweep.checkpoint import load_model, load_state
    from sweep.evaluate import evaluate_split
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with ray.train.Checkpoint(checkpoint).as_directory() as d:  # local, or fetched from s3://
        model, examples = load_model(d, device), load_state(d)["examples"]
    store = open_store(store_dir)
    return {"examples": examples, "splits": {s: evaluate_split(model, store, s, batch_size, device) for s in splits}}


def evaluate_winners(cfg: Config, per_beta: dict) -> list[dict]:
    """Each beta's selected checkpoint on every evaluation split; predictions saved as npz."""
    import ray
    from tqdm import tqdm
    from sweep.evaluate import save_predictions
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.resources.use_gpu else 0)(_evaluate_checkpoint)
    betas = sorted(per_beta)
    futures = {task.remote(per_beta[b].checkpoint, cfg.data.store, cfg.data.eval_splits,
                           cfg.train.eval_batch_size): b for b in betas}
    done = {}
    with tqdm(total=len(futures), desc="evaluating the selected checkpoints", unit="beta") as bar:
        pending = list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[futures[ready[0]]] = ray.get(ready[0])
            bar.update()
    rows = []
    for beta in betas:
        sel, result = per_beta[beta], done[beta]
        if result["examples"] != sel.examples_to_peak:
            raise SelectionError(f"{sel.checkpoint}: holds {result['examples']:,} examples, selection "
                                 f"picked {sel.examples_to_peak:,}")
        for split, res in result["splits"].items():
            save_predictions(Path(cfg.run.run_dir) / "predictions" / f"beta={beta:g}" / f"{split}.npz", res)
        rows.append(results_row(sel, result["examples"], {s: r["metrics"] for s, r in result["splits"].items()}))
    return rows


def results_row(sel, examples_evaluated: int, metrics: dict[str, dict]) -> dict:
    """One beta's row of results.json: its selection (sweep.select.Selection), the examples its
    evaluated checkpoint had seen, and per eval split mAP, AUC and d' (`metrics`: split ->
    sweep.metrics.classification_metrics)."""
    return {**asdict(sel), "examples_evaluated": examples_evaluated,
            "eval": {s: {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"]} for s, m in metrics.items()}}


def _parser() -> argparse.ArgumentParser:
    from data.cli import add_list, parser
    p = parser("python -m sweep.run", __doc__)
    p.add_argument("--config", metavar="YAML", default=None,
                   help="sweep configuration (default: configs/demo.yaml, the embedded demo)")
    add_list(p, "--set", dest="overrides", default=[], metavar="KEY=VALUE",
             help="override config values, e.g. --set train.max_examples=4000 sweep.betas=[0,1]")
    p.add_argument("--run-dir", metavar="DIR", help="where results, predictions and MLflow go")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in the run dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="Tune's own tables and every Ray worker's log lines instead of the progress table")
    return p


class Interrupted(Exception):
    """The sweep was stopped (Ctrl-C or SIGTERM) before every trial finished."""

    def __init__(self, signum: int, missing: list[dict]):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.missing = signum, missing


def _missing_trials(cfg: Config, results, train_runs: str) -> list[dict]:
    """Grid points with no finished trial (no final checkpoint) and no error: what an
    interruption left undone."""
    from sweep.checkpoint import list_checkpoints
    done = set()
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id")
        checkpoints = list_checkpoints(os.path.join(train_runs, f"train-{trial_id}")) if trial_id else []
        if r.error or (checkpoints and checkpoints[-1][1].get("stopped")):
            done.add((float(r.config["beta"]), float(r.config["lr"])))
    return [{"beta": b, "lr": lr} for b in cfg.sweep.betas for lr in cfg.sweep.lrs
            if (float(b), float(lr)) not in done]


class _Signals:
    """Ctrl-C and SIGTERM both stop the sweep the way Tune stops on Ctrl-C (its handler saves the
    experiment and `fit` returns); remembers which signal came."""

    def __init__(self):
        self.received: int | None = None

    def __enter__(self):
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, self._on_term)
        return self

    def _on_term(self, signum, frame):
        self.received = signum
        os.kill(os.getpid(), signal.SIGINT)  # Tune's handler, or KeyboardInterrupt outside fit

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _sweep(cfg: Config, args, client, parent_id: str, storage: str, tracking_info: dict, signals) -> dict:
    """Fit the Tune sweep, select, evaluate the winners; the summary written to results.json."""
    from sweep.select import select_overall, select_per_beta, select_trial
    from sweep.tune import build_tuner
    t0 = time.time()
    train_runs = os.path.join(storage, "train_runs", cfg.run.name)
    results = build_tuner(cfg, storage, train_runs, tracking_info, args.resume, args.verbose).fit()
    missing = _missing_trials(cfg, results, train_runs)
    if missing:  # Tune returns normally after Ctrl-C: half a grid is not an answer
        raise Interrupted(signals.received or signal.SIGINT, missing)
    from sweep import tracking
    tracking.close_running_children(client, tracking_info["experiment_id"], parent_id)
    traces, failed = collect_traces(results, train_runs)
    tracking.fail_children(client, tracking_info["experiment_id"], parent_id, failed)
    if not traces:
        raise RuntimeError(f"every trial failed: {failed}")
    rule = cfg.sweep.rule
    per_beta = select_per_beta(traces, rule)
    unselectable = [{"trial_id": t.trial_id, "beta": t.beta, "lr": t.lr, "evaluations": len(t.dprime)}
                    for t in traces if select_trial(t, rule) is None]
    if not per_beta:
        raise SelectionError(f"no trial has a full {rule.window}-evaluation smoothing window: raise "
                             "train.max_examples or lower sweep.smoothing_window")
    check_selected_checkpoints(per_beta)
    rows = evaluate_winners(cfg, per_beta)
    best = select_overall(per_beta)
    return {"selection": selection_summary(best, per_beta, cfg), "rows": rows, "failed": failed, "unselectable": unselectable,
            "traces": [{"trial_id": t.trial_id, "beta": t.beta, "lr": t.lr,
                        "examples": t.examples.tolist(), "dprime": t.dprime.tolist()} for t in traces],
            "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg),
            "wall_seconds": round(time.time() - t0, 1)}


def _resume_command(argv: list[str]) -> str:
    args = [a for a in argv if a != "--resume"]
    return " ".join(["python -m sweep.run", *args, "--resume"])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    overrides = list(a.overrides) + ([f"run.run_dir={a.run_dir}"] if a.run_dir else [])
    try:
        cfg = load_config(a.config or DEFAULT_CONFIG, overrides)
        if a.print_config:
            print(_printable(prepare(cfg, build=False)))
            line, warning = stopping_statement(cfg)
            print(f"# stopping: {line}")
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            return 0
        return _run(cfg, a, argv)
    except (ConfigError, SelectionError, TrackingError, OSError, ValueError) as e:
        if a.debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _printable(cfg: Config) -> str:
    """The resolved config as YAML, as it will run: the model geometry from the store, and the
    learning rate marked as swept rather than shown as a value that is not used."""
    values = to_dict(cfg)
    values["train"]["optim"]["lr"] = f"swept: sweep.lrs = {cfg.sweep.lrs}"
    return yaml.safe_dump(json.loads(json.dumps(values, default=list)), sort_keys=False)


def stopping_statement(cfg: Config) -> tuple[str, str | None]:
    """How trials stop, in one line, and a warning when the cap leaves few picks that can
    settle (None otherwise): the latest evaluation whose pick can still settle before
    `train.max_examples` (sweep/select.py `latest_settled_pick`)."""
    rule, t = cfg.sweep.rule, cfg.train
    settles = (f"a pick settles after {rule.patience} full-window evaluations without a better one "
               f"and {rule.ratio:g}x its examples ({rule.window}-evaluation window)")
    latest = latest_settled_pick(t.max_examples, t.eval_every_examples, rule)
    cadence = f"evaluations every {t.eval_every_examples:,} examples, cap {t.max_examples:,}"
    if cfg.sweep.train_to_cap:
        line = f"every trial trains to the cap (sweep.train_to_cap); {settles}; {cadence}"
    else:
        line = f"{settles}; {cadence}"
    if latest == 0:
        return line + "; no pick can settle", (
            f"no pick can settle within train.max_examples={t.max_examples:,} at one evaluation every "
            f"{t.eval_every_examples:,}: every trial will be NOT CONVERGED; raise the cap or evaluate more often")
    line += f": picks after {latest:,} examples ({latest / t.max_examples:.0%} of the cap) cannot settle"
    evals = latest // t.eval_every_examples
    if evals < 2 * rule.window or latest < 0.4 * t.max_examples:
        return line, (f"only picks in the first {evals} evaluations ({latest:,} examples) can settle within "
                      f"train.max_examples={t.max_examples:,}: a trial still improving there will be NOT "
                      "CONVERGED; raise the cap or evaluate more often (train.eval_every_examples)")
    return line, None


def _header(cfg: Config, config_path, fingerprint: str, uri: str, experiment: str) -> str:
    """What the sweep is about to run, in a few lines (`--print-config` shows every value)."""
    m, r = cfg.model, cfg.resources
    grid = len(cfg.sweep.betas) * len(cfg.sweep.lrs)
    return "\n".join([
        f"config     {config_path}  (--print-config shows every value)",
        f"store      {cfg.data.store}  train {fingerprint}",
        f"model      AST {m.size} ({m.embed_dim or '-'} wide, {m.depth or '-'} deep), {m.frames} frames x "
        f"{m.mels} mels, {m.n_classes} classes",
        f"grid       beta {cfg.sweep.betas} x lr {cfg.sweep.lrs} = {grid} trials",
        f"stopping   {stopping_statement(cfg)[0]}",
        f"resources  {r.num_workers} worker(s) x {'1 GPU' if r.use_gpu else f'{r.cpus_per_worker:g} CPU'} per trial",
        f"mlflow     {uri}  experiment {experiment!r}",
    ])


def _retire_earlier_answer(run_dir: Path, state_file: Path) -> None:
    """A fresh sweep in a run directory that holds an earlier sweep's answer: move its files to
    previous/<its MLflow parent run id>/ (never delete them), so no file at the top of the run
    directory names a selection this sweep did not make."""
    old = [run_dir / n for n in ("results.json", "results.txt", "interrupted.json") if (run_dir / n).exists()]
    if not old:
        return
    was = json.loads(state_file.read_text()).get("parent_run_id") if state_file.exists() else None
    name = was if isinstance(was, str) and was.isalnum() else time.strftime("%Y%m%d-%H%M%S")  # one path part
    previous = run_dir / "previous" / name
    previous.mkdir(parents=True, exist_ok=True)
    for path in old:
        path.rename(previous / path.name)
    print(f"the earlier sweep's results moved to {previous}")


def _same_config(recorded: dict | None, now: dict, state_file: Path) -> None:
    """--resume continues the sweep it names: the config must be the one it started with."""
    if recorded is None:
        return
    was, new = (flatten(json.loads(json.dumps(c))) for c in (recorded, now))  # tuples as lists
    changed = sorted(k for k in set(was) | set(new) if was.get(k) != new.get(k))
    if changed:
        k = changed[0]
        raise ConfigError(f"--resume: {k} is {new.get(k)!r}, the sweep in {state_file.parent} started with "
                          f"{was.get(k)!r} ({len(changed)} value(s) differ); resume with the same config")


def _open_parent(client, cfg: Config, exp_id: str, fingerprint: str, resume: bool) -> str:
    """The sweep's MLflow parent run: the interrupted one again (`resume`, same config only),
    or a new one, with an earlier sweep's answer in the run directory moved aside first."""
    from sweep import tracking
    run_dir = Path(cfg.run.run_dir)
    state_file = run_dir / "sweep.json"
    if resume and state_file.exists():
        state = json.loads(state_file.read_text())
        _same_config(state.get("config"), to_dict(cfg), state_file)
        client.update_run(state["parent_run_id"], status="RUNNING")
        parent_id = state["parent_run_id"]
    else:
        _retire_earlier_answer(run_dir, state_file)
        parent_id = tracking.start_parent(client, exp_id, cfg.run.name, flatten(to_dict(cfg)),
                                          {"dataset.fingerprint": fingerprint})
        state_file.write_text(json.dumps({"parent_run_id": parent_id, "experiment_id": exp_id,
                                          "config": to_dict(cfg)}))
    (run_dir / "interrupted.json").unlink(missing_ok=True)  # this sweep's own, from before --resume
    return parent_id


def _start_ray(cfg: Config, verbose: bool) -> bool:
    """Start (or join, `run.ray_address`) Ray unless this process already has it; True if this
    call did (and so shuts it down). Worker logs stay in Ray's log directory unless `verbose`."""
    if cfg.run.ray_address is None and not os.environ.get("RAY_ADDRESS"):
        # a Ray started here is single-machine: its servers listen on 127.0.0.1 only (read
        # when Ray is first imported; a Ray on another address is the user's to name)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    if ray.is_initialized():  # tests and notebooks may have started Ray already
        return False
    ray.init(address=cfg.run.ray_address, include_dashboard=True, configure_logging=False, log_to_driver=verbose)
    return True


def _publish(client, cfg: Config, parent_id: str, summary: dict) -> str:
    """Write results.json, results.txt and the report; log them and the selection to the MLflow
    parent and finish it. Returns the Tables 3-4 text."""
    from sweep import tracking
    from sweep.report import build_report
    from sweep.tables import format_results
    run_dir = Path(cfg.run.run_dir)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    table = format_results(summary["rows"], cfg.data.eval_splits)
    (run_dir / "results.txt").write_text(table)
    client.log_artifact(parent_id, str(run_dir / "results.json"))
    client.log_artifact(parent_id, str(run_dir / "results.txt"))
    client.log_artifacts(parent_id, str(build_report(run_dir)), "report")
    best = summary["selection"]
    tracking.log_metrics(client, parent_id, {"best_beta": best["beta"], "best_lr": best["lr"],
                                             "best_val_dprime": best["val_dprime"]}, 0)
    client.set_tag(parent_id, "converged", str(best["all_converged"]).lower())
    client.set_tag(parent_id, "selection", best["status"])
    if best["not_converged"]:
        client.set_tag(parent_id, "not_converged_betas", ", ".join(f"{r['beta']:g}" for r in best["not_converged"]))
    tracking.finish_run(client, parent_id)
    return table


def _answer(summary: dict) -> str:
    """The selection in one line: final when every beta's pick settled, else provisional, with
    the betas that need a higher cap named."""
    best, late = summary["selection"], summary["selection"]["not_converged"]
    head = "selected" if not late else "provisional selection"
    line = (f"{head}: beta={best['beta']:g} lr={best['lr']:g} (smoothed validation d' {best['val_dprime']:.3f} "
            f"after {best['examples_to_peak']:,} examples")
    if late:
        line += "; NOT CONVERGED for " + ", ".join(f"beta {r['beta']:g} (needs train.max_examples >= "
                                                   f"{r['cap_to_settle']:,})" for r in late)
        line += ": the comparison across betas is provisional"
    else:
        line += "; every pick settled"
    return line + f"); {len(summary['failed'])} failed trial(s)"


def selection_summary(best, per_beta: dict, cfg: Config) -> dict:
    """results.json's `selection`: the best pick, and whether the comparison is final (every
    beta's pick settled) or provisional (`not_converged`: the betas whose pick did not, with the
    cap each would need at least)."""
    late = [{"beta": b, "examples_to_peak": s.examples_to_peak,
             "cap_to_settle": cap_to_settle(s.examples_to_peak, cfg.train.eval_every_examples, cfg.sweep.rule)}
            for b, s in sorted(per_beta.items()) if not s.converged]
    return {**asdict(best), "all_converged": not late, "status": "provisional" if late else "final",
            "not_converged": late}


def _run(cfg: Config, a, argv: list[str]) -> int:
    """The sweep, from the MLflow check to the printed answer (see the module docstring)."""
    t0 = time.time()
    from mlflow.tracking import MlflowClient
    from data.store import open_store
    from sweep import tracking
    uri = tracking.tracking_uri(Path(cfg.run.run_dir).resolve())
    tracking.check_reachable(uri)  # before anything is built or trained
    if not a.verbose:  # MLflow's routine INFO lines (database set-up) stay off the console
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    cfg = prepare(cfg)
    fp = open_store(cfg.data.store).fingerprint(cfg.data.train_split)
    experiment = tracking.experiment_name(cfg.run.mlflow_experiment)
    print(_header(cfg, a.config or DEFAULT_CONFIG, fp, uri, experiment))
    warning = stopping_statement(cfg)[1]
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, experiment, run_dir)
    parent_id = _open_parent(client, cfg, exp_id, fp, a.resume)
    owns_ray = _start_ray(cfg, a.verbose)
    storage = cfg.run.storage_path or os.environ.get("SWEEP_STORAGE") or str(run_dir / "ray")
    signals = _Signals()
    try:
        with signals:
            if not a.resume:
                _remove_earlier_sweep(storage, cfg.run.name)
            summary = _sweep(cfg, a, client, parent_id, storage,
                             {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id}, signals)
        summary["wall_seconds"] = round(time.time() - t0, 1)
        table = _publish(client, cfg, parent_id, summary)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signals.received or signal.SIGINT
        missing = e.missing if isinstance(e, Interrupted) else None
        _interrupted(client, exp_id, parent_id, run_dir, signum, missing, _resume_command(argv))
        return 128 + signum
    except BaseException as e:
        tracking.finish_run(client, parent_id, e)
        raise
    finally:
        if owns_ray:
            import ray
            ray.shutdown()
    print(f"{table}\n{_answer(summary)}")
    print(f"results: {run_dir / 'results.json'}  ({time.time() - t0:.0f} s)")
    print("browse every trial in MLflow:\n  " + tracking.ui_command(uri, exp_id))
    return 0


def _interrupted(client, exp_id: str, parent_id: str, run_dir: Path, signum: int,
                 missing: list[dict] | None, resume: str) -> None:
    """No answer after an interruption: the parent and running children end KILLED, a partial
    summary says what is missing, and the resume command is printed."""
    from mlflow.entities import RunStatus
    from sweep import tracking
    tracking.close_running_children(client, exp_id, parent_id)
    client.set_tag(parent_id, "interrupted", signal.Signals(signum).name)
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.KILLED))
    (run_dir / "interrupted.json").write_text(json.dumps(
        {"interrupted": signal.Signals(signum).name, "selection": None,
         "missing": missing if missing is not None else "unknown (stopped outside the trials)",
         "resume": resume}, indent=1))
    print(f"interrupted ({signal.Signals(signum).name}): no beta is selected from a partial sweep"
          + (f"; {len(missing)} trial(s) unfinished" if missing else "")
          + f".\nresume with:\n  {resume}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
