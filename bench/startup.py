"""Benchmark a trial's start-up: the smoke sweep with its trial drivers reused, against the same
sweep with a new driver process for every trial (`resources.reuse_actors=false`).

    python bench/startup.py                   # ~12 min on 2 cores: 2 rounds x 2 sweeps of 4 trials
    python bench/startup.py --rounds 1 --betas 0 1

Prints JSON. Each sweep is `python -m sweep.run --config configs/smoke.yaml` on its own local
Ray, the two settings alternating round by round on one store, so that load from other
processes hits both alike. Per sweep: the wall time; each trial's start-up phases as its MLflow
child run logged them (`startup.<phase>_s`, sweep/train.py: driver, workers, import, model,
first_batch, total); the gaps between one trial's end and the next one's start (trials run one
at a time on 2 cores); and the number of trial-driver processes (Tune's `pid`). Per setting,
the medians over rounds; the ratio of wall times, reused / not, per round and its median.
A smoke trial trains for about a second: its time is nearly all start-up.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"reused": "resources.reuse_actors=true", "new_each_trial": "resources.reuse_actors=false"}


def run_sweep(run_dir: Path, store: Path, betas: list[float], setting: str) -> float:
    """One smoke sweep (racing off: every trial runs); its wall time in seconds."""
    args = [sys.executable, "-m", "sweep.run", "--config", str(ROOT / "configs" / "smoke.yaml"),
            "--run-dir", str(run_dir), "--set", f"data.store={store}", f"sweep.betas={betas}",
            "sweep.racing=false", "resources.max_concurrent_trials=1", setting]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}  # its own
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep in {run_dir} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def trials_of(run_dir: Path) -> dict:
    """Start-up phases (mean over trials), gaps between trials, trial-driver processes."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = json.loads((run_dir / "sweep.json").read_text())["parent_run_id"]
    runs = sorted(client.search_runs([client.get_run(parent).info.experiment_id],
                                     f"tags.`mlflow.parentRunId` = '{parent}'"), key=lambda r: r.info.start_time)
    phases = {k[len("startup."):-len("_s")]: round(statistics.mean(r.data.metrics[k] for r in runs), 2)
              for k in runs[0].data.metrics if k.startswith("startup.")}
    gaps = [round((b.info.start_time - a.info.end_time) / 1000, 2) for a, b in zip(runs, runs[1:])]
    progress = list((run_dir / "ray").glob("*/trial_driver_*/progress.csv"))  # Tune's, one per trial
    pids = {row["pid"] for path in progress for row in csv.DictReader(path.read_text().splitlines())}
    return {"trials": len(runs), "startup_s": phases, "gaps_s": gaps, "driver_processes": len(pids)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0], help="one trial each")
    args = p.parse_args()
    from data.synth import make_synthetic_store
    from sweep.config import load_config
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        make_synthetic_store(store, load_config(ROOT / "configs" / "smoke.yaml").data.synth)
        sweeps = []
        for r in range(args.rounds):
            for name, setting in SETTINGS.items():
                run_dir = Path(tmp) / f"{name}-{r}"
                wall = run_sweep(run_dir, store, args.betas, setting)
                sweeps.append({"setting": name, "round": r, "wall_s": round(wall, 1), **trials_of(run_dir)})
                print(json.dumps(sweeps[-1]), file=sys.stderr, flush=True)

    def median(name: str, get) -> float:
        return round(statistics.median(get(s) for s in sweeps if s["setting"] == name), 2)
    summary = {name: {"wall_s": median(name, lambda s: s["wall_s"]),
                      "gap_s": median(name, lambda s: statistics.median(s["gaps_s"] or [0.0])),
                      **{f"startup.{k}_s": median(name, lambda s, k=k: s["startup_s"][k]) for k in sweeps[0]["startup_s"]}}
               for name in SETTINGS}
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(sweeps[::2], sweeps[1::2])]
    print(json.dumps({"trials_per_sweep": len(args.betas), "rounds": args.rounds, "sweeps": sweeps, "median": summary,
                      "wall_ratio_reused_to_new": [round(x, 3) for x in ratios],
                      "median_wall_ratio": round(statistics.median(ratios), 3)}, indent=1))


if __name__ == "__main__":
    main()
