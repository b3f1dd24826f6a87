"""Run a balancing sweep: beta x learning rate on Ray Tune, selected on validation d', in MLflow.

    python -m sweep.run                                   # the embedded demo, CPU, minutes
    python -m sweep.run --config configs/audioset.yaml    # paper scale, on a `ray up` cluster
    python -m sweep.run --set sweep.betas=[0,1] --set train.examples=8000
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
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from sweep.config import Config, ConfigError, flatten, load_config, to_dict

__all__ = ["main", "prepare", "collect_traces", "format_results"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def prepare(cfg: Config) -> Config:
    """Absolute paths (Ray workers run elsewhere), the store (built if synthetic and missing),
    and the model geometry taken from the store."""
    from data.store import open_store
    data = replace(cfg.data, store=str(Path(cfg.data.store).resolve()))
    run = replace(cfg.run, run_dir=str(Path(cfg.run.run_dir).resolve()))
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
    store.validate()
    weights = str(Path(cfg.model.weights).resolve()) if cfg.model.weights and "://" not in cfg.model.weights \
        else cfg.model.weights
    model = replace(cfg.model, n_classes=store.n_classes, frames=store.frames, mels=store.mels, weights=weights)
    return replace(cfg, data=data, run=run, model=model)


def collect_traces(results, train_runs: str) -> tuple[list, list[dict]]:
    """Each trial's validation trace from its checkpoints (the canonical history: it survives
    worker restarts and resumed sweeps), and the failed trials. An evaluation whose
    checkpoint was not kept (train.keep_checkpoints) maps to the nearest kept one."""
    import numpy as np
    from sweep.evaluate import list_checkpoints
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
        kept = np.array([state["examples"] for _, state in checkpoints])
        nearest = [checkpoints[int(np.abs(kept - e).argmin())][0] for e in history["examples"]]
        traces.append(TrialTrace(trial_id, beta, lr, np.asarray(history["examples"], np.int64),
                                 np.asarray(history["val_dprime"], float), nearest))
    return traces, failed


def _fresh_storage(storage: str, name: str) -> None:
    """A new sweep starts from empty Tune/Train storage (MLflow keeps the old runs)."""
    import shutil
    import pyarrow.fs as pafs
    for path in (os.path.join(storage, name), os.path.join(storage, "train_runs")):
        if "://" in path:
            fs, base = pafs.FileSystem.from_uri(path)
            if fs.get_file_info(base).type != pafs.FileType.NotFound:
                raise ConfigError(f"{path} holds an earlier sweep: pass --resume to continue it, "
                                  "or choose another run.name")
        elif os.path.exists(path):
            print(f"starting afresh: removing the earlier sweep's Ray storage {path} "
                  "(pass --resume to continue it instead)")
            shutil.rmtree(path)


def _evaluate_checkpoint(checkpoint: str, store_dir: str, splits: list[str], batch_size: int) -> dict:
    """One winner on every evaluation split (a Ray task: on a GPU node when trials use GPUs)."""
    import ray.train
    import torch
    from data.store import open_store
    from sweep.evaluate import evaluate_split, load_model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with ray.train.Checkpoint(checkpoint).as_directory() as d:  # local, or fetched from s3://
        model = load_model(d, device)
    store = open_store(store_dir)
    return {s: evaluate_split(model, store, s, batch_size, device) for s in splits}


def evaluate_winners(cfg: Config, per_beta: dict) -> list[dict]:
    """Each beta's selected checkpoint on every evaluation split; predictions saved as npz."""
    import ray
    from sweep.evaluate import save_predictions
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.resources.use_gpu else 0)(_evaluate_checkpoint)
    betas = sorted(per_beta)
    futures = [task.remote(per_beta[b].checkpoint, cfg.data.store, cfg.data.eval_splits,
                           cfg.train.eval_batch_size) for b in betas]
    rows = []
    for beta, results in zip(betas, ray.get(futures)):
        sel = per_beta[beta]
        row = {"beta": beta, "lr": sel.lr, "trial_id": sel.trial_id, "checkpoint": sel.checkpoint,
               "val_dprime": sel.val_dprime, "val_dprime_raw": sel.val_dprime_raw,
               "examples_to_peak": sel.examples_to_peak, "eval": {}}
        for split, res in results.items():
            save_predictions(Path(cfg.run.run_dir) / "predictions" / f"beta={beta:g}" / f"{split}.npz", res)
            m = res["metrics"]
            row["eval"][split] = {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"]}
        rows.append(row)
    return rows


def format_results(rows: list[dict], splits: list[str]) -> str:
    """The paper's Tables 3 (d') and 4 (mAP): per beta, absolute and relative to beta = 0."""
    base = next((r for r in rows if r["beta"] == 0), None)
    out = []
    for title, key in (("Table 3: d'", "dprime"), ("Table 4: mAP", "mAP")):
        head = "".join(f"{s:>24}" for s in splits)
        out += [title + " (absolute, change vs beta = 0)", f"{'beta':>6} {'lr':>9}{head}"]
        for r in rows:
            cells = ""
            for s in splits:
                v = r["eval"][s][key]
                rel = f"{v - base['eval'][s][key]:+.3f}" if base else "n/a"
                cells += f"{v:>15.3f} ({rel})"
            out.append(f"{r['beta']:>6g} {r['lr']:>9.2g}{cells}")
        out.append("")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweep.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", default=None,
                   help="sweep configuration (default: configs/demo.yaml, the embedded demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.examples=4000 (repeatable)")
    p.add_argument("--run-dir", metavar="DIR", help="where results, predictions and MLflow go")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in the run dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    overrides = list(a.overrides) + ([f"run.run_dir={a.run_dir}"] if a.run_dir else [])
    try:
        cfg = load_config(a.config or DEFAULT_CONFIG, overrides)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    t0 = time.time()
    cfg = prepare(cfg)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    from mlflow.tracking import MlflowClient
    from sweep import tracking
    uri = tracking.tracking_uri(run_dir)
    tracking.check_reachable(uri)
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, cfg.run.mlflow_experiment, run_dir)
    state_file = run_dir / "sweep.json"
    if a.resume and state_file.exists():
        parent_id = json.loads(state_file.read_text())["parent_run_id"]
        client.update_run(parent_id, status="RUNNING")
    else:
        from data.store import open_store
        fp = open_store(cfg.data.store).fingerprint(cfg.data.train_split)
        parent_id = tracking.start_parent(client, exp_id, cfg.run.name, flatten(to_dict(cfg)),
                                          {"dataset.fingerprint": fp})
        state_file.write_text(json.dumps({"parent_run_id": parent_id, "experiment_id": exp_id}))

    import ray
    from sweep.tune import build_tuner
    owns_ray = not ray.is_initialized()  # tests and notebooks may have started Ray already
    if owns_ray:
        ray.init(address=cfg.run.ray_address, include_dashboard=True, configure_logging=False)
    storage = cfg.run.storage_path or os.environ.get("SWEEP_STORAGE") or str(run_dir / "ray")
    if not a.resume:
        _fresh_storage(storage, cfg.run.name)
    tracking_info = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id}
    try:
        results = build_tuner(cfg, storage, tracking_info, a.resume).fit()
        tracking.close_running_children(client, exp_id, parent_id)
        from sweep.select import select_overall, select_per_beta
        traces, failed = collect_traces(results, os.path.join(storage, "train_runs"))
        if not traces:
            raise RuntimeError(f"every trial failed: {failed}")
        per_beta = select_per_beta(traces, cfg.sweep.smoothing_window)
        rows = evaluate_winners(cfg, per_beta)
        best = select_overall(per_beta)
        summary = {"selection": {**asdict(best)}, "rows": rows, "failed": failed,
                   "traces": [{"trial_id": t.trial_id, "beta": t.beta, "lr": t.lr,
                               "examples": t.examples.tolist(), "dprime": t.dprime.tolist()} for t in traces],
                   "eval_splits": cfg.data.eval_splits, "config": to_dict(cfg),
                   "wall_seconds": round(time.time() - t0, 1)}
        (run_dir / "results.json").write_text(json.dumps(summary, indent=1, default=float))
        table = format_results(rows, cfg.data.eval_splits)
        (run_dir / "results.txt").write_text(table)
        client.log_artifact(parent_id, str(run_dir / "results.json"))
        client.log_artifact(parent_id, str(run_dir / "results.txt"))
        from sweep.report import build_report
        client.log_artifacts(parent_id, str(build_report(run_dir)), "report")
        tracking.log_metrics(client, parent_id, {"best_beta": best.beta, "best_lr": best.lr,
                                                 "best_val_dprime": best.val_dprime}, 0)
        tracking.finish_run(client, parent_id)
    except BaseException as e:
        tracking.finish_run(client, parent_id, e)
        raise
    finally:
        if owns_ray:
            ray.shutdown()
    print(table)
    print(f"selected: beta={best.beta:g} lr={best.lr:g} (smoothed validation d' {best.val_dprime:.3f} "
          f"after {best.examples_to_peak:,} examples); {len(failed)} failed trial(s)")
    print(f"results: {run_dir / 'results.json'}  ({time.time() - t0:.0f} s)")
    print("browse every trial in MLflow:\n  " + tracking.ui_command(uri, exp_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
