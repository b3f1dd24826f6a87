"""`python -m sweep.report`: the report of a finished sweep's run directory (sweep/report/__init__.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sweep.report
from data.cli import add_list, parser, positive_int, run
from sweep.report import build_report

__all__ = ["main"]


def _parse_extra(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--extra {item!r}: expected NAME=PATH")
        if not Path(path).exists():
            raise argparse.ArgumentTypeError(f"--extra {item!r}: {path} does not exist")
        out[name] = path
    return out


def main(argv=None) -> int:
    p = parser("python -m sweep.report", sweep.report.__doc__)
    p.add_argument("--run-dir", required=True, help="a finished sweep's run directory")
    p.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples (default 1000)")
    add_list(p, "--extra", default=(), metavar="NAME=PATH",
             help="extra models' predictions (each a dir of <split>.npz, or one .npz), e.g. AST=runs/ast_preds")
    p.add_argument("--json", action="store_true", help="print the paths written as JSON")
    return run(lambda a: _main(p, a), p, argv)


def _main(p, a) -> int:
    try:
        extras = _parse_extra(a.extra)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if not (Path(a.run_dir) / "results.json").is_file():
        raise FileNotFoundError(f"{a.run_dir}: no results.json (not a finished sweep's run directory)")
    out = build_report(a.run_dir, a.resamples, extras)
    tables = json.loads((out / "tables.json").read_text())
    written = {"report_dir": str(out), "report": str(out / "report.md"), "tables": str(out / "tables.json"),
               "figures": [str(out / f) for f in tables["figures"]],
               "per_class": [str(out / f) for f in tables["per_class"]]}
    print(json.dumps(written, indent=1) if a.json else
          f"report written to {written['report']}\n  tables.json, {len(written['figures'])} figure(s), "
          f"{len(written['per_class'])} per-class CSV(s) beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
