"""Time the imbalance statistics on the full AudioSet train labels (2,063,949 clips).

    python bench/balance_stats.py [--audioset ../shared/audioset]

Prints JSON: seconds to parse the balanced + unbalanced segment CSVs, and seconds for the
Table 1 row plus the 7 betas of Table 2 (oversampling factors, oversampled counts, Gini).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from data.labels import read_class_index, read_segments
from data.stats import PAPER_BETAS, partition_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audioset", default=str(Path(__file__).resolve().parents[2] / "shared" / "audioset"))
    a = p.parse_args()
    root = Path(a.audioset)
    t0 = time.perf_counter()
    ci = read_class_index(root / "class_labels_indices.csv")
    seg = read_segments([root / "balanced_train_segments.csv", root / "unbalanced_train_segments.csv.gz"], ci)
    t1 = time.perf_counter()
    stats = partition_stats(seg.labels, len(ci), PAPER_BETAS)
    t2 = time.perf_counter()
    print(json.dumps({"clips": stats["clips"], "betas": list(PAPER_BETAS),
                      "parse_seconds": round(t1 - t0, 2), "stats_seconds": round(t2 - t1, 2),
                      "stats_over_parse": round((t2 - t1) / (t1 - t0), 3),
                      "imbalance_ratio": round(stats["imbalance_ratio"], 1), "gini": round(stats["gini"], 3),
                      "gini_per_beta": [round(r["gini"], 3) for r in stats["oversampled"]]}, indent=1))


if __name__ == "__main__":
    main()
