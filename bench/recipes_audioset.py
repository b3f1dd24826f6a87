"""Each balancing recipe's stream at AudioSet scale, from the labels alone (no store, no Ray).

    python bench/recipes_audioset.py                          # the five recipes of the field at beta 1
    python bench/recipes_audioset.py --recipes ast passt --betas 0.5 1 --budget 10000000

Reads the 2,063,949 published training clips (balanced + unbalanced segment CSVs, from
--audioset) once, puts them in rarest-label order in row groups of data.shards.ROW_GROUP_ROWS
rows (as a store's training split is written), and prints JSON, per recipe and beta:
- index_s, index_bytes: building the stream's index (`data.stream.recipe_index`: the recipe's
  weights and how its epochs are drawn) and its pickled size (what the readers get, once);
- plan_s, plan_examples: planning a --budget-example run (`plan_blocks`);
- epoch_draw_s: drawing one epoch (`EpochDraw.counts`, what a reader does once per epoch;
  repeats draw nothing), and first_block_s: the rows of the run's first block, in order (a
  drawn recipe's reader draws its epoch first: included);
- exposure: `data.audit.exposure_audit` of epoch 0 (per-class lists left out): the expected
  and realised exposure Gini, the largest relative difference of the two over classes with
  >= 100 expected draws, the largest draws of one clip realised and expected;
- mixing: `data.audit.mixing_audit` of the first --mix-examples examples as 8 Train workers of
  128 rows each get them (blocks of `default_units_per_block(128)` units): distinct classes per
  worker batch and class-mix distance against a random order of the same rows, and the
  duplicates per batch against it;
and the seconds the labels took to read.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audioset_labels import AUDIOSET, SEGMENTS  # noqa: E402
from data.audit import exposure_audit, mixing_audit  # noqa: E402
from data.balance import rarest_label_order  # noqa: E402
from data.cli import add_list  # noqa: E402
from data.draws import epoch_draw  # noqa: E402
from data.labels import read_class_index, read_segments  # noqa: E402
from data.shards import ROW_GROUP_ROWS, RowGroups  # noqa: E402
from data.stream import DrawIndex, StreamPlan, block_rows, default_units_per_block, recipe_index  # noqa: E402

FIELD = ["moore", "ast", "audiomae", "passt", "panns"]
MIXING_KEYS = ("distinct_classes_ratio", "class_mix_ratio", "duplicates_per_batch", "duplicates_per_batch_ideal")


def measure(labels, groups: RowGroups, n_classes: int, recipe: str, beta: float, budget: int, mix_examples: int,
            seed: int) -> dict:
    """One recipe at one beta: the timings, sizes, exposure and mixing of the module docstring."""
    units = default_units_per_block(128)
    t0 = time.perf_counter()
    index = recipe_index(labels, groups, n_classes, recipe, beta)
    t1 = time.perf_counter()
    plan = StreamPlan(index, *index.plan_blocks(seed, 0, budget, 0, units), seed, 0, units, n_classes)
    t2 = time.perf_counter()
    counts = index.counts(seed, 0)
    t3 = time.perf_counter()
    block_rows(plan, 0)
    t4 = time.perf_counter()
    draw = index.draw if isinstance(index, DrawIndex) else epoch_draw(labels, n_classes, recipe, beta)
    exposure = {k: v for k, v in exposure_audit(labels, n_classes, draw, counts).items()
                if not isinstance(v, list)}
    mixing = mixing_audit(plan, labels, batch_size=8 * 128, workers=8, max_examples=mix_examples, seed=seed)
    return {"recipe": recipe, "beta": beta, "draw": draw.draw, "index_s": round(t1 - t0, 3),
            "index_bytes": len(pickle.dumps(index, protocol=5)), "plan_s": round(t2 - t1, 3),
            "plan_examples": plan.examples, "epoch_draw_s": round(t3 - t2, 3), "first_block_s": round(t4 - t3, 3),
            "exposure": exposure, "mixing": {k: mixing[k] for k in MIXING_KEYS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--audioset", default=str(AUDIOSET), help="the AudioSet label files")
    add_list(p, "--recipes", default=FIELD, metavar="NAME", help="recipes (data/balance.py RECIPES; NAME@E)")
    add_list(p, "--betas", type=float, default=[1.0])
    p.add_argument("--budget", type=int, default=100_000_000, help="the planned run's examples")
    p.add_argument("--mix-examples", type=int, default=1_000_000, help="examples audited for mixing")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    index = read_class_index(Path(a.audioset) / "class_labels_indices.csv")
    labels = read_segments([Path(a.audioset) / s for s in SEGMENTS], index).labels
    labels = labels.take(rarest_label_order(labels, len(index)))
    n = len(labels)
    groups = RowGroups.from_sizes(["unread"], [[ROW_GROUP_ROWS] * (n // ROW_GROUP_ROWS)
                                               + [n % ROW_GROUP_ROWS] * (n % ROW_GROUP_ROWS > 0)])
    out = {"clips": n, "read_s": round(time.perf_counter() - t0, 3), "budget": a.budget,
           "rows": [measure(labels, groups, len(index), r, b, a.budget, a.mix_examples, a.seed)
                    for r in a.recipes for b in a.betas]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
