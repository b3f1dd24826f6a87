"""Run a balancing sweep: beta x learning rate on Ray Tune, selected on validation d', in MLflow.

    python -m sweep.run                                   # the embedded demo, CPU, minutes
    python -m sweep.run --config configs/audioset.yaml    # paper scale, on a `ray up` cluster
    python -m sweep.run --set sweep.betas=[0,1] train.max_examples=8000
    python -m sweep.run --resume                          # continue an interrupted sweep
    python -m sweep.run --resume --set train.max_examples=300000   # continue it to a higher cap
    python -m sweep.run --print-config                    # what would run, and how trials stop

Steps (sweep/driver.py): build the synthetic store if the config asks for one and it is
missing; open the MLflow parent run; fit the Tune sweep (one TorchTrainer per trial); select
per beta the learning rate and checkpoint with the best smoothed validation d' (paper 3.2);
evaluate each winner on every evaluation split; write <run_dir>/results.json, results.txt,
report/ and predictions/<scheme>-beta=<b>/seed=<s>/<split>.npz; print the paper's Table 3/4
layout, how sure the selection is, and, while an arm is unsettled, the command that continues
the sweep to the cap it needs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from data.cli import add_list, parser, run
from sweep import environment
from sweep.config import Config, load_config, to_dict

__all__ = ["main", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _parser():
    p = parser("python -m sweep.run", __doc__)
    p.add_argument("--config", metavar="YAML", default=str(DEFAULT_CONFIG),
                   help="sweep configuration (default: configs/demo.yaml, the embedded demo)")
    add_list(p, "--set", dest="overrides", default=[], metavar="KEY=VALUE",
             help="override config values, e.g. --set train.max_examples=4000 sweep.betas=[0,1]")
    p.add_argument("--run-dir", metavar="DIR", help="where results, predictions and MLflow go (run.run_dir)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in the run dir: an interrupted one, "
                   "or, with a higher --set train.max_examples, its unsettled trials to that cap")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="Tune's own tables and every Ray worker's log lines instead of the progress table")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(lambda a: _main(a, argv), _parser(), argv)


def _main(a, argv: list[str]) -> int:
    cfg = load_config(a.config, list(a.overrides) + ([f"run.run_dir={a.run_dir}"] if a.run_dir else []))
    if a.print_config:
        return _print_config(cfg)
    environment.single_machine(cfg.run.ray_address)  # before Ray is first imported, just below
    from sweep.driver import run_sweep
    return run_sweep(cfg, a.config, argv, resume=a.resume, verbose=a.verbose)


def _print_config(cfg: Config) -> int:
    """The resolved config as YAML, as it will run (the model geometry from the store, the
    learning rate marked as swept), the model and its parameter count, and how trials stop; the
    store must exist or be synthetic."""
    from sweep.console import model_line, racing_statement, stopping_statement
    from sweep.prepare import prepare
    prepared = prepare(cfg, build=False)
    values = to_dict(prepared)
    values["train"]["optim"]["lr"] = f"swept: sweep.lrs = {cfg.sweep.lrs}"
    print(yaml.safe_dump(json.loads(json.dumps(values, default=list)), sort_keys=False), end="")
    print(f"# model: {model_line(prepared.model)}")
    line, warning = stopping_statement(cfg)
    print(f"# stopping: {line}")
    print(f"# racing: {racing_statement(cfg)}")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
