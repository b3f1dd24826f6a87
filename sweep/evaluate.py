"""Evaluation of trial checkpoints (sweep/checkpoint.py) and published AST weights on store
splits; the command also re-scores saved predictions under another class prior
(sweep/predictions.py).

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
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.cli import InputError
from data.store import Store
from model.ast import load_ast_checkpoint
from model.config import ModelConfig
from model.factory import build_model
from model.step import predict
from sweep.checkpoint import load_state, load_weights
from sweep.metrics import classification_metrics
from sweep.predictions import format_rescore, rescore, save_predictions

__all__ = ["load_model", "load_any_checkpoint", "score_split", "with_metrics", "evaluate_split", "format_eval", "main"]


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


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model a trial checkpoint holds (any model.arch), from its state.json's model
    config and its model.pt (no other weights file is read), in eval mode."""
    weights = load_weights(directory)
    model = build_model(ModelConfig(**{**load_state(directory)["model"], "weights": None}))
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
            raise InputError(f"{path}: the checkpoint's model takes {got}, the store {store.root} has {want}")
        return load_model(path, device), "trial"
    model = load_ast_checkpoint(path, frames=store.frames, mels=store.mels)
    if model.n_classes != store.n_classes:
        raise InputError(f"{path}: {model.n_classes} classes, the store {store.root} {store.n_classes}; "
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


def main(argv=None) -> int:
    from data.cli import add_list, add_store, parser, run
    p = parser("python -m sweep.evaluate", description=(
        "Evaluate a checkpoint on store splits, or re-score saved predictions under another class "
        "prior (AP changes with the prior, AUC and d' do not). Prints a summary; --json prints "
        "JSON."), epilog=(
        "examples:\n"
        "  python -m sweep.evaluate --predictions runs/demo/predictions/moore-beta=0/seed=0/eval_public.npz "
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
