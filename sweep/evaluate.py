"""Evaluation of trial checkpoints (sweep/checkpoint.py) and published AST weights on store
splits, and re-scoring of saved predictions under another class prior.

    python -m sweep.evaluate --predictions P.npz --target-prior {train|uniform|<split>|file.csv} [--store DIR] [--json]
    python -m sweep.evaluate --checkpoint PATH --store DIR --split NAME [NAME ...] [--out DIR|F.npz] [--json]

The first re-scores saved predictions under another class prior (AP moves, d' does not); the
second evaluates a trial checkpoint directory or a published AST AudioSet .pth on store splits,
writing the metrics (as results.json rows hold them) and predictions (as the sweep saves them).
Both print a short summary (`--json`: the result as one JSON document).
"""
from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.balance import priors_from_counts
from data.store import Store
from model.ast import ASTConfig, create_ast, load_ast_checkpoint
from model.step import predict
from sweep.checkpoint import load_state, load_weights
from sweep.metrics import classification_metrics

__all__ = ["load_model", "load_any_checkpoint", "score_split", "with_metrics", "evaluate_split", "load_predictions",
           "save_predictions", "target_prior", "rescore", "format_eval", "format_rescore", "main"]


def score_split(model, store: Store, split: str, batch_size: int, device: str | torch.device = "cpu",
                rank: int = 0, world: int = 1, desc: str | None = None) -> dict:
    """Scores of `model` on one worker's share of a split (batches rank, rank + world, ...,
    batches small enough that every rank gets one): {scores [n, K], targets [n, K],
    clip_ids [n]}; world = 1 scores the whole split. desc: a tqdm progress bar over the share's
    batches with that label (on stderr, when it is a terminal)."""
    clip_ids: list[np.ndarray] = []
    clips = store.split_info(split)["clips"]
    batch_size = max(1, min(batch_size, -(-clips // world)))

    def batches(bar):
        for i, b in enumerate(store.iter_batches(split, batch_size)):
            if i % world == rank:
                clip_ids.append(b["clip_id"])
                yield torch.from_numpy(np.array(b["mel"])), torch.from_numpy(b["target"])  # writable copy
                bar.update()

    with tqdm(total=len(range(rank, -(-clips // batch_size), world)), desc=desc, unit="batch", leave=False,
              disable=True if desc is None else None) as bar:
        share = batches(bar)
        first = next(share, None)
        if first is None:  # more ranks than clips
            empty = np.zeros((0, store.n_classes), dtype=np.float32)
            return {"scores": empty, "targets": empty, "clip_ids": np.zeros(0, dtype=str)}
        scores, targets = predict(model, itertools.chain([first], share), device)
    return {"scores": scores, "targets": targets, "clip_ids": np.concatenate(clip_ids).astype(str)}


def with_metrics(parts: list[dict]) -> dict:
    """Shares of a split (score_split) joined, with their metrics (classification_metrics)."""
    joined = {k: np.concatenate([p[k] for p in parts if len(p["clip_ids"])]) for k in ("scores", "targets", "clip_ids")}
    return {**joined, "metrics": classification_metrics(joined["targets"], joined["scores"])}


def evaluate_split(model, store: Store, split: str, batch_size: int,
                   device: str | torch.device = "cpu") -> dict:
    """Scores of `model` on a whole split: {scores [N, K], targets [N, K], clip_ids [N],
    metrics (classification_metrics)}, with a progress bar on a terminal."""
    return with_metrics([score_split(model, store, split, batch_size, device, desc=f"score {split}")])


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions .npz (scores, targets, clip_ids); a file that cannot be read
    (cut short, not an npz) is a ValueError naming it."""
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable predictions file ({type(e).__name__}: {e})") from e


def save_predictions(path: str | Path, result: dict) -> None:
    """`path`.npz with scores, targets, clip_ids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, scores=result["scores"], targets=result["targets"],
                        clip_ids=result["clip_ids"])


def target_prior(spec: str, targets: np.ndarray, store: Store | None, train_split: str = "train") -> np.ndarray:
    """A class prior [K] named on the command line: `train` (the store's training split), `uniform`
    (every class at the set's mean prior, so the expected labels per clip stay the same), a store
    split's name, or a CSV file with a `prior` column, one row per class in class order (or in any
    order with an `index` column)."""
    k = targets.shape[1]
    if spec == "uniform":
        return np.full(k, _own_priors(targets).mean())
    if spec.endswith(".csv"):
        import csv
        with open(spec, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "prior" not in rows[0]:
            raise ValueError(f"{spec}: expected a CSV with a 'prior' column, one row per class")
        try:
            values = [float(r["prior"]) for r in rows]
            index = [int(r["index"]) for r in rows] if "index" in rows[0] else list(range(len(rows)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{spec}: {e}") from None
        if sorted(index) != list(range(len(rows))):
            raise ValueError(f"{spec}: the 'index' column must hold 0..{len(rows) - 1} once each")
        prior = np.empty(len(rows))
        prior[index] = values
    else:
        if store is None:
            raise ValueError(f"--target-prior {spec} needs --store (or give uniform or a .csv file)")
        split = train_split if spec == "train" else spec
        prior = store.priors(split)
    if prior.shape != (k,):
        raise ValueError(f"target prior {spec}: {prior.size} classes, the predictions {k}")
    bad = ~(np.isfinite(prior) & (prior >= 0) & (prior <= 1))
    if bad.any():
        raise ValueError(f"target prior {spec}: class {int(np.flatnonzero(bad)[0])} has prior "
                         f"{prior[bad][0]!r}, not in [0, 1]")
    return prior


def _own_priors(targets: np.ndarray) -> np.ndarray:
    """The class priors of 0/1 targets [clips, classes], float64 [classes]."""
    return priors_from_counts(np.count_nonzero(targets, axis=0), len(targets))


def rescore(predictions: str | Path, spec: str, store: Store | None = None, train_split: str = "train") -> dict:
    """Saved predictions re-scored under the class prior `spec` (see target_prior): per-class AP
    with the negatives of class k weighted to make its prior pi'_k (sweep.bootstrap.prior_shift_metrics),
    its mAP, d' and macro AUC (unchanged by design: they do not depend on the prior), and per class
    the effective sample size of the weighted set. Classes whose own or target prior is 0 or 1
    have no shifted AP and are listed in `excluded`."""
    from sweep.bootstrap import prior_shift_metrics
    f = load_predictions(predictions)
    scores, targets = f["scores"], f["targets"]
    prior = target_prior(spec, targets, store, train_split)
    own = classification_metrics(targets, scores)
    shifted = prior_shift_metrics(targets, scores, prior)
    names = store.classes if store is not None and store.n_classes == targets.shape[1] \
        else [str(i) for i in range(targets.shape[1])]
    nan = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731 (strict JSON: no NaN)
    own_prior = _own_priors(targets)
    return {"predictions": str(predictions), "target_prior": spec, "clips": int(targets.shape[0]),
            "classes": int(targets.shape[1]), "mAP_own_prior": own["mAP"], "mAP_target_prior": nan(shifted["mAP"]),
            "dprime": nan(own["dprime"]), "AUC": own["mAUC"],
            "ess_min": nan(np.nanmin(shifted["ess"])) if np.isfinite(shifted["ess"]).any() else None,
            "excluded": [names[i] for i in np.flatnonzero(~np.isfinite(shifted["ap"]))],
            "per_class": [{"class": names[i], "prior_own": nan(own_prior[i]), "prior_target": nan(prior[i]),
                           "ap_own_prior": nan(own["ap"][i]), "ap_target_prior": nan(shifted["ap"][i]),
                           "ess": nan(shifted["ess"][i])} for i in range(targets.shape[1])]}


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the AST a trial checkpoint holds, from its state.json's model config and its
    model.pt (no other weights file is read), in eval mode."""
    weights = load_weights(directory)
    model = create_ast(ASTConfig(**{**load_state(directory)["model"], "weights": None}))
    model.load_state_dict(weights)
    return model.to(device).eval()


def load_any_checkpoint(path: str | Path, store: Store, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, str]:
    """A trial checkpoint directory (model.pt + state.json) or a published AST AudioSet .pth, as a
    model for `store`'s spectrograms; returns (model, "trial" | "published"). A model whose input
    geometry or class count does not fit the store is an error, not a silently random classifier."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file() or not (path / "state.json").is_file():
            raise FileNotFoundError(f"{path}: a trial checkpoint holds model.pt and state.json")
        cfg = load_state(path)["model"]
        got = {"frames": cfg["frames"], "mels": cfg["mels"], "n_classes": cfg["n_classes"]}
        want = {"frames": store.frames, "mels": store.mels, "n_classes": store.n_classes}
        if got != want:
            raise ValueError(f"{path}: the checkpoint's model takes {got}, the store {store.root} has {want}")
        return load_model(path, device), "trial"
    model = load_ast_checkpoint(path, frames=store.frames, mels=store.mels)
    if model.n_classes != store.n_classes:
        raise ValueError(f"{path}: {model.n_classes} classes, the store {store.root} {store.n_classes}; "
                         "its classifier does not fit this store's classes")
    return model.to(device).eval(), "published"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def format_eval(out: dict) -> str:
    """The checkpoint evaluation, readable: metrics per split, where the predictions went."""
    lines = [f"{out['checkpoint']} ({out['kind']}) on {out['store']}:"]
    for s, m in out["eval"].items():
        excluded = f", {len(m['excluded'])} class(es) without positives left out" if m["excluded"] else ""
        lines.append(f"  {s}: mAP {m['mAP']:.4f}  AUC {m['AUC']:.4f}  d' {m['dprime']:.3f}  "
                     f"({m['clips']:,} clips{excluded})")
    if out["predictions"]:
        lines.append(f"predictions: {', '.join(out['predictions'].values())}")
    return "\n".join(lines)


def format_rescore(r: dict) -> str:
    """The re-scored predictions (rescore), readable."""
    shifted = "n/a" if r["mAP_target_prior"] is None else f"{r['mAP_target_prior']:.4f}"
    dprime = "n/a" if r["dprime"] is None else f"{r['dprime']:.3f}"
    lines = [f"{r['predictions']} ({r['clips']:,} clips, {r['classes']} classes) under the prior {r['target_prior']}:",
             f"  mAP {r['mAP_own_prior']:.4f} under its own prior, {shifted} under the target prior; "
             f"d' {dprime} and AUC {r['AUC']:.4f} do not depend on it"]
    if r["ess_min"] is not None:
        lines.append(f"  smallest effective sample size of a class: {r['ess_min']:.1f}")
    if r["excluded"]:
        lines.append(f"  without a shifted AP (prior 0 or 1): {', '.join(r['excluded'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from data.cli import add_list, add_store, parser, run
    p = parser("python -m sweep.evaluate", description=(
        "Evaluate a checkpoint on store splits, or re-score saved predictions under another class "
        "prior (AP changes with the prior, AUC and d' do not). Prints a summary; --json prints "
        "JSON."), epilog=(
        "examples:\n"
        "  python -m sweep.evaluate --predictions runs/demo/predictions/beta=0/seed=0/eval_public.npz "
        "--target-prior eval_internal --store runs/demo/store\n"
        "  python -m sweep.evaluate --checkpoint audioset_10_10_0.4593.pth --store DIR "
        "--split eval_public eval_internal --out runs/ast_preds\n"
        "  python -m sweep.report --run-dir runs/demo --extra AST=runs/ast_preds"))
    p.add_argument("--predictions", metavar="NPZ", help="predictions saved by a sweep (scores, targets, clip_ids)")
    p.add_argument("--target-prior", metavar="PRIOR", help="train | uniform | <split> | file.csv")
    p.add_argument("--train-split", default="train", help="the split `--target-prior train` means (default train)")
    p.add_argument("--checkpoint", metavar="PATH", help="a trial checkpoint dir or a published AST .pth")
    add_store(p, "the spectrogram store", required=False)
    add_list(p, "--split", metavar="NAME", help="split(s) to evaluate --checkpoint on (--split a b, or --split a --split b)")
    p.add_argument("--out", metavar="PATH", help="where to save the checkpoint's predictions: a directory "
                   "(<split>.npz per split and metrics.json; what sweep.report --extra reads) or, for one "
                   "split, a .npz file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return run(lambda a: _main(p, a), p, argv)


def _main(p, a) -> int:
    """The command's body: `p` is its parser (for usage errors), `a` the parsed arguments."""
    from data.store import open_store
    store = open_store(a.store) if a.store else None
    if a.checkpoint:
        if store is None or not a.split:
            p.error("--checkpoint needs --store and --split")
        if a.out and a.out.endswith(".npz") and len(a.split) > 1:
            p.error("--out FILE.npz holds one split; give a directory for several")
        for s in a.split:
            store.split_info(s)  # names a missing split before the model loads
        device = a.device or _default_device()
        model, kind = load_any_checkpoint(a.checkpoint, store, device)
        out = {"checkpoint": a.checkpoint, "kind": kind, "store": str(store.root), "eval": {}, "predictions": {}}
        for s in a.split:
            result = evaluate_split(model, store, s, a.batch_size, device)
            m = result["metrics"]
            out["eval"][s] = {"mAP": m["mAP"], "AUC": m["mAUC"], "dprime": m["dprime"],
                              "clips": len(result["clip_ids"]), "excluded": m["excluded"]}
            if a.out:
                path = Path(a.out) if a.out.endswith(".npz") else Path(a.out) / f"{s}.npz"
                save_predictions(path, result)
                out["predictions"][s] = str(path)
        if a.out and not a.out.endswith(".npz"):
            (Path(a.out) / "metrics.json").write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1) if a.json else format_eval(out))
        return 0
    if not a.predictions or not a.target_prior:
        p.error("give --checkpoint (with --store, --split) or --predictions with --target-prior")
    result = rescore(a.predictions, a.target_prior, store, a.train_split)
    print(json.dumps(result, indent=1) if a.json else format_rescore(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
